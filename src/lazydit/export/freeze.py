"""`lazydit freeze`: turn a gate file into a skip-schedule file (`lazydit.core.lazy.skip_schedule_file`).

A placement-search gate file already holds a static schedule: freezing just re-packages it. For
input-dependent gates, every calibration image is sampled with the gates and each (step, layer,
module) cell skips where at least half of the rows skipped it, the L2C majority rule
(`lazydit.rivals.baselines.static_from_decisions`). A skip cap of the gates is then enforced on
the mask, since a majority vote can join runs that no single row took.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch

from ..core.lazy.apply import apply_lazy, arch_name, remove_lazy
from ..core.lazy.gatefile import load_gates, read_gates
from ..core.lazy.skip_schedule_file import SamplerSettings, save_skip_schedule
from ..pipeline import generate
from ..rivals.baselines import static_from_decisions


@dataclass
class FreezeConfig:
    gates: str                          # gate file from `lazydit train-gates`
    out: str                            # skip-schedule file to write
    calib_images: int = 32              # input-dependent gates: images whose decisions are pooled
    calib_seed: int = 2_000_000         # calibration image i uses calib_seed + i (away from eval seeds)
    batch_size: int = 8                 # images per calibration generation
    cfg_scale: float | None = None      # None: the scale the gates were trained with (else 1.5)
    eta: float = 0.0                    # DDIM noise the schedule is deployed with
    guide_all_channels: bool = False    # CFG on every eps channel instead of DiT's first 3


def cap_runs(mask: torch.Tensor, cap: int | None) -> torch.Tensor:
    """(N, L, 2) skip mask with at most `cap` consecutive skips per module: a cell past the cap
    computes instead, as the controller's `max_skip_run` would have made it."""
    if cap is None:
        return mask
    out, run = mask.clone(), torch.zeros(mask.shape[1:], dtype=torch.long)
    for k in range(mask.shape[0]):
        out[k] &= run < cap
        run = torch.where(out[k], run + 1, torch.zeros_like(run))
    return out


def freeze(cfg: FreezeConfig, model_fn=None) -> dict:
    """Write cfg.out and return a summary. `model_fn()` builds the model; it is only called for
    input-dependent gates, which must be rolled out to be frozen."""
    _, meta = read_gates(cfg.gates)
    lazy_cfg, depth, width = meta["lazy_config"], meta["depth"], meta["hidden_size"]
    steps = lazy_cfg["num_steps"]
    train_cfg = meta.get("train_config") or {}
    settings = SamplerSettings(cfg_scale=cfg.cfg_scale if cfg.cfg_scale is not None else train_cfg.get("cfg_scale", 1.5),
                               eta=cfg.eta, guide_channels=None if cfg.guide_all_channels else 3)
    ctrl = load_gates(cfg.gates, arch=meta.get("arch"), depth=depth, hidden_size=width, num_steps=steps)
    if ctrl.forced is not None:
        how = {"method": "the gate file's stored schedule"}
    else:
        if cfg.calib_images < 1 or cfg.batch_size < 1:
            raise ValueError("--calib-images and --batch-size must be >= 1")
        if model_fn is None:
            raise ValueError(f"gate file {cfg.gates} holds input-dependent gates: freezing them needs the model")
        ctrl.force(majority_mask(model_fn(), ctrl, cfg, settings))
        how = {"method": "majority of the gates' decisions", "calib_images": cfg.calib_images,
               "calib_seed": cfg.calib_seed}
    ctrl.force(cap_runs(ctrl.forced, ctrl.config.max_skip_run))
    ratio = float(ctrl.forced.float().mean())
    save_skip_schedule(ctrl, cfg.out, arch=meta.get("arch"), sampler=settings,
                       extra={"freeze": {**how, "gates": os.path.basename(cfg.gates), "lazy_ratio": ratio}})
    return {**how, "lazy_ratio": ratio, "steps": steps, "reuse": ctrl.config.reuse,
            "correction": ctrl.correction is not None, "sampler": asdict(settings)}


def majority_mask(model, ctrl, cfg: FreezeConfig, settings: SamplerSettings) -> torch.Tensor:
    """Sample the calibration images with the gates; (N, L, 2) cells most rows skipped."""
    if arch_name(model) != ctrl.meta.get("arch") or model.config.depth != ctrl.depth:
        raise ValueError(f"gate file {cfg.gates} is for {ctrl.meta.get('arch')}, but the model is {arch_name(model)}")
    apply_lazy(model, ctrl.config.num_steps, controller=ctrl)
    skips = []
    try:
        for start in range(0, cfg.calib_images, cfg.batch_size):
            n = min(cfg.batch_size, cfg.calib_images - start)
            labels = [(start + i) % model.config.num_classes for i in range(n)]
            seeds = [cfg.calib_seed + start + i for i in range(n)]
            gen = generate(model, labels, seeds, steps=ctrl.config.num_steps, cfg_scale=settings.cfg_scale,
                           eta=settings.eta, guide_channels=settings.guide_channels)
            skips.append(gen.stats.skips)
    finally:
        remove_lazy(model)
    return static_from_decisions(torch.cat(skips, dim=-1))
