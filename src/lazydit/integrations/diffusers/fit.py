"""A diffusers pipeline as lazydit's default-policy fit sees it (the fit itself is
`lazydit.train.diffusers_gates.fit_pipeline`, behind
`lazydit train-gates --model PIPELINE_DIR --target-lazy R [--prompts FILE]`).

The placement search (`lazydit.train.placement_search`) scores each candidate by the PSNR of final images
against full compute. Here an image is `pipe(prompt, generator=seed, ...)` with the pipeline's own
scheduler (flow matching with its shift, or anything else that calls the transformer a fixed
number of times per step), decoded as the user would see it, so nothing about velocity
prediction or sigma spacing is re-implemented: the pipeline steps, lazydit only decides which
sites recompute. Prompts cycle over the seeds; each image has its own seeded generator, so
results do not depend on the chunk size.
"""
from __future__ import annotations

import inspect
import json
import os
from importlib import resources

import torch

from .transformer import _require

CHUNK = 8  # images per pipe(...) call


def default_prompts() -> list[str]:
    return read_prompts(str(resources.files("lazydit") / "assets" / "prompts.txt"))


def read_prompts(path: str) -> list[str]:
    """Non-empty lines of a text file, without `#` comments."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read prompts file {path} ({e})") from None
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"prompts file {path} holds no prompt")
    return prompts


def is_pipeline_folder(path: str) -> bool:
    """A local diffusers pipeline folder of a family that runs through its own `pipe(...)` (FLUX,
    SD3, Qwen-Image, Wan, HunyuanVideo). DiT folders go through lazydit's own sampler (see
    `models`), which also refuses PixArt's with a pointer to `apply_lazy_to_pipeline`."""
    from .families import SITES
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        return False
    try:
        with open(index) as f:
            entry = json.load(f).get("transformer")
    except (OSError, ValueError):
        return False
    return isinstance(entry, list) and len(entry) == 2 and entry[1] in SITES


def _flux_fmnist():
    from .flux_fmnist import flux_fmnist_pipeline
    from .flux_fmnist_text import DEFAULT_PROMPTS, UNCOND
    pipe = flux_fmnist_pipeline()
    pipe.set_progress_bar_config(disable=True)
    # its pipe(...) call: 28x28 pixels, the 12 text tokens it was trained on, true CFG against ""
    call = {"height": 28, "width": 28, "max_sequence_length": 12, "negative_prompt": UNCOND, "true_cfg_scale": 3.0}
    return pipe, call, list(DEFAULT_PROMPTS)


# Pipelines lazydit ships, by name: () -> (pipe, default call arguments, default prompts).
SHIPPED = {"Flux-FMNIST": _flux_fmnist}


def prompt_labels(name: str, prompts: list[str]) -> list[int] | None:
    """The Fashion-MNIST class each prompt names, where `name` is the shipped Flux-FMNIST and every
    prompt is one of its training prompts; None otherwise (no class to score against)."""
    if name != "Flux-FMNIST":
        return None
    from .flux_fmnist_text import CLASS_NAMES, TEMPLATES, prompt_for
    known = {prompt_for(y, k): y for y in range(len(CLASS_NAMES)) for k in range(len(TEMPLATES))}
    return [known[p] for p in prompts] if all(p in known for p in prompts) else None


def is_pipeline(name: str) -> bool:
    """A shipped pipeline's name or a local pipeline folder (see `is_pipeline_folder`)."""
    return name in SHIPPED or is_pipeline_folder(name)


def open_pipeline(name: str) -> tuple:
    """(pipe, default call arguments, default prompts) of a shipped pipeline or a local folder."""
    if name in SHIPPED:
        return SHIPPED[name]()
    return load_pipeline(name), {}, default_prompts()


def load_pipeline(path: str):
    """A pipeline from a local folder; nothing downloads."""
    try:
        pipe = _require().DiffusionPipeline.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load the pipeline in {path} ({first})") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_call_kwargs(pipe, kwargs: dict) -> dict:
    """Refuse call arguments the pipeline does not take, and those lazydit sets itself."""
    own = {"prompt", "generator", "num_inference_steps", "output_type", "return_dict"}
    params = inspect.signature(pipe.__call__).parameters
    for key in kwargs:
        if key in own:
            raise ValueError(f"pipeline argument {key!r} is set by lazydit (prompts, seeds, --steps)")
        if key not in params:
            raise ValueError(f"{type(pipe).__name__} takes no argument {key!r}")
    return dict(kwargs)


def pipeline_sampler(pipe, prompts: list[str], num_steps: int, call_kwargs: dict | None = None, chunk: int = CHUNK):
    """`sample(seeds)`: the pipeline's images for seeds[j] with prompt j % len(prompts), as one
    (B, ...) tensor in [-1, 1] (video frames stay a time axis), `chunk` images per pipe(...) call."""
    kwargs = dict(call_kwargs or {})

    def sample(seeds):
        out = []
        for i in range(0, len(seeds), chunk):
            part = seeds[i:i + chunk]
            gens = [torch.Generator().manual_seed(int(s)) for s in part]
            with torch.no_grad():
                res = pipe(prompt=[prompts[(i + j) % len(prompts)] for j in range(len(part))], generator=gens,
                           num_inference_steps=num_steps, output_type="pt", return_dict=False, **kwargs)[0]
            res = torch.as_tensor(res).float()
            if not bool(torch.isfinite(res).all()):
                raise ValueError("the pipeline produced NaN or infinite images; nothing written")
            out.append(res * 2 - 1)  # output_type "pt" is in [0, 1]
        return torch.cat(out)
    return sample


def scheduler_settings(scheduler) -> dict:
    """What of a scheduler's config decides its timesteps and update: recorded in gate files."""
    keys = ("num_train_timesteps", "shift", "use_dynamic_shifting", "base_shift", "max_shift", "base_image_seq_len",
            "max_image_seq_len", "time_shift_type", "invert_sigmas", "shift_terminal", "use_karras_sigmas",
            "use_exponential_sigmas", "use_beta_sigmas", "stochastic_sampling", "prediction_type", "timestep_spacing",
            "flow_shift")
    cfg = dict(scheduler.config)
    return {"class": type(scheduler).__name__, **{k: cfg[k] for k in keys if k in cfg}}
