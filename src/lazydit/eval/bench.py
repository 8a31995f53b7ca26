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
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..io import atomic_path, write_json
from ..core.lazy import LazyConfig, apply_lazy, load_gates, patterns, remove_lazy
from ..metrics.macs import controller_costs, ddim_steps_for_macs, generation_macs, lazy_macs, module_macs
from ..pipeline import generate

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


@dataclass
class _Run:
    name: str
    steps: int
    mask: torch.Tensor | None = None    # forced skip mask (N, L, 2), or (N, L, 2, B) per row
    reuse: str = "copy"                 # reuse operator of a forced mask
    gates: bool = False                 # use the learned gate controller
    times: list = field(default_factory=list)
    macs: dict = field(default_factory=dict)   # convention -> MACs per image with CFG
    lazy_ratio: float = 0.0


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


def _plan(c: BenchConfig, depth: int, mm: dict) -> list[_Run]:
    runs = [_Run(f"DDIM-{c.steps}", c.steps)]
    for r in c.lazy_ratios:
        mask = patterns.target_fraction(c.steps, depth, r)
        run = _Run(f"lazy-{c.steps} forced {r:.0%}", c.steps, mask=mask, lazy_ratio=float(mask.float().mean()))
        # A forced mask is the same for every row: its MACs follow from the mask alone.
        run.macs = {k: 2 * lazy_macs(mask[..., None], m, gates=False) for k, m in mm.items()}
        runs.append(run)
    if c.gates:
        runs.append(_Run(f"lazy-{c.steps} gates", c.steps, gates=True))
    return runs


def _setup(model, run: _Run, gate_ctrl):
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
    if c.batch_size < 1 or c.repeats < 1 or c.warmup < 0:
        raise ValueError("--batch-size and --repeats must be >= 1 and --warmup >= 0")
    if c.steps < 2:
        raise ValueError("lazy benchmarks need at least 2 steps")
    if c.threads:
        torch.set_num_threads(c.threads)
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

    def time_one(run: _Run) -> float:
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
            same = _Run(f"lazy-{c.steps} gates' pattern, forced", c.steps, mask=gate_ctrl.state.skips.clone(),
                        reuse=gate_ctrl.config.reuse, lazy_ratio=next(r for r in runs if r.gates).lazy_ratio)
            same.macs = {k: 2 * lazy_macs(same.mask, m, gates=False) for k, m in mm.items()}
            runs.append(same)
        if c.match_ddim:
            per_step = generation_macs(mm["linear"], 1, cfg=True)
            ks = sorted({ddim_steps_for_macs(r.macs["linear"], per_step) for r in runs[1:]} - {c.steps}, reverse=True)
            runs[1:1] = [_Run(f"DDIM-{k}", k) for k in ks]
        for rnd in tqdm(range(c.warmup + c.repeats), desc="bench rounds"):
            for run in runs:
                t = time_one(run)
                if rnd >= c.warmup:
                    run.times.append(t)
    finally:
        remove_lazy(model)
    return _summarise(c, runs, device)


def _summarise(c: BenchConfig, runs: list[_Run], device) -> dict:
    base = runs[0]
    t0, t0_min = float(np.median(base.times)), float(np.min(base.times))
    rows = []
    for r in runs:
        t = np.asarray(r.times)
        med = float(np.median(t))
        time_ratio = med / t0
        macs_ratio = r.macs["full"] / base.macs["full"]
        rows.append({"name": r.name, "steps": r.steps, "lazy_ratio": r.lazy_ratio,
                     "median_s": med, "min_s": float(t.min()), "max_s": float(t.max()),
                     "q1_s": float(np.percentile(t, 25)), "q3_s": float(np.percentile(t, 75)), "times_s": t.tolist(),
                     "tmacs_per_image_cfg": {k: v / 1e12 for k, v in r.macs.items()},
                     "time_ratio": time_ratio, "macs_ratio": macs_ratio,
                     "macs_ratio_linear": r.macs["linear"] / base.macs["linear"],
                     "efficiency": time_ratio / macs_ratio,
                     # background load only ever adds time: the min is the least disturbed estimate
                     "efficiency_min": float(t.min()) / t0_min / macs_ratio})
    env = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    rep = {"config": asdict(c), "env": env, "runs": rows}
    by = {r.name: r for r in runs}
    gated, forced = by.get(f"lazy-{c.steps} gates"), by.get(f"lazy-{c.steps} gates' pattern, forced")
    if gated is not None and forced is not None:
        # Paired per round: both ran back to back in every round, so drift cancels.
        ratios = np.asarray(gated.times) / np.asarray(forced.times)
        rep["decision_overhead"] = {"median": float(np.median(ratios)) - 1, "min": float(ratios.min()) - 1,
                                    "max": float(ratios.max()) - 1,
                                    # background load only adds time: fastest against fastest
                                    "of_fastest": float(min(gated.times) / min(forced.times)) - 1}
    return rep


def markdown_table(rep: dict) -> str:
    c = rep["config"]
    head = (f"{c['model']} (input {c['image_size'] or 'default'}), batch {c['batch_size']} with CFG, "
            f"{c['dtype']} on {rep['env']['device']} ({rep['env']['threads']} threads), "
            f"{c['repeats']} repeats after {c['warmup']} warm-up\n\n")
    lines = ["| run | steps | lazy ratio | median s | min-max s | time ratio | MACs ratio (full) | efficiency "
             "| efficiency (min) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rep["runs"]:
        lines.append(f"| {r['name']} | {r['steps']} | {r['lazy_ratio']:.3f} | {r['median_s']:.3f} | "
                     f"{r['min_s']:.3f}-{r['max_s']:.3f} | {r['time_ratio']:.3f} | {r['macs_ratio']:.3f} | "
                     f"{r['efficiency']:.3f} | {r['efficiency_min']:.3f} |")
    tail = ""
    if "decision_overhead" in rep:
        o = rep["decision_overhead"]
        tail = (f"\nDecision overhead of the gates over their own pattern forced: {o['median']:+.1%} "
                f"(median of per-round ratios; range {o['min']:+.1%} to {o['max']:+.1%}; fastest against "
                f"fastest {o['of_fastest']:+.1%})\n")
    return head + "\n".join(lines) + "\n" + tail


def write_bench(rep: dict, out_dir: str) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    jpath, mpath = os.path.join(out_dir, "bench.json"), os.path.join(out_dir, "bench.md")
    write_json(jpath, rep)
    with atomic_path(mpath) as tmp, open(tmp, "w") as f:
        f.write(markdown_table(rep))
    return jpath, mpath
