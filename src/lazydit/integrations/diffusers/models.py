"""A diffusers DiT where lazydit expects its own models: a local diffusers folder as `--model PATH`
(through `DiffusersDiT`, so lazydit's sampler, trainer and gate files serve it unchanged), and a
diffusers scheduler as lazydit's `NoiseSchedule`. Training on them is `lazydit.train.diffusers_gates`.

Nothing downloads: folders are read with `from_pretrained(path, local_files_only=True)`.
Such a transformer keeps diffusers' own timestep embedding; for weights converted from the
facebookresearch/DiT layout call `use_dit_timestep_embedding` (see docs/diffusers.md).
"""
from __future__ import annotations

import json
import os

from .transformer import DiffusersDiT, _require, ddim_stride_trap


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


def noise_schedule_from_scheduler(scheduler, num_steps: int):
    """lazydit's `NoiseSchedule` on a diffusers scheduler's own timesteps and noise levels, so gate
    training rolls out where that scheduler samples. The update is DDIM's between consecutive listed
    timesteps: what DDIMScheduler ("leading") and Euler do exactly, and the first-order step of the
    multistep solvers (DPM-Solver++, UniPC), whose higher-order corrections are not replayed."""
    import copy

    import numpy as np

    from ...core.diffusion.noise_schedule import NoiseSchedule
    name = type(scheduler).__name__
    if getattr(scheduler.config, "prediction_type", "epsilon") != "epsilon" or getattr(scheduler, "alphas_cumprod", None) is None:
        raise ValueError(f"{name} is not an epsilon-prediction DDPM-family scheduler; lazydit's rollouts need one "
                         f"(flow-matching schedulers are not supported)")
    s = copy.deepcopy(scheduler)  # set_timesteps mutates the scheduler; the user's stays as it was
    s.set_timesteps(num_steps)
    ts = [float(t) for t in s.timesteps]
    if len(ts) != num_steps:
        raise ValueError(f"{name} makes {len(ts)} model calls for {num_steps} steps; lazydit's rollouts take "
                         f"one call per step")
    if any(not t.is_integer() for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"{name} lists fractional or non-decreasing timesteps ({ts[:3]}...); use an integer "
                         f"timestep_spacing ('leading' or 'trailing')")
    if ddim_stride_trap(s):
        raise ValueError(f"{name} with timestep_spacing={s.config.timestep_spacing!r} steps by its stride, not "
                         f"along its listed timesteps; use 'leading' (see docs/evaluation.md)")
    asc = [int(t) for t in reversed(ts)]  # NoiseSchedule indexes from the least noisy step
    ac = s.alphas_cumprod.double()[asc].numpy()
    betas = 1.0 - ac / np.append(1.0, ac[:-1])
    return NoiseSchedule(num_steps=num_steps, betas=betas, timestep_map=np.array(asc))


def load_folder_scheduler(path: str):
    """The scheduler of a local diffusers pipeline folder (its `scheduler` subfolder)."""
    try:
        with open(os.path.join(path, "model_index.json")) as f:
            entry = json.load(f).get("scheduler")
    except (OSError, ValueError):
        entry = None
    if not (isinstance(entry, list) and len(entry) == 2):
        raise ValueError(f"{path} is not a diffusers pipeline folder with a scheduler (model_index.json)")
    cls = getattr(_require(), entry[1], None)
    if cls is None:
        raise ValueError(f"{path} names scheduler {entry[1]}, which this diffusers version lacks")
    try:
        return cls.from_pretrained(path, subfolder="scheduler", local_files_only=True)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load the scheduler in {path} ({first})") from None
