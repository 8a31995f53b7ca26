"""Resumable training checkpoints in safetensors (never pickle): tensors under prefixes, the
optimizer's non-tensor state and the run config as JSON metadata, written atomically."""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from ..io import atomic_path


def save_checkpoint(path: str, tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    meta: dict) -> None:
    out = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            out[f"opt.{pid}.{k}"] = t.detach().cpu().contiguous()
    out["rng.torch"] = torch.get_rng_state()
    meta = {**meta, "param_groups": opt["param_groups"]}
    with atomic_path(path) as tmp:
        save_file(out, tmp, metadata={"lazydit": json.dumps(meta)})


def read_checkpoint_meta(path: str) -> dict:
    """The metadata of a training checkpoint, without touching any state."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        with safe_open(path, "pt") as f:
            meta = json.loads((f.metadata() or {})["lazydit"])
    except Exception as e:
        raise ValueError(f"checkpoint {path} is truncated or not a lazydit checkpoint ({type(e).__name__})") from None
    if not isinstance(meta, dict) or "param_groups" not in meta or "config" not in meta:
        raise ValueError(f"{path} is not a training checkpoint (a gate file or another kind of file?)")
    return meta


def first_difference(saved: dict, now: dict, ignore: tuple = ()) -> str | None:
    """The first config field whose value differs, as 'field: saved -> now', or None.
    Values are compared as JSON, the form in which the saved config was stored."""
    now = json.loads(json.dumps(now))
    for key in sorted(set(saved) | set(now)):
        if key not in ignore and saved.get(key) != now.get(key):
            return f"{key}: {saved.get(key)!r} -> {now.get(key)!r}"
    return None


def load_checkpoint(path: str, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict]:
    """Restore the optimizer and torch RNG; return (tensors without opt/rng, metadata)."""
    meta = read_checkpoint_meta(path)
    try:
        tensors = load_file(path)
    except Exception as e:
        raise ValueError(f"checkpoint {path} is truncated or not a lazydit checkpoint ({type(e).__name__})") from None
    if optimizer is not None:
        state: dict = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    rest = {k: v for k, v in tensors.items() if not k.startswith(("opt.", "rng."))}
    return rest, meta
