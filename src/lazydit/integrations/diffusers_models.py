"""A diffusers DiT where lazydit expects its own models: a local diffusers folder as `--model PATH`,
and `train_gates` on a bare `DiTTransformer2DModel`.

Both go through `DiffusersDiT`, so lazydit's sampler, trainer and gate files serve them
unchanged. Nothing downloads: folders are read with `from_pretrained(path, local_files_only=True)`.
Such a transformer keeps diffusers' own timestep embedding; for weights converted from the
facebookresearch/DiT layout call `use_dit_timestep_embedding` (see docs/diffusers.md).
"""
from __future__ import annotations

import json
import os

from ..lazy.apply import apply_lazy, remove_lazy
from .diffusers import DiffusersDiT, _require


def load_diffusers_folder(path: str) -> DiffusersDiT:
    """A class-conditional DiT from a local diffusers folder: a transformer folder (config.json)
    or a whole pipeline (model_index.json, transformer in its `transformer` subfolder)."""
    index = os.path.join(path, "model_index.json")
    sub = None
    if os.path.isfile(index):
        try:
            with open(index) as f:
                entry = json.load(f).get("transformer")
        except (OSError, ValueError) as e:
            raise ValueError(f"{index} is not readable JSON ({e})") from None
        if not (isinstance(entry, list) and len(entry) == 2):
            raise ValueError(f"the pipeline in {path} has no transformer (model_index.json)")
        cls, sub = entry[1], "transformer"
    elif os.path.isfile(os.path.join(path, "config.json")):
        try:
            with open(os.path.join(path, "config.json")) as f:
                cls = json.load(f).get("_class_name")
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}/config.json is not readable JSON ({e})") from None
    else:
        raise ValueError(f"{path} is not a diffusers folder (no model_index.json or config.json)")
    if cls != "DiTTransformer2DModel":
        raise ValueError(f"{path} holds a {cls}; lazydit's sampler and trainer take class-conditional "
                         f"DiTTransformer2DModel only (for PixArt use apply_lazy_to_pipeline)")
    try:
        transformer = _require().DiTTransformer2DModel.from_pretrained(path, subfolder=sub, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load the transformer in {path} ({first})") from None
    return DiffusersDiT(transformer.eval())


def train_transformer_gates(transformer, cfg, dataset=None, resume: bool = False, progress: bool = True):
    """`train_gates` for a bare `DiTTransformer2DModel`: trains through a `DiffusersDiT` and leaves
    the gates attached to the transformer itself; gates it already has are the ones trained."""
    from ..train.gates import train_gates
    wrapper = DiffusersDiT(transformer)
    own = remove_lazy(transformer)
    if own is not None:
        apply_lazy(wrapper, own.config.num_steps, controller=own)
    try:
        return train_gates(wrapper, cfg, dataset, resume, progress)
    finally:
        ctrl = remove_lazy(wrapper)
        if ctrl is not None:
            apply_lazy(transformer, ctrl.config.num_steps, controller=ctrl)
