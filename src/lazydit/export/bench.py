"""`lazydit bench-deploy`: the deployment paths timed in one interleaved run.

For each batch size, every run samples the same images (same noise) and runs are interleaved
round by round after warm-up rounds, as in `lazydit.eval.bench`, so that drift of a shared
machine hits all alike. Ratios, each within one batch size:
- onnxruntime lazy against onnxruntime full, as efficiency = time ratio / MACs ratio;
- onnxruntime against torch eager per step (full and lazy);
- our pieces-per-step graphs against one whole-network graph per step (full compute), i.e. the
  cost of cutting the network where the schedule decides;
- compiled frozen against eager frozen (the controller's forced path, and the same pieces eager).
"""
from __future__ import annotations

import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..deploy.sampler import sample
from ..io import atomic_path, with_old_keys, write_json
from ..core.lazy import LazyConfig, LazyController, apply_lazy, patterns, remove_lazy
from ..core.lazy.skip_schedule_file import SamplerSettings, read_skip_schedule
from ..metrics.macs import generation_macs, lazy_macs, module_macs
from ..core.models import EMBEDDED
from ..pipeline import SeededNoise, generate
from .compiled import TorchBackend, frozen_plan
from .onnx_export import ExportConfig, export_onnx


@dataclass
class DeployBenchConfig:
    model: str = EMBEDDED
    checkpoint: str | None = None
    random_init: bool = False
    image_size: int | None = None
    num_classes: int | None = None
    skip_schedule: str | None = None     # skip-schedule file; None: `lazy_ratio` of whole steps, spread evenly
    lazy_ratio: float = 0.5
    reuse: str = "taylor1"               # operator of the generated schedule (a file carries its own)
    steps: int = 50
    cfg_scale: float = 3.0               # of the generated schedule (a file carries its own)
    batch_sizes: list = field(default_factory=lambda: [1, 8])  # images; CFG doubles the rows
    threads: int = 1                     # intra-op threads of torch and onnxruntime alike (1: see docs/deploy.md)
    warmup: int = 1                      # unrecorded rounds (compilation happens in the first)
    repeats: int = 3                     # recorded rounds
    compile: bool = True                 # also time torch.compile (inductor) of frozen sampling
    seed: int = 0
    out_dir: str = "out/bench-deploy"


class WholeGraphBackend:
    """The whole network as one graph per step (full compute only): the alternative to pieces."""

    def __init__(self, path: str, threads: int):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self.sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def embed(self, x, t, y):
        return (x, t, y), None  # the inputs ride along to `final`

    def block(self, layer, skips, h, c, feeds):
        return h, {}

    def final(self, h, c):
        x, t, y = h
        return self.sess.run(None, {"x": x, "t": t, "y": y})[0]


def _skip_schedule(c: DeployBenchConfig, model):
    if c.skip_schedule:
        return read_skip_schedule(c.skip_schedule)
    depth = model.config.depth
    ctrl = LazyController(LazyConfig(num_steps=c.steps, reuse=c.reuse), depth, model.config.hidden_size)
    ctrl.force(patterns.target_fraction(c.steps, depth, c.lazy_ratio))
    return ctrl, {"arch": model.arch_name, "sampler": SamplerSettings(cfg_scale=c.cfg_scale)}


def run_deploy_bench(c: DeployBenchConfig) -> dict:
    from ..loading import SampleConfig, build_lazy_model
    if min(c.batch_sizes) < 1 or c.repeats < 1 or c.warmup < 0 or c.threads < 1:
        raise ValueError("batch sizes, --repeats and --threads must be >= 1 and --warmup >= 0")
    torch.set_num_threads(c.threads)
    model = build_lazy_model(SampleConfig(model=c.model, checkpoint=c.checkpoint, random_init=c.random_init,
                                          image_size=c.image_size, num_classes=c.num_classes))
    ctrl, meta = _skip_schedule(c, model)
    c.steps = ctrl.config.num_steps  # a skip-schedule file fixes the step count
    mm = module_macs(model.config, "full")
    rank = ctrl.correction.rank if ctrl.correction is not None else 0
    macs_ratio = lazy_macs(ctrl.forced[..., None], mm, gates=False, correction_rank=rank) / generation_macs(mm, c.steps)
    with tempfile.TemporaryDirectory(prefix="lazydit-bench-") as tmp:
        export_onnx(model, ctrl, meta,
                    ExportConfig(skip_schedule=c.skip_schedule or "generated", out_dir=os.path.join(tmp, "b")))
        whole = os.path.join(tmp, "whole.onnx")
        _export_whole(model, whole)
        from ..deploy import load_bundle
        bundle = load_bundle(os.path.join(tmp, "b"))
        lazy_plan = bundle.plan
        full_plan = frozen_plan(model, ctrl, meta)
        full_plan.mask = np.zeros_like(full_plan.mask)
        ort_be = bundle.backend(threads=c.threads)
        whole_be = WholeGraphBackend(whole, c.threads)
        per_batch = [_bench_batch(c, model, ctrl, meta, b, lazy_plan, full_plan, ort_be, whole_be) for b in c.batch_sizes]
    env = {"torch": torch.__version__, "threads": c.threads, "cpu_count": os.cpu_count(),
           "load_avg_at_end": os.getloadavg()[0]}
    config = with_old_keys(asdict(c), {"skip_schedule": "schedule"})  # the key reports have always had
    return {"config": config, "env": env, "lazy_ratio": float(ctrl.forced.float().mean()), "macs_ratio": macs_ratio,
            "reuse": ctrl.config.reuse, "correction_rank": rank, "batches": per_batch}


def _export_whole(model, path):
    mc = model.config
    x = torch.randn(2, mc.in_channels, mc.input_size, mc.input_size)
    t, y = torch.tensor([500, 500]), torch.tensor([0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x, t, y), path, dynamo=False, input_names=["x", "t", "y"], output_names=["out"],
                          dynamic_axes={n: {0: "batch"} for n in ("x", "t", "y", "out")}, opset_version=17)


def _bench_batch(c, model, ctrl, meta, b, lazy_plan, full_plan, ort_be, whole_be) -> dict:
    labels = [i % model.config.num_classes for i in range(b)]
    seeds = [c.seed + i for i in range(b)]
    mc = model.config
    noise = SeededNoise(seeds, (mc.in_channels, mc.input_size, mc.input_size)).draw()
    npn = noise.numpy()
    cfg_scale = meta["sampler"].cfg_scale
    eager_be = TorchBackend(model, ctrl.forced, ctrl.correction is not None)
    runs = {"onnxruntime full": lambda: sample(ort_be, full_plan, labels, npn),
            "onnxruntime lazy": lambda: sample(ort_be, lazy_plan, labels, npn),
            "onnxruntime one graph per step, full": lambda: sample(whole_be, full_plan, labels, npn),
            "torch eager full": lambda: _generate(model, None, labels, seeds, cfg_scale, noise, c.steps),
            "torch eager lazy (controller)": lambda: _generate(model, ctrl, labels, seeds, cfg_scale, noise, c.steps),
            "torch eager lazy (pieces)": lambda: sample(eager_be, lazy_plan, labels, npn)}
    if c.compile:
        # A fresh compiled backend per batch size: dynamic=False specialises on the batch.
        comp_be = TorchBackend(model, ctrl.forced, ctrl.correction is not None, compile=True)
        runs["torch compiled lazy"] = lambda: sample(comp_be, lazy_plan, labels, npn)
        runs["torch compiled full"] = lambda: sample(comp_be, full_plan, labels, npn)
    times = {k: [] for k in runs}
    from tqdm.auto import tqdm
    for rnd in tqdm(range(c.warmup + c.repeats), desc=f"batch {b} rounds"):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            with torch.no_grad():
                fn()
            if rnd >= c.warmup:
                times[name].append(time.perf_counter() - t0)
    return {"batch_size": b, "median_s": {k: float(np.median(v)) for k, v in times.items()},
            "min_s": {k: float(np.min(v)) for k, v in times.items()}, "times_s": times,
            "ratios": ratios(times, c.compile)}


def ratios(times: dict, compiled: bool) -> dict:
    """Each ratio as the median of its per-round ratios (runs of a round ran back to back, so
    drift of the machine cancels), with their range."""
    def ratio(a, b):
        r = np.asarray(times[a]) / np.asarray(times[b])
        return {"paired_median": float(np.median(r)), "min": float(r.min()), "max": float(r.max())}
    out = {"onnxruntime lazy / full (time)": ratio("onnxruntime lazy", "onnxruntime full"),
           "onnxruntime full / torch eager full (per step)": ratio("onnxruntime full", "torch eager full"),
           "onnxruntime lazy / torch eager lazy (controller)": ratio("onnxruntime lazy", "torch eager lazy (controller)"),
           "pieces / one graph per step (onnxruntime, full)": ratio("onnxruntime full", "onnxruntime one graph per step, full")}
    if compiled:
        out["torch compiled lazy / eager lazy (controller)"] = ratio("torch compiled lazy", "torch eager lazy (controller)")
        out["torch compiled lazy / eager lazy (pieces)"] = ratio("torch compiled lazy", "torch eager lazy (pieces)")
        out["torch compiled full / eager full"] = ratio("torch compiled full", "torch eager full")
    return out


def _generate(model, ctrl, labels, seeds, cfg_scale, noise, steps):
    if ctrl is not None:
        apply_lazy(model, steps, controller=ctrl)
    try:
        return generate(model, labels, seeds, steps=steps, cfg_scale=cfg_scale, noise=noise)
    finally:
        remove_lazy(model)


def markdown(rep: dict) -> str:
    c = rep["config"]
    lines = [f"{c['model']}, {c['steps']} steps, lazy ratio {rep['lazy_ratio']:.3f} ({rep['reuse']}, correction rank "
             f"{rep['correction_rank']}), MACs ratio {rep['macs_ratio']:.3f}; {c['threads']} threads; "
             f"{c['repeats']} rounds after {c['warmup']} warm-up; load average at the end {rep['env']['load_avg_at_end']:.1f}",
             ""]
    for b in rep["batches"]:
        lines += [f"batch {b['batch_size']} (CFG: {2 * b['batch_size']} rows)", "", "| run | median s | min s |", "|---|---|---|"]
        lines += [f"| {k} | {b['median_s'][k]:.3f} | {b['min_s'][k]:.3f} |" for k in b["median_s"]]
        lines += ["", "| ratio (per round, paired) | median | range |", "|---|---|---|"]
        for k, r in b["ratios"].items():
            lines.append(f"| {k} | {r['paired_median']:.3f} | {r['min']:.3f}-{r['max']:.3f} |")
        eff, m = b["ratios"]["onnxruntime lazy / full (time)"], rep["macs_ratio"]
        lines += [f"| onnxruntime efficiency (time ratio / MACs ratio) | {eff['paired_median'] / m:.3f} | "
                  f"{eff['min'] / m:.3f}-{eff['max'] / m:.3f} |", ""]
    return "\n".join(lines)


def write_report(rep: dict, out_dir: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "bench-deploy.json"), rep)
    path = os.path.join(out_dir, "bench-deploy.md")
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(markdown(rep))
    return path
