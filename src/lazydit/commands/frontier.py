"""`lazydit frontier`: the compare harness measured for a verdict: 256 images per method,
500-iteration gates, the full recipe and 95% intervals; input-dependent gates too by default, and
the default policy fitted on 3 seeds (the spread of its gain)."""
from __future__ import annotations

from dataclasses import dataclass

from . import harness
from .harness import HarnessOptions
from ..flags import group
from .options import ModelOptions


@dataclass(kw_only=True)
class Config:
    model: ModelOptions = group(ModelOptions)
    harness: HarnessOptions = group(HarnessOptions, out="out/frontier", samples=256, iters=500, calib_images=16,
                                    calib_rounds=10, timing_images=16, train_calib=32,
                                    schedule_candidates=12, fit_seeds=3)


def run(cfg: Config) -> None:
    harness.check_outputs(cfg.harness, cfg.model.name)
    harness.run(cfg.model, cfg.harness, gates_too=True)
