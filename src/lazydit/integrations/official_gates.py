"""Import gate weights trained by the official LazyDiT code (shawnricecake/lazydit) into a lazydit gate file.

The official code gives every block one `Linear(D, 1, bias=False)` per sampling step, in a
ModuleList `attn_lazy_learning` / `mlp_lazy_learning`, and saves them as
`{"model": {"block_{l}_attn_lazy_learning_weight_{i}": (1, D), ...}, "opt": ..., "args": Namespace}`
(`models/utils.py: save_lazy_learning_weights`). Index i is the position of the step's timestep
in the respaced `timestep_map`, which runs from the least noisy step up (the forward looks it up
as `timestep_map[t[0].item()]`). Sampling runs from the noisiest step down, so official index i
is lazydit's sampling step N-1-i. Taking i as the step would apply the gates of the wrong noise
level.

Both conventions read s = sigmoid(sum over tokens of Z @ w) as the probability of computing, with
threshold 0.5 and a cached copy for skipped rows, so the import is the index flip and nothing else.
"""
from __future__ import annotations

import argparse
import os
import re

import torch

from ..core.lazy import LazyConfig, LazyController
from ..core.lazy.gatefile import save_gates

# The checkpoint's own keys, and a full model state dict's (`blocks`/`layers`, optionally under DDP's `module.`).
_SAVED = re.compile(r"^block_(\d+)_(attn|mlp)_lazy_learning_weight(?:_(\d+))?$")
_MODEL = re.compile(r"^(?:module\.)?(?:blocks|layers)\.(\d+)\.(attn|mlp)_lazy_learning(?:\.(\d+))?\.weight$")
KINDS = {"attn": "attn", "mlp": "ffn"}


def read_official(path: str) -> dict:
    """The tensors of an official lazy-learning checkpoint (torch file read weights-only, or safetensors)."""
    if not os.path.isfile(path):
        raise ValueError(f"official gate file {path} does not exist")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            sd = load_file(path)
        else:
            # The official checkpoint stores its argparse options next to the weights; allow that one
            # plain-attribute class, nothing else is unpickled.
            with torch.serialization.safe_globals([argparse.Namespace]):
                sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise many types for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot read official gate file {path} ({first})") from None
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict):
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise ValueError(f"official gate file {path} does not hold a state dict")
    return sd


def official_weights(sd: dict, num_steps: int | None = None) -> dict[str, torch.Tensor]:
    """{"attn", "ffn"}: (L, N, D) gate weights in the official index order (i = 0 least noisy).
    A checkpoint with one gate per block for all steps needs `num_steps`."""
    found = {}  # (layer, kind, index or None) -> (D,)
    for key, value in sd.items():
        m = _SAVED.match(key) or _MODEL.match(key)
        if m is None or not torch.is_tensor(value):
            continue
        layer, kind, idx = int(m.group(1)), KINDS[m.group(2)], m.group(3)
        if value.dim() not in (1, 2) or (value.dim() == 2 and value.shape[0] != 1):
            raise ValueError(f"{key} has shape {tuple(value.shape)}, expected (1, D): a Linear(D, 1) gate")
        found[layer, kind, None if idx is None else int(idx)] = value.reshape(-1).float()
    if not found:
        raise ValueError("no official LazyDiT gates found (keys like block_0_attn_lazy_learning_weight_0)")
    per_step = {i is not None for _, _, i in found}
    if len(per_step) > 1:
        raise ValueError("the file mixes per-step gates and one gate per block")
    depth = 1 + max(layer for layer, _, _ in found)
    if per_step == {True}:
        n = 1 + max(i for _, _, i in found)
        if num_steps is not None and num_steps != n:
            raise ValueError(f"the file holds {n}-step gates, not {num_steps}")
        steps = range(n)
    else:
        if num_steps is None:
            raise ValueError("the file holds one gate per block for all steps; give the step count (--steps)")
        n, steps = num_steps, [None]
    dims = {v.numel() for v in found.values()}
    if len(dims) > 1:
        raise ValueError(f"gates of different widths {sorted(dims)}")
    out = {}
    for kind in ("attn", "ffn"):
        rows = []
        for layer in range(depth):
            for i in steps:
                if (layer, kind, i) not in found:
                    name = "attn" if kind == "attn" else "mlp"
                    raise ValueError(f"missing gate block_{layer}_{name}_lazy_learning_weight"
                                     f"{'' if i is None else f'_{i}'}")
            rows.append(torch.stack([found[layer, kind, i] for i in steps]).expand(n, -1))
        out[kind] = torch.stack(rows)  # (L, N, D)
        if not bool(torch.isfinite(out[kind]).all()):
            raise ValueError(f"the official {kind} gates hold NaN or infinite weights")
    return out


def official_controller(sd: dict, arch: str, num_steps: int | None = None, threshold_attn: float = 0.5,
                        threshold_ffn: float = 0.5) -> LazyController:
    """A controller holding the official gates in lazydit's step order (official i -> step N-1-i)."""
    from ..core.diffusion.noise_schedule import NoiseSchedule
    w = official_weights(sd, num_steps)
    depth, n, dim = w["attn"].shape
    cfg = LazyConfig(num_steps=n, threshold_attn=threshold_attn, threshold_ffn=threshold_ffn, reuse="copy")
    # The official sampler is facebookresearch/DiT's respaced DDIM, as is lazydit's.
    timesteps = [int(t) for t in NoiseSchedule.respaced(n).timestep_map[::-1]]
    ctrl = LazyController(cfg, depth, dim, meta={"arch": arch, "timesteps": timesteps,
                                                  "source": "official LazyDiT checkpoint, step index flipped"})
    with torch.no_grad():
        ctrl.attn.copy_(w["attn"].flip(1))
        ctrl.ffn.copy_(w["ffn"].flip(1))
    return ctrl


def model_dims(arch: str) -> tuple[int, int]:
    """(depth, hidden size) of a zoo architecture, without building its weights."""
    from ..core.models import EMBEDDED, embedded_config, model_names
    from ..core.models.dit import DIT_ZOO
    from ..core.models.large_dit import LARGE_DIT_ZOO
    if arch not in model_names():
        raise ValueError(f"unknown model {arch!r}; choose from {', '.join(model_names())}")
    cfg = embedded_config() if arch == EMBEDDED else DIT_ZOO.get(arch) or LARGE_DIT_ZOO[arch]
    return cfg.depth, cfg.hidden_size


def import_official_gates(src: str, out: str, arch: str, num_steps: int | None = None,
                          threshold_attn: float = 0.5, threshold_ffn: float = 0.5) -> dict:
    """Convert an official checkpoint into the gate file `out` for zoo model `arch`; returns a summary."""
    depth, hidden = model_dims(arch)
    ctrl = official_controller(read_official(src), arch, num_steps, threshold_attn, threshold_ffn)
    if (ctrl.depth, ctrl.dim) != (depth, hidden):
        raise ValueError(f"the official gates are for depth {ctrl.depth} and width {ctrl.dim}, "
                         f"but {arch} has depth {depth} and width {hidden}")
    save_gates(ctrl, out)
    return {"steps": ctrl.config.num_steps, "depth": depth, "hidden_size": hidden, "arch": arch}
