"""Seconds per image on one GPU, next to the paper's Table 6 (DiT-XL/2, 256 px, 50 steps: 7.39 s ->
3.67 s at 50% lazy): full compute, DDIM at half the steps, and every other step skipped with copy,
TaylorSeer order 2 and the default policy's machinery (fit3 forecast weights plus a per-step
rank-16 input correction, random: the cost does not depend on their values). Random weights:
speed does not depend on them.

Warm-up round, then interleaved rounds (each variant in every round, synchronised); the median
time per image, its ratio to full compute's in the same round, efficiency = that ratio over the
variant's ideal (the share of steps it computes), and peak memory. Prepared for the device tool:
it writes JSON under --out and prints a Markdown table.

    python scripts/gpu_bench.py --out $OUT                      # DiT-XL/2, bf16, cuda, batch 1 and 8
    python scripts/gpu_bench.py --device cpu --dtype fp32 --model DiT-S/2 --steps 4 --batches 1 --rounds 1
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from lazydit.core.lazy import remove_lazy
from lazydit.core.models import load_model
from lazydit.eval.bench import DTYPES, cast_io
from lazydit.io import write_json
from lazydit.pipeline import generate
from machinery_bench import attach  # the same variants as the CPU machinery bench

VARIANTS = ("full", "ddim-half", "copy", "taylor2", "fit3+correction")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="DiT-XL/2")
    p.add_argument("--image-size", type=int, default=32, help="latent side (256 px images: 32)")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="out/gpu-bench")
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_bench: no CUDA device here; pass --device cpu for a smoke run")
    model = load_model(a.model, None, input_size=a.image_size).to(device, DTYPES[a.dtype]).eval()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    half = a.steps // 2
    ideal = {"full": 1.0, "ddim-half": half / a.steps, "copy": 1 - half / a.steps, "taylor2": 1 - half / a.steps,
             "fit3+correction": 1 - half / a.steps}
    report = {"config": vars(a), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "rows": []}
    for batch in (int(b) for b in a.batches.split(",")):
        labels, seeds = [i % 1000 for i in range(batch)], list(range(batch))

        def run(name):
            steps = half if name == "ddim-half" else a.steps
            if name not in ("full", "ddim-half"):
                attach(model, name, a.steps)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                sync()
                t0 = time.perf_counter()
                with torch.no_grad(), cast_io(model, DTYPES[a.dtype]):
                    generate(model, labels, seeds, steps=steps, cfg_scale=a.cfg_scale)
                sync()
                secs = time.perf_counter() - t0
            finally:
                remove_lazy(model)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            return secs, peak
        for name in VARIANTS:  # warm-up
            run(name)
        times = {name: [] for name in VARIANTS}
        ratios = {name: [] for name in VARIANTS}
        peaks = {}
        for _ in range(a.rounds):
            base = None
            for name in VARIANTS:
                secs, peaks[name] = run(name)
                base = secs if name == "full" else base
                times[name].append(secs)
                ratios[name].append(secs / base)
        for name in VARIANTS:
            r = statistics.median(ratios[name])
            report["rows"].append({"batch": batch, "variant": name, "sec_per_image": statistics.median(times[name]) / batch,
                                   "time_ratio": r, "ratio_range": [min(ratios[name]), max(ratios[name])],
                                   "ideal": ideal[name], "efficiency": r / ideal[name], "peak_gib": peaks[name]})
    os.makedirs(a.out, exist_ok=True)
    write_json(os.path.join(a.out, "gpu_bench.json"), report)
    print(f"{a.model} {a.image_size * 8} px, {a.steps} steps, cfg {a.cfg_scale}, {a.dtype} on {report['device']}, "
          f"{a.rounds} rounds after a warm-up")
    print("| batch | variant | s / image | time ratio [range] | ideal | efficiency | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in report["rows"]:
        lo, hi = r["ratio_range"]
        print(f"| {r['batch']} | {r['variant']} | {r['sec_per_image']:.3f} | {r['time_ratio']:.3f} [{lo:.3f}, {hi:.3f}] | "
              f"{r['ideal']:.2f} | {r['efficiency']:.2f} | {r['peak_gib']:.2f} |")
    print(json.dumps({"written": os.path.join(a.out, "gpu_bench.json")}))


if __name__ == "__main__":
    main()
