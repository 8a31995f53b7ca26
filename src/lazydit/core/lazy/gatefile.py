"""Gate files: safetensors holding the gate weights plus JSON metadata describing the model,
the step count, the thresholds and the training config they belong to. Optional tensors: a
static skip schedule ("schedule", (N, L, 2) uint8, 1 = skip) that replaces the gates' decisions,
the fitted forecast weights of a "fit" reuse operator ("reuse_weights", (N, L, 2, P)), and its
input correction ("correction_u" (G, L, 2, D, r), "correction_v" (G, L, 2, r, D), G step groups); see
`lazydit.core.lazy.correction`.

Families with other sites than a DiT's attention and feed-forward (FLUX, SD3, Wan, ...) hold one
gate tensor per site kind, named after it, and record "kinds" and "present" in the metadata; a
DiT's file has neither, exactly as before sites were generalised, and reads as ("attn", "ffn")."""
from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import KINDS, LazyConfig
from .controller import LazyController
from .correction import InputCorrection
from ...io import atomic_path

FORMAT = "lazydit-gates-v1"
TENSORS = {"attn", "ffn", "schedule", "reuse_weights", "correction_u", "correction_v"}
STATIC = TENSORS - set(KINDS)


def site_meta(controller: LazyController) -> dict:
    """The metadata naming a controller's sites: empty for a DiT's ("attn", "ffn") in every block."""
    if controller.kinds == KINDS and bool(controller.present.all()) and not controller.dims:
        return {}
    return {"kinds": list(controller.kinds), "present": controller.present.int().tolist(),
            **({"dims": dict(controller.dims)} if controller.dims else {})}


def save_gates(controller: LazyController, path: str, extra: dict | None = None) -> None:
    meta = {"format": FORMAT, "depth": controller.depth, "hidden_size": controller.dim,
            "lazy_config": controller.config.to_dict(), **site_meta(controller), **controller.meta, **(extra or {})}
    tensors = {kind: getattr(controller, kind).detach().cpu().contiguous() for kind in controller.kinds}
    if controller.forced is not None:
        if controller.forced.dim() != 3:
            raise ValueError("only a schedule shared by all rows, shape (N, L, M), can be saved")
        tensors["schedule"] = controller.forced.to(torch.uint8).cpu().contiguous()
    if controller.fitted is not None:
        tensors["reuse_weights"] = controller.fitted.float().cpu().contiguous()
    if controller.correction is not None:
        tensors["correction_u"] = controller.correction.u.float().cpu().contiguous()
        tensors["correction_v"] = controller.correction.v.float().cpu().contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"lazydit": json.dumps(meta)})


def read_gates(path: str) -> tuple[dict, dict]:
    """(tensors, metadata) of a gate file, with one-line errors for unreadable files."""
    tensors, meta = read_tagged(path, "gate file", required=set(), allowed=None)
    kinds, _ = file_sites(meta, path, "gate file")
    if not set(kinds) <= set(tensors) <= set(kinds) | STATIC:
        raise ValueError(f"{path} is not a lazydit gate file")
    return tensors, meta


def file_sites(meta: dict, path: str, what: str) -> tuple[tuple, torch.Tensor | None]:
    """(kinds, present (L, M) or None) recorded in a file's metadata; a DiT's file records none."""
    kinds, present = meta.get("kinds", list(KINDS)), meta.get("present")
    if not (isinstance(kinds, list) and kinds and all(isinstance(k, str) and k for k in kinds)
            and len(set(kinds)) == len(kinds)) or kinds and set(kinds) & STATIC:
        raise ValueError(f"{what} {path} has malformed metadata: kinds={kinds!r}")
    if present is not None:
        try:
            present = torch.tensor(present, dtype=torch.bool)
        except (TypeError, ValueError):
            raise ValueError(f"{what} {path} has malformed metadata: present") from None
        if present.dim() != 2 or present.shape[1] != len(kinds):
            raise ValueError(f"{what} {path} has malformed metadata: present of shape {tuple(present.shape)}")
    return tuple(kinds), present


def read_tagged(path: str, what: str, required: set, allowed: set) -> tuple[dict, dict]:
    """(tensors, metadata) of a lazydit safetensors file (`what`: "gate file", "skip-schedule file")
    holding the `required` tensors, no others than `allowed`, and a valid lazy_config."""
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path} does not exist")
    try:
        tensors = load_file(path)
        from safetensors import safe_open
        with safe_open(path, "pt") as f:
            raw = (f.metadata() or {}).get("lazydit")
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"{what} {path} is truncated or not a safetensors file ({e})") from None
    if raw is None or not required <= set(tensors) or (allowed is not None and not set(tensors) <= allowed):
        raise ValueError(f"{path} is not a lazydit {what}")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} has malformed metadata (bad JSON: {e})") from None
    cfg = meta.get("lazy_config") if isinstance(meta, dict) else None
    if not isinstance(cfg, dict):
        raise ValueError(f"{what} {path} has malformed metadata: no lazy_config")
    unknown = sorted(set(cfg) - set(LazyConfig.__dataclass_fields__))
    if unknown or "num_steps" not in cfg:
        raise ValueError(f"{what} {path} has malformed metadata: lazy_config "
                         f"{'has unknown keys ' + ', '.join(unknown) if unknown else 'lacks num_steps'}")
    return tensors, meta


# Labels a diffusers DiT got before arch names were canonical (`dit_arch_name`): they name no
# size, so they match any DiT; depth and width are still checked.
_DIFFUSERS_DIT = {"DiTTransformer2DModel", "diffusers-DiTTransformer2DModel"}


def arch_matches(saved, model) -> bool:
    def is_dit(name):
        return isinstance(name, str) and (name in _DIFFUSERS_DIT or name == "DiT" or name.startswith("DiT-"))
    return saved == model or ((saved in _DIFFUSERS_DIT or model in _DIFFUSERS_DIT) and is_dit(saved) and is_dit(model))


def load_gates(path: str, *, arch: str, depth: int, hidden_size: int, num_steps: int,
               overrides: dict | None = None, kinds: tuple = KINDS, present: torch.Tensor | None = None,
               dims: dict | None = None) -> LazyController:
    """Build a controller from a gate file after checking it fits the model (`kinds`, `present`:
    its sites, see `lazydit.core.lazy.apply.site_layout`) and sampler."""
    tensors, meta = read_gates(path)
    want = {"arch": arch, "depth": depth, "hidden_size": hidden_size}
    for key, value in want.items():
        if key == "arch" and arch_matches(meta.get(key), value):
            continue
        if meta.get(key) != value:
            raise ValueError(f"gate file {path} is for {key}={meta.get(key)}, but the model has {key}={value}")
    saved_kinds, saved_present = file_sites(meta, path, "gate file")
    if saved_kinds != tuple(kinds):
        raise ValueError(f"gate file {path} is for sites {list(saved_kinds)}, but the model has {list(kinds)}")
    cfg_dict = dict(meta["lazy_config"])
    if cfg_dict["num_steps"] != num_steps:
        raise ValueError(f"gate file {path} holds {cfg_dict['num_steps']}-step gates, but the sampler runs {num_steps} steps")
    cfg_dict.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if present is not None and saved_present is not None and not torch.equal(saved_present, present.bool()):
        raise ValueError(f"gate file {path} is for sites in other blocks than the model's")
    dims = {k: v for k, v in (dims or {}).items() if v != hidden_size}
    for kind in kinds:
        shape = (depth, num_steps, dims.get(kind, hidden_size))
        if tuple(tensors[kind].shape) != shape:
            raise ValueError(f"gate file {path} has {kind} tensors of shape {tuple(tensors[kind].shape)}, expected {shape}")
    try:
        config = LazyConfig(**cfg_dict)
    except (TypeError, ValueError) as e:
        raise ValueError(f"gate file {path}: {e}") from None
    own = ("format", "depth", "hidden_size", "lazy_config", "kinds", "present", "dims")
    ctrl = LazyController(config, depth, hidden_size, meta={k: v for k, v in meta.items() if k not in own},
                          kinds=tuple(kinds), present=present if present is not None else saved_present, dims=dims)
    with torch.no_grad():
        for kind in kinds:
            getattr(ctrl, kind).copy_(tensors[kind])
    attach_static(ctrl, tensors, f"gate file {path}")
    for name in kinds:
        if not bool(torch.isfinite(tensors[name]).all()):
            raise ValueError(f"gate file {path} has NaN or infinite {name} gate weights")
    return ctrl


def attach_static(ctrl: LazyController, tensors: dict, label: str) -> None:
    """Validate and install the optional static parts a gate or skip-schedule file may hold: the skip
    schedule, the fitted forecast weights and the input correction. `label` names the file in errors."""
    if "schedule" in tensors:
        mask = tensors["schedule"]
        shape = (ctrl.config.num_steps, ctrl.depth, ctrl.num_kinds)
        if tuple(mask.shape) != shape or bool(mask[0].any()) or mask.max() > 1:
            raise ValueError(f"{label} has a malformed schedule (shape {tuple(mask.shape)}; "
                             f"step 0 must compute and entries be 0 or 1)")
        ctrl.force(mask.bool())
    if ("correction_u" in tensors or "correction_v" in tensors) and (
            "reuse_weights" not in tensors or not {"correction_u", "correction_v"} <= set(tensors)):
        raise ValueError(f"{label} has an input correction without its fitted forecast")
    try:
        if "reuse_weights" in tensors:
            ctrl.set_fitted(tensors["reuse_weights"])
        if "correction_u" in tensors:
            ctrl.set_correction(InputCorrection(tensors["correction_u"], tensors["correction_v"], ctrl.config.num_steps))
    except ValueError as e:
        raise ValueError(f"{label}: {e}") from None
