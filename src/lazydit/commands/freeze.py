"""`lazydit freeze`: turn a gate file into a static skip-schedule file, so that sampling computes
no gate scores (`export.freeze`)."""
from __future__ import annotations

from dataclasses import dataclass

from ..io import check_output_file
from .. import flags
from ..flags import group, option
from .options import ModelOptions


@dataclass(kw_only=True)
class Config:
    gates: str = flags.gates(positional=True)
    out: str = flags.out_file(help="skip-schedule file to write (.safetensors)")
    model: ModelOptions = group(ModelOptions)
    calib_images: int = option(32, type="positive_int",
                               help="input-dependent gates: images whose decisions are pooled (majority per cell)")
    calib_seed: int = option(2_000_000, help="calibration image i uses this seed + i")
    cfg_scale: float | None = flags.cfg_scale(None, help="default: the scale the gates were trained with")
    eta: float = flags.eta(help="DDIM noise of the deployed sampler")
    guide_all_channels: bool = flags.guide_all_channels()


def run(cfg: Config) -> None:
    check_output_file(cfg.out)
    from ..export.freeze import FreezeConfig, freeze
    from ..loading import build_lazy_model
    f = FreezeConfig(gates=cfg.gates, out=cfg.out, calib_images=cfg.calib_images, calib_seed=cfg.calib_seed,
                     cfg_scale=cfg.cfg_scale, eta=cfg.eta, guide_all_channels=cfg.guide_all_channels)
    s = freeze(f, lambda: build_lazy_model(cfg.model.sample_config()))
    print(f"schedule written to {cfg.out}: {s['steps']} steps, lazy ratio {s['lazy_ratio']:.3f}, operator "
          f"{s['reuse']}{' + correction' if s['correction'] else ''}; from {s['method']}")
