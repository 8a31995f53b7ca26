"""Model zoo: name -> factory, plus checkpoint loading with one-line errors."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from importlib import resources

import torch
import torch.nn as nn

from .dit import DIT_ZOO, DiT, DiTConfig, dit_config
from .large_dit import LARGE_DIT_ZOO, LargeDiT, LargeDiTConfig, large_dit_config

EMBEDDED = "DiT-FMNIST"  # the tiny Fashion-MNIST DiT shipped in lazydit/assets


def _asset(name: str) -> str:
    return str(resources.files("lazydit") / "assets" / name)


def embedded_config() -> DiTConfig:
    with open(_asset("fmnist_dit.json")) as f:
        return DiTConfig(**json.load(f)["model"])


def model_names() -> list[str]:
    return [EMBEDDED, *DIT_ZOO, *LARGE_DIT_ZOO]


def build_model(name: str, **overrides) -> nn.Module:
    """A randomly initialised model of the zoo (overrides: input_size, in_channels, ...)."""
    if name not in model_names():
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(model_names())}")
    if name == EMBEDDED:
        from dataclasses import replace
        cfg = replace(embedded_config(), **{k: v for k, v in overrides.items() if v is not None})
    elif name in LARGE_DIT_ZOO:
        cfg = large_dit_config(name, **overrides)
    else:
        cfg = dit_config(name, **overrides)
    model = LargeDiT(cfg) if isinstance(cfg, LargeDiTConfig) else DiT(cfg)
    model.arch_name = name
    return model


def read_state_dict(path: str) -> dict:
    """Tensors of a checkpoint: safetensors, or a third-party torch file read weights-only."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            return load_file(path)
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise many types for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot read checkpoint {path}: it is truncated or not a checkpoint ({first})") from None
    if isinstance(sd, dict) and "ema" in sd and isinstance(sd["ema"], dict):
        sd = sd["ema"]  # a DiT training checkpoint: sample with the EMA weights, as DiT does
    elif isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise ValueError(f"checkpoint {path} does not hold a state dict")
    return sd


def load_weights(model: nn.Module, path: str) -> nn.Module:
    """Strictly load `path` into `model`, naming the first missing/unexpected/mis-shaped key."""
    sd = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise ValueError(f"checkpoint {path} does not fit {getattr(model, 'arch_name', type(model).__name__)}: "
                         f"keys {', '.join(parts)}")
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise ValueError(f"checkpoint {path} does not fit: {k} has shape {tuple(sd[k].shape)}, "
                             f"model expects {tuple(v.shape)}")
    model.load_state_dict(sd, strict=True)
    return model


def load_model(name: str, checkpoint: str | None = None, random_init: bool = False, **overrides) -> nn.Module:
    """Build `name` and load weights; the embedded model loads its shipped weights by default.

    An override equal to the embedded model's own value is no override. A different one would
    not fit the shipped weights, so it needs a checkpoint or an explicit `random_init`."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if os.path.isdir(name):  # the zoo knows no integration: the folder reader sits a tier up
        raise ValueError(f"{name} is a folder, not a zoo model; load a diffusers folder with "
                         f"lazydit.loading.load_any_model")
    if name == EMBEDDED and checkpoint is None and not random_init:
        own = asdict(embedded_config())
        for key, value in overrides.items():
            if own.get(key) != value:
                raise ValueError(f"the shipped {EMBEDDED} weights are for {key}={own.get(key)}, not {value}: "
                                 f"give --ckpt PATH for other weights, or --random-init")
        checkpoint = _asset("fmnist_dit.safetensors")
    model = build_model(name, **overrides)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model.eval()


__all__ = ["DIT_ZOO", "DiT", "DiTConfig", "EMBEDDED", "LARGE_DIT_ZOO", "LargeDiT", "LargeDiTConfig", "build_model",
           "dit_config", "embedded_config", "large_dit_config", "load_model", "load_weights", "model_names",
           "read_state_dict"]
