"""Gate files: safetensors holding the gate weights plus JSON metadata describing the model,
the step count, the thresholds and the training config they belong to."""
from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .controller import LazyConfig, LazyController
from ..io import atomic_path

FORMAT = "lazydit-gates-v1"


def save_gates(controller: LazyController, path: str, extra: dict | None = None) -> None:
    meta = {"format": FORMAT, "depth": controller.depth, "hidden_size": controller.dim,
            "lazy_config": controller.config.to_dict(), **controller.meta, **(extra or {})}
    tensors = {"attn": controller.attn.detach().cpu().contiguous(), "ffn": controller.ffn.detach().cpu().contiguous()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"lazydit": json.dumps(meta)})


def read_gates(path: str) -> tuple[dict, dict]:
    """(tensors, metadata) of a gate file, with one-line errors for unreadable files."""
    if not os.path.isfile(path):
        raise ValueError(f"gate file {path} does not exist")
    try:
        tensors = load_file(path)
        from safetensors import safe_open
        with safe_open(path, "pt") as f:
            raw = (f.metadata() or {}).get("lazydit")
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"gate file {path} is truncated or not a safetensors file ({e})") from None
    if raw is None or set(tensors) != {"attn", "ffn"}:
        raise ValueError(f"{path} is not a lazydit gate file")
    return tensors, json.loads(raw)


def load_gates(path: str, *, arch: str, depth: int, hidden_size: int, num_steps: int,
               overrides: dict | None = None) -> LazyController:
    """Build a controller from a gate file after checking it fits the model and sampler."""
    tensors, meta = read_gates(path)
    want = {"arch": arch, "depth": depth, "hidden_size": hidden_size}
    for key, value in want.items():
        if meta.get(key) != value:
            raise ValueError(f"gate file {path} is for {key}={meta.get(key)}, but the model has {key}={value}")
    cfg_dict = dict(meta["lazy_config"])
    if cfg_dict["num_steps"] != num_steps:
        raise ValueError(f"gate file {path} holds {cfg_dict['num_steps']}-step gates, but the sampler runs {num_steps} steps")
    cfg_dict.update({k: v for k, v in (overrides or {}).items() if v is not None})
    shape = (depth, num_steps, hidden_size)
    if tuple(tensors["attn"].shape) != shape or tuple(tensors["ffn"].shape) != shape:
        raise ValueError(f"gate file {path} has tensors of shape {tuple(tensors['attn'].shape)}, expected {shape}")
    ctrl = LazyController(LazyConfig(**cfg_dict), depth, hidden_size,
                          meta={k: v for k, v in meta.items() if k not in ("format", "depth", "hidden_size", "lazy_config")})
    with torch.no_grad():
        ctrl.attn.copy_(tensors["attn"])
        ctrl.ffn.copy_(tensors["ffn"])
    return ctrl
