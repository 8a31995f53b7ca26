"""`lazydit macs`: MACs per module and per generation, thop's convention ('linear') and with the
attention matmuls, and the ideal figure at a uniform lazy ratio."""
from __future__ import annotations

from dataclasses import dataclass

from ..io import check_output_file
from .. import flags
from ..flags import option


@dataclass(kw_only=True)
class Config:
    model: str = flags.model("DiT-XL/2", help="zoo name (default DiT-XL/2)")
    image_size: int = flags.image_size(256, help="image side in PIXELS: latent models see it /8 through the VAE "
                                                   "(DiT-FMNIST: 28)")
    steps: int = flags.steps()
    lazy_ratio: float | None = flags.lazy_ratio(None, help="also the ideal MACs at this uniform lazy ratio")
    gate_cost: bool = option(True, help="lazy figure without the gates (a forced pattern)")
    json: str | None = flags.out_file(None, help="also write the numbers to this JSON file", flag="--json")


def run(cfg: Config) -> None:
    check_output_file(cfg.json)
    from ..io import write_json
    from ..metrics.macs import MacsConfig, format_report, macs_report
    rep = macs_report(MacsConfig(model=cfg.model, image_size=cfg.image_size, steps=cfg.steps,
                                 lazy_ratio=cfg.lazy_ratio, gates=cfg.gate_cost))
    print(format_report(rep))
    if cfg.json:
        write_json(cfg.json, rep)
