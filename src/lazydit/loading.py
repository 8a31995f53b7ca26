"""What the commands load: a model by zoo name or local diffusers folder.

This is where core (`lazydit.models`) and the diffusers integration meet, so that the model zoo
itself never imports an integration."""
from __future__ import annotations

import os

import torch.nn as nn

from .models import load_model


def load_any_model(name: str, checkpoint: str | None = None, random_init: bool = False, **overrides) -> nn.Module:
    """`load_model(name, ...)`, or for a local diffusers folder its own transformer, config and weights."""
    if not os.path.isdir(name):
        return load_model(name, checkpoint, random_init=random_init, **overrides)
    if checkpoint is not None or random_init or any(v is not None for v in overrides.values()):
        raise ValueError(f"{name} is a diffusers folder with its own weights and config; "
                         f"--ckpt, --random-init, --image-size and --num-classes do not apply")
    from .integrations.diffusers_models import load_diffusers_folder
    return load_diffusers_folder(name).eval()
