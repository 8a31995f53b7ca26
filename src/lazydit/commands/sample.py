"""`lazydit sample`: load a model (and gates), generate a batch, write a PNG grid, an .npz and the
options that made them. With --model PIPELINE (Flux-FMNIST, or a local FLUX/SD3/Qwen-Image/Wan/
HunyuanVideo folder), the pipeline's own `pipe(...)` generates, optionally lazy."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

from ..io import check_output, write_json
from .. import flags
from ..flags import group, option
from .options import ModelOptions, SamplingOptions

@dataclass(kw_only=True)
class Config:
    model: ModelOptions = group(ModelOptions)
    sampling: SamplingOptions = group(SamplingOptions, cfg_scale=3.0)
    labels: list = flags.labels(list(range(10)))
    seed: int = flags.seed(help="image i uses seed+i")
    noise: str | None = option(None, help=".npy of initial noise, shape (B, C, H, W)")
    skip_schedule: str | None = flags.skip_schedule(
        "skip-schedule file from `lazydit freeze` (no gate scores computed)")
    out: str = flags.out_dir("out/sample")
    prompts: str | None = flags.prompts("with --model PIPELINE: prompts file, one per line (default: the "
                                          "pipeline's own; Flux-FMNIST: one per class)")
    images: int | None = option(None, type="positive_int",
                                help="with --model PIPELINE: images (default: one per prompt)")
    pipe_kwargs: dict | None = flags.pipe_kwargs()


def run(cfg: Config) -> None:
    check_output(cfg.out, "grid.png", "samples.npz", "sample_config.json")
    from ..integrations.diffusers.fit import is_pipeline
    if is_pipeline(cfg.model.name):
        return _run_pipeline(cfg)
    if cfg.prompts is not None or cfg.pipe_kwargs is not None or cfg.images is not None:
        raise ValueError("--prompts, --images and --pipe-kwargs apply to a pipeline (--model Flux-FMNIST or a folder)")
    s = cfg.model.sample_config(**asdict(cfg.sampling), labels=cfg.labels, seed=cfg.seed, noise=cfg.noise,
                                out_dir=cfg.out, skip_schedule=cfg.skip_schedule)
    from ..images import save_grid, save_npz
    from ..loading import build_lazy_model, read_noise
    from ..pipeline import generate
    # Everything that can fail is checked before anything is written.
    if s.steps < 2 and (s.gates or s.force_skip or s.skip_schedule):
        raise ValueError("lazy sampling needs at least 2 steps")
    model = build_lazy_model(s)
    noise = read_noise(s.noise) if s.noise else None
    gen = generate(model, s.labels, [s.seed + i for i in range(len(s.labels))], steps=s.steps,
                   cfg_scale=s.cfg_scale, method=s.sampler, eta=s.eta,
                   guide_channels=None if s.guide_all_channels else 3, noise=noise, progress=True)
    os.makedirs(s.out_dir, exist_ok=True)
    save_grid(gen.images, os.path.join(s.out_dir, "grid.png"))
    save_npz(gen, os.path.join(s.out_dir, "samples.npz"))
    lazy = gen.stats.summary() if gen.stats is not None else None
    write_json(os.path.join(s.out_dir, "sample_config.json"), {"sample": s.record(), "seconds": gen.seconds,
                                                               "lazy": lazy})
    _report(len(s.labels), gen.seconds, s.out_dir, lazy)


def _report(n: int, seconds: float, out: str, lazy: dict | None) -> None:
    print(f"{n} images in {seconds:.2f} s ({seconds / n:.3f} s/image), written to {out}")
    if lazy is not None:
        print(f"lazy ratio {lazy['lazy_ratio']:.3f} (attn {lazy['attn']:.3f}, ffn {lazy['ffn']:.3f})")


def _run_pipeline(cfg: Config) -> None:
    import numpy as np

    from ..core.lazy import LazyConfig, patterns
    from ..images import save_grid, to_uint8
    from ..integrations.diffusers import apply_lazy_to_pipeline
    from ..integrations.diffusers.fit import check_call_kwargs, pipeline_sampler, read_prompts
    from ..io import atomic_path
    m, s = cfg.model, cfg.sampling
    if m.checkpoint or m.random_init or m.num_classes or cfg.skip_schedule or cfg.noise or s.max_skip_run:
        raise ValueError(f"{m.name} is a pipeline with its own weights, scheduler and prompts; --ckpt, --random-init, "
                         f"--num-classes, --skip-schedule, --noise and --max-skip-run do not apply")
    extra = dict(cfg.pipe_kwargs or {})
    if m.image_size:
        extra.update(height=m.image_size, width=m.image_size)
    # What sample_config.json records of the run (the keys it has always had).
    record = {"model": m.name, "prompts": read_prompts(cfg.prompts) if cfg.prompts else [], "images": cfg.images,
              "steps": s.steps, "seed": cfg.seed, "gates": s.gates, "force_skip": s.force_skip, "reuse": s.reuse,
              "call_kwargs": extra, "out_dir": cfg.out, "device": m.device}
    if s.gates and s.force_skip:
        raise ValueError("give --gates or --force-skip, not both")
    if s.steps < 2 and (s.gates or s.force_skip):
        raise ValueError("lazy sampling needs at least 2 steps")
    pipe, kwargs, prompts = m.open_pipeline(cfg.pipe_kwargs)  # the pipeline's defaults, then `extra`
    pipe = pipe.to(m.device)
    kwargs = check_call_kwargs(pipe, kwargs)
    prompts = record["prompts"] or prompts
    n = cfg.images or len(prompts)
    ctrl = None
    if s.gates:
        ctrl = apply_lazy_to_pipeline(pipe, s.gates, num_inference_steps=s.steps)
    elif s.force_skip:
        ctrl = apply_lazy_to_pipeline(pipe, num_inference_steps=s.steps,
                                      config=LazyConfig(num_steps=s.steps, reuse=s.reuse))
        ctrl.force(patterns.from_name(s.force_skip, s.steps, ctrl.depth))
    t0 = time.perf_counter()
    images = pipeline_sampler(pipe, prompts, s.steps, kwargs)([cfg.seed + i for i in range(n)])
    seconds = time.perf_counter() - t0
    lazy = ctrl.stats().summary() if ctrl is not None else None
    os.makedirs(cfg.out, exist_ok=True)
    frames = images if images.dim() == 4 else images[:, 0]  # video: the grid shows each first frame
    save_grid(frames, os.path.join(cfg.out, "grid.png"), scale=max(1, 112 // frames.shape[-1]))
    flat = images.flatten(0, 1) if images.dim() == 5 else images
    with atomic_path(os.path.join(cfg.out, "samples.npz")) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, arr_0=to_uint8(flat), prompts=np.array([prompts[i % len(prompts)] for i in range(n)]))
    write_json(os.path.join(cfg.out, "sample_config.json"), {"sample": record, "call_kwargs": kwargs,
                                                             "seconds": seconds, "lazy": lazy})
    _report(n, seconds, cfg.out, lazy)
