"""The report of `lazydit bench` on a DiT or a pipeline: one timed run's record, the summary of
all runs against the first (time ratio, cost ratio, efficiency), its Markdown table and files."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..io import atomic_path, write_json


@dataclass
class BenchRun:
    name: str
    steps: int
    mask: torch.Tensor | None = None    # forced skip mask (N, L, 2), or (N, L, 2, B) per row
    reuse: str = "copy"                 # reuse operator of a forced mask
    gates: bool = False                 # use the learned gate controller
    times: list = field(default_factory=list)
    macs: dict = field(default_factory=dict)   # convention -> MACs per image with CFG
    lazy_ratio: float = 0.0


def prepare(c) -> None:
    """Refuse a benchmark config that cannot be timed, and set the thread count it asks for."""
    if c.batch_size < 1 or c.repeats < 1 or c.warmup < 0:
        raise ValueError("--batch-size and --repeats must be >= 1 and --warmup >= 0")
    if c.steps < 2:
        raise ValueError("lazy benchmarks need at least 2 steps")
    if c.threads:
        torch.set_num_threads(c.threads)


def summarise(c: BenchConfig, runs: list[BenchRun], device) -> dict:
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
    tail = f"\n{rep['cost']}\n" if "cost" in rep else ""
    if "decision_overhead" in rep:
        o = rep["decision_overhead"]
        tail += (f"\nDecision overhead of the gates over their own pattern forced: {o['median']:+.1%} "
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
