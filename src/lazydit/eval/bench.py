"""`lazydit bench`: wall-clock latency of full, fewer-step and lazy sampling, against their MACs.

Every run is a `lazydit.pipeline.generate` call of one batch (CFG doubles it). Runs are
interleaved round by round (full, DDIM-k, lazy, full, ...) so that drift of a shared or
thermally throttled machine hits every configuration alike; the first `warmup` rounds are
not recorded. Efficiency = (time / full time) / (MACs / full MACs): 1.0 means the time saved
is exactly the compute saved; above 1 means overhead that MACs do not see (elementwise work:
norms, modulation, gating, residuals, which a skipped module's block still does).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from ..core.lazy import LazyConfig, apply_lazy, load_gates, patterns, remove_lazy
from ..metrics.macs import controller_costs, ddim_steps_for_macs, generation_macs, lazy_macs, module_macs
from ..pipeline import generate
from .bench_report import BenchRun, prepare, summarise

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class BenchConfig:
    model: str = "DiT-S/2"
    checkpoint: str | None = None
    random_init: bool = False           # random weights: speed does not depend on them
    image_size: int | None = None       # model input side (latent side for latent DiTs)
    num_classes: int | None = None
    batch_size: int = 8                 # images per generation; CFG makes 2x rows (as the paper's Table 6)
    cfg_scale: float = 1.5
    steps: int = 50                     # N of the full and lazy runs
    lazy_ratios: list = field(default_factory=lambda: [0.5])  # forced static ratios (patterns.target_fraction)
    gates: str | None = None            # also time a learned gate file for N steps
    match_ddim: bool = True             # add DDIM-k with k matched to each lazy run's MACs
    dtype: str = "fp32"
    device: str = "cpu"
    warmup: int = 1                     # unrecorded rounds first
    repeats: int = 5                    # recorded rounds
    threads: int | None = None          # torch CPU threads (None: leave torch's default)
    seed: int = 0
    out_dir: str = "out/bench"


@contextlib.contextmanager
def cast_io(model: torch.nn.Module, dtype: torch.dtype):
    """Run a low-precision model inside the float32 pipeline: cast x in, the output back out.

    `generate` draws noise and does the sampler arithmetic in float32 (as it should); only the
    network runs in `dtype`. Hooks, so nothing in the pipeline changes.
    """
    if dtype == torch.float32:
        yield
        return
    pre = model.register_forward_pre_hook(lambda m, args: (args[0].to(dtype), *args[1:]))
    post = model.register_forward_hook(lambda m, args, out: out.float())
    try:
        yield
    finally:
        pre.remove()
        post.remove()


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _plan(c: BenchConfig, depth: int, mm: dict) -> list[BenchRun]:
    runs = [BenchRun(f"DDIM-{c.steps}", c.steps)]
    for r in c.lazy_ratios:
        mask = patterns.target_fraction(c.steps, depth, r)
        run = BenchRun(f"lazy-{c.steps} forced {r:.0%}", c.steps, mask=mask, lazy_ratio=float(mask.float().mean()))
        # A forced mask is the same for every row: its MACs follow from the mask alone.
        run.macs = {k: 2 * lazy_macs(mask[..., None], m, gates=False) for k, m in mm.items()}
        runs.append(run)
    if c.gates:
        runs.append(BenchRun(f"lazy-{c.steps} gates", c.steps, gates=True))
    return runs


def _setup(model, run: BenchRun, gate_ctrl):
    """Put the model in the state `run` needs: no controller, a forced mask, or the gates."""
    remove_lazy(model)
    if run.mask is not None:
        apply_lazy(model, run.steps, LazyConfig(num_steps=run.steps, reuse=run.reuse)).force(run.mask)
    elif run.gates:
        apply_lazy(model, run.steps, controller=gate_ctrl)


def run_bench(c: BenchConfig, model: torch.nn.Module | None = None) -> dict:
    from tqdm.auto import tqdm

    from ..loading import SampleConfig, build_lazy_model
    if c.dtype not in DTYPES:
        raise ValueError(f"unknown dtype {c.dtype!r}; choose from {', '.join(DTYPES)}")
    prepare(c)
    if model is None:
        model = build_lazy_model(SampleConfig(model=c.model, checkpoint=c.checkpoint, random_init=c.random_init,
                                              image_size=c.image_size, num_classes=c.num_classes, device=c.device))
    dtype = DTYPES[c.dtype]
    model = model.to(dtype).eval()
    device = next(model.parameters()).device
    depth = model.config.depth
    gate_ctrl = None
    if c.gates:
        gate_ctrl = load_gates(c.gates, arch=model.arch_name, depth=depth, hidden_size=model.config.hidden_size,
                               num_steps=c.steps)
    mm = {conv: module_macs(model.config, conv) for conv in ("linear", "full")}
    labels = [i % model.config.num_classes for i in range(c.batch_size)]
    seeds = [c.seed + i for i in range(c.batch_size)]
    runs = _plan(c, depth, mm)

    def time_one(run: BenchRun) -> float:
        _setup(model, run, gate_ctrl)
        _sync(device)
        with cast_io(model, dtype):
            gen = generate(model, labels, seeds, steps=run.steps, cfg_scale=c.cfg_scale)
        if run.gates:  # data-dependent decisions: MACs actually spent (per row, x2 for CFG)
            run.macs = {k: 2 * lazy_macs(gen.stats.skips, m, gen.stats.steps_run, **controller_costs(gate_ctrl))
                        for k, m in mm.items()}
            run.lazy_ratio = gen.stats.ratio()
        elif run.mask is None:
            run.macs = {k: generation_macs(m, run.steps, cfg=True) for k, m in mm.items()}
        return gen.seconds

    try:
        for run in runs:
            if run.gates:
                time_one(run)  # unrecorded: the gates' MACs are known only once they ran
        if gate_ctrl is not None and gate_ctrl.forced is None and gate_ctrl.policy is None:
            # The gates' own decisions replayed as a fixed mask, same operator: the time the
            # gates add over it is the cost of deciding (scores, thresholds, per-row gathers).
            same = BenchRun(f"lazy-{c.steps} gates' pattern, forced", c.steps, mask=gate_ctrl.state.skip_record().clone(),
                        reuse=gate_ctrl.config.reuse, lazy_ratio=next(r for r in runs if r.gates).lazy_ratio)
            same.macs = {k: 2 * lazy_macs(same.mask, m, gates=False) for k, m in mm.items()}
            runs.append(same)
        if c.match_ddim:
            per_step = generation_macs(mm["linear"], 1, cfg=True)
            ks = sorted({ddim_steps_for_macs(r.macs["linear"], per_step) for r in runs[1:]} - {c.steps}, reverse=True)
            runs[1:1] = [BenchRun(f"DDIM-{k}", k) for k in ks]
        for rnd in tqdm(range(c.warmup + c.repeats), desc="bench rounds"):
            for run in runs:
                t = time_one(run)
                if rnd >= c.warmup:
                    run.times.append(t)
    finally:
        remove_lazy(model)
    return summarise(c, runs, device)
