"""`lazydit sample --model PIPELINE`: a diffusers pipeline of today's families (Flux-FMNIST, or a
local FLUX/SD3/Qwen-Image/Wan/HunyuanVideo folder) through its own `pipe(...)`, optionally lazy,
written as a PNG grid, an .npz and the options that made them."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .images import save_grid, to_uint8
from .io import atomic_path, write_json


@dataclass
class PipelineSampleConfig:
    model: str                                   # Flux-FMNIST or a local pipeline folder
    prompts: list = field(default_factory=list)  # image i uses prompts[i % len]; empty: the pipeline's defaults
    images: int | None = None                    # how many (default: one per prompt)
    steps: int = 28
    seed: int = 0                                # image i uses seed + i, its own generator
    gates: str | None = None                     # a gate file from `lazydit train-gates --model PIPELINE`
    force_skip: str | None = None                # or a static pattern: every:N or fraction:F
    reuse: str = "copy"                          # what a forced skip returns
    call_kwargs: dict = field(default_factory=dict)  # more pipe(...) arguments, over the pipeline's defaults
    out_dir: str = "out/sample"
    device: str = "cpu"


def run_pipeline_sample(cfg: PipelineSampleConfig) -> dict:
    from .core.lazy import LazyConfig, patterns
    from .integrations.diffusers import apply_lazy_to_pipeline
    from .integrations.diffusers.fit import check_call_kwargs, open_pipeline, pipeline_sampler
    if cfg.gates and cfg.force_skip:
        raise ValueError("give --gates or --force-skip, not both")
    if cfg.steps < 2 and (cfg.gates or cfg.force_skip):
        raise ValueError("lazy sampling needs at least 2 steps")
    pipe, defaults, prompts = open_pipeline(cfg.model)
    pipe = pipe.to(cfg.device)
    kwargs = check_call_kwargs(pipe, {**defaults, **cfg.call_kwargs})
    prompts = cfg.prompts or prompts
    n = cfg.images or len(prompts)
    ctrl = None
    if cfg.gates:
        ctrl = apply_lazy_to_pipeline(pipe, cfg.gates, num_inference_steps=cfg.steps)
    elif cfg.force_skip:
        ctrl = apply_lazy_to_pipeline(pipe, num_inference_steps=cfg.steps,
                                      config=LazyConfig(num_steps=cfg.steps, reuse=cfg.reuse))
        ctrl.force(patterns.from_name(cfg.force_skip, cfg.steps, ctrl.depth))
    import time
    t0 = time.perf_counter()
    images = pipeline_sampler(pipe, prompts, cfg.steps, kwargs)([cfg.seed + i for i in range(n)])
    seconds = time.perf_counter() - t0
    lazy = ctrl.stats().summary() if ctrl is not None else None
    os.makedirs(cfg.out_dir, exist_ok=True)
    frames = images if images.dim() == 4 else images[:, 0]  # video: the grid shows each first frame
    save_grid(frames, os.path.join(cfg.out_dir, "grid.png"), scale=max(1, 112 // frames.shape[-1]))
    flat = images.flatten(0, 1) if images.dim() == 5 else images
    with atomic_path(os.path.join(cfg.out_dir, "samples.npz")) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, arr_0=to_uint8(flat), prompts=np.array([prompts[i % len(prompts)] for i in range(n)]))
    write_json(os.path.join(cfg.out_dir, "sample_config.json"), {"sample": asdict(cfg), "call_kwargs": kwargs,
                                                                 "seconds": seconds, "lazy": lazy})
    return {"images": n, "seconds": seconds, "lazy": lazy}
