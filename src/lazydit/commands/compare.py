"""`lazydit compare`: the learned skip policy against every rival on one harness, small and quick."""
from __future__ import annotations

from dataclasses import dataclass

from . import harness
from .harness import HarnessOptions
from ..flags import group
from .options import ModelOptions


@dataclass(kw_only=True)
class Config:
    model: ModelOptions = group(ModelOptions)
    harness: HarnessOptions = group(HarnessOptions)  # its defaults are compare's


def run(cfg: Config) -> None:
    harness.check_outputs(cfg.harness, cfg.model.name)
    harness.run(cfg.model, cfg.harness)
