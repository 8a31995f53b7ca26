"""`lazydit bench --model PIPELINE`: wall-clock time of a diffusers pipeline (FLUX, SD3, Qwen-Image,
Wan, HunyuanVideo, or the shipped Flux-FMNIST) at full compute, with forced lazy ratios, with a gate
file, and with fewer steps at each lazy run's FLOPs, against the FLOPs each really spent.

Every timed run is one `pipe(...)` call of `batch_size` images, interleaved round by round after
unrecorded warm-up rounds, as `bench` does for a DiT; FLOPs come from torch's FLOP counter over what
ran (`metrics.pipeline_flops`). The report has `bench`'s shape, so its table and files are shared.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ..core.lazy import LazyConfig, patterns
from ..metrics.pipeline_flops import generation_flops
from .bench_report import BenchRun, prepare, summarise


@dataclass
class PipelineBenchConfig:
    model: str = "Flux-FMNIST"
    batch_size: int = 8                 # images per pipe(...) call (true CFG doubles the calls, not the rows)
    steps: int = 28
    lazy_ratios: list = field(default_factory=lambda: [0.5])  # forced whole-step copies, spread evenly
    gates: str | None = None            # also time this gate file (fitted for `steps`)
    match_steps: bool = True            # add the pipeline at fewer steps, at each lazy run's FLOPs
    warmup: int = 1
    repeats: int = 5
    threads: int | None = None
    seed: int = 0
    call_kwargs: dict = field(default_factory=dict)
    image_size: int | None = None       # recorded for the table's header
    dtype: str = "fp32"
    out_dir: str = "out/bench"


def run_pipeline_bench(pipe, c: PipelineBenchConfig, prompts: list[str]) -> dict:
    from tqdm.auto import tqdm

    from ..core.lazy.apply import lazy_targets, site_layout
    from ..integrations.diffusers.fit import pipeline_sampler
    from ..integrations.diffusers.pipeline import apply_lazy_to_pipeline, remove_lazy_from_pipeline
    prepare(c)
    seeds = [c.seed + i for i in range(c.batch_size)]
    depth = site_layout(lazy_targets(pipe.transformer)[0])[2]
    runs = [BenchRun(f"full-{c.steps}", c.steps)]
    for r in c.lazy_ratios:
        mask = patterns.target_fraction(c.steps, depth, r)
        runs.append(BenchRun(f"lazy-{c.steps} forced {r:.0%}", c.steps, mask=mask, lazy_ratio=float(mask.float().mean())))
    if c.gates:
        runs.append(BenchRun(f"lazy-{c.steps} gates", c.steps, gates=True))

    def attach(run: BenchRun):
        remove_lazy_from_pipeline(pipe)
        if run.mask is not None:
            apply_lazy_to_pipeline(pipe, num_inference_steps=run.steps,
                                   config=LazyConfig(num_steps=run.steps, reuse=run.reuse)).force(run.mask)
        elif run.gates:
            apply_lazy_to_pipeline(pipe, c.gates, num_inference_steps=run.steps)

    def generate(run: BenchRun):
        pipeline_sampler(pipe, prompts, run.steps, c.call_kwargs, chunk=c.batch_size)(seeds)

    try:
        for run in runs:  # FLOPs of what each run calls, on the timed batch
            attach(run)
            flops = generation_flops(pipe.transformer, lambda: generate(run))
            run.macs = {"full": flops, "linear": flops}
            if run.gates:
                from ..core.lazy import get_controller
                run.lazy_ratio = get_controller(pipe.transformer).stats().ratio()
        full = runs[0].macs["full"]
        if c.match_steps:
            ks = sorted({max(1, math.ceil(c.steps * r.macs["full"] / full - 1e-9)) for r in runs[1:]} - {c.steps},
                        reverse=True)
            extra = [BenchRun(f"full-{k}", k) for k in ks]
            for run in extra:
                run.macs = {"full": full * run.steps / c.steps, "linear": full * run.steps / c.steps}
            runs[1:1] = extra
        for rnd in tqdm(range(c.warmup + c.repeats), desc="bench rounds"):
            for run in runs:
                attach(run)
                t0 = time.perf_counter()
                generate(run)
                if rnd >= c.warmup:
                    run.times.append(time.perf_counter() - t0)
    finally:
        remove_lazy_from_pipeline(pipe)
    rep = summarise(c, runs, torch.device("cpu"))
    rep["cost"] = "FLOPs from torch's FLOP counter over the transformer calls that ran (the 'MACs ratio' column)"
    return rep
