"""Skip-schedule files: a frozen, input-independent lazy policy, ready to deploy.

A skip-schedule file is safetensors plus JSON metadata, like a gate file, but without gate weights:
nothing is scored at sampling time. Tensors: "schedule" (N, L, 2) uint8, 1 = skip; optionally
"reuse_weights" (N, L, 2, P) of a fitted forecast and its input correction "correction_u" /
"correction_v" (see `lazydit.core.lazy.correction`). Metadata: the model it belongs to (arch, depth,
width), the LazyConfig (step count, reuse operator) and the sampler settings it was frozen for.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch
from safetensors.torch import save_file

from .config import LazyConfig
from .controller import LazyController
from .gatefile import attach_static, read_tagged
from ...io import atomic_path

FORMAT = "lazydit-schedule-v1"
TENSORS = {"schedule", "reuse_weights", "correction_u", "correction_v"}


@dataclass
class SamplerSettings:
    """How the schedule's images are sampled; the deploy bundle samples with exactly these."""

    sampler: str = "ddim"             # only DDIM is deployable (ancestral DDPM is not exported)
    eta: float = 0.0                  # DDIM noise; 0 is deterministic
    cfg_scale: float = 1.5            # classifier-free guidance scale (1: no guidance, no doubled batch)
    guide_channels: int | None = 3    # CFG on the first 3 eps channels as DiT; None: every channel

    def __post_init__(self):
        if self.sampler not in ("ddim", "ddpm"):
            raise ValueError(f"unknown sampler {self.sampler!r}; choose ddim or ddpm")
        if not (isinstance(self.eta, (int, float)) and 0.0 <= self.eta <= 1.0):
            raise ValueError(f"eta must be in [0, 1], got {self.eta!r}")
        if not (isinstance(self.cfg_scale, (int, float)) and math.isfinite(self.cfg_scale) and self.cfg_scale >= 1):
            raise ValueError(f"cfg scale must be a finite number >= 1, got {self.cfg_scale!r}")
        gc = self.guide_channels
        if gc is not None and (isinstance(gc, bool) or not isinstance(gc, int) or gc < 1):
            raise ValueError(f"guide_channels must be an integer >= 1 or None, got {gc!r}")


def save_skip_schedule(ctrl: LazyController, path: str, *, arch: str, sampler: SamplerSettings,
                       extra: dict | None = None) -> None:
    """Write the controller's forced schedule, operator and correction as a skip-schedule file."""
    if ctrl.forced is None or ctrl.forced.dim() != 3:
        raise ValueError("only a schedule shared by all rows, shape (N, L, 2), can be frozen")
    cfg = LazyConfig(num_steps=ctrl.config.num_steps, reuse=ctrl.config.reuse)  # no cap: the mask is final
    meta = {"format": FORMAT, "arch": arch, "depth": ctrl.depth, "hidden_size": ctrl.dim,
            "lazy_config": cfg.to_dict(), "sampler": asdict(sampler), **(extra or {})}
    tensors = {"schedule": ctrl.forced.to(torch.uint8).cpu().contiguous()}
    if ctrl.fitted is not None:
        tensors["reuse_weights"] = ctrl.fitted.float().cpu().contiguous()
    if ctrl.correction is not None:
        tensors["correction_u"] = ctrl.correction.u.float().cpu().contiguous()
        tensors["correction_v"] = ctrl.correction.v.float().cpu().contiguous()
    for name, t in tensors.items():  # NaN reuse weights mean "Lagrange" and are allowed
        if bool(torch.isinf(t.float()).any()) or (name != "reuse_weights" and bool(torch.isnan(t.float()).any())):
            raise ValueError(f"refusing to write {path}: {name} holds non-finite values")
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"lazydit": json.dumps(meta)})


def read_skip_schedule(path: str) -> tuple[LazyController, dict]:
    """(controller with the schedule forced, metadata) of a skip-schedule file, validated, with
    one-line errors naming the file."""
    tensors, meta = read_tagged(path, "skip-schedule file", required={"schedule"}, allowed=TENSORS)
    label = f"skip-schedule file {path}"
    if meta.get("format") != FORMAT:
        raise ValueError(f"{label} has format {meta.get('format')!r}, expected {FORMAT!r}")
    for key in ("depth", "hidden_size"):
        if not (isinstance(meta.get(key), int) and meta[key] >= 1):
            raise ValueError(f"{label} has malformed metadata: {key}={meta.get(key)!r}")
    if not isinstance(meta.get("arch"), str):
        raise ValueError(f"{label} has malformed metadata: no arch")
    try:
        config = LazyConfig(**meta["lazy_config"])
        sampler = SamplerSettings(**meta.get("sampler", {}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{label}: {e}") from None
    if config.max_skip_run is not None:
        raise ValueError(f"{label} has a skip cap; a frozen schedule must carry its final mask")
    meta["sampler"] = sampler
    ctrl = LazyController(config, meta["depth"], meta["hidden_size"], meta={"arch": meta["arch"]})
    attach_static(ctrl, tensors, label)
    return ctrl, meta


def load_skip_schedule(path: str, *, arch: str, depth: int, hidden_size: int, num_steps: int) -> LazyController:
    """A controller that replays the skip-schedule file on a model of this arch and a sampler of this
    many steps: forced path only, so no gate score is ever computed."""
    ctrl, meta = read_skip_schedule(path)
    for key, value in {"arch": arch, "depth": depth, "hidden_size": hidden_size}.items():
        if meta[key] != value:
            raise ValueError(f"skip-schedule file {path} is for {key}={meta[key]}, but the model has {key}={value}")
    if ctrl.config.num_steps != num_steps:
        raise ValueError(f"skip-schedule file {path} holds a {ctrl.config.num_steps}-step schedule, but the sampler "
                         f"runs {num_steps} steps")
    return ctrl
