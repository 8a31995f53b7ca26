"""Time of the reuse machinery on a random-weight zoo DiT, every other step skipped, against full
compute: copy, taylor2, and the default policy's machinery (fit3 forecast weights plus a per-step
rank-16 input correction, both random here: the cost does not depend on their values). The ideal
ratio is the skipped share's complement (0.5 plus step 0's half step).

Interleaved rounds after a warm-up round; each variant's time is divided by the full-compute time
of the same round, and the median of those ratios is printed with its range.

    python scripts/machinery_bench.py --model DiT-XL/2 --batch 1 --steps 10 --rounds 3
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from lazydit.core.lazy import LazyConfig, apply_lazy, patterns, remove_lazy
from lazydit.core.lazy.correction import InputCorrection
from lazydit.core.models import load_model
from lazydit.pipeline import generate

VARIANTS = ("full", "copy", "taylor2", "fit3+correction")


def attach(model, name: str, steps: int):
    if name == "full":
        return None
    reuse = "fit3" if name.startswith("fit3") else name
    ctrl = apply_lazy(model, steps, LazyConfig(num_steps=steps, reuse=reuse))
    ctrl.force(patterns.every_nth(steps, ctrl.depth, 2))
    if name.startswith("fit3"):
        g = torch.Generator().manual_seed(0)
        ctrl.set_fitted(torch.tensor([3.0, -3.0, 1.0, 0.0]).expand(steps, ctrl.depth, 2, 4).clone())
        u = torch.randn(steps, ctrl.depth, 2, ctrl.dim, 16, generator=g) * 1e-3
        v = torch.randn(steps, ctrl.depth, 2, 16, ctrl.dim, generator=g) * 1e-3
        ctrl.set_correction(InputCorrection(u, v, steps))
    return ctrl


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="DiT-S/2")
    p.add_argument("--image-size", type=int, default=32, help="latent side (256 px images: 32)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model = load_model(a.model, None, input_size=a.image_size)
    labels, seeds = [i % 1000 for i in range(a.batch)], list(range(a.batch))

    def run(name):
        attach(model, name, a.steps)
        try:
            t0 = time.perf_counter()
            with torch.no_grad():
                generate(model, labels, seeds, steps=a.steps, cfg_scale=a.cfg_scale)
            return time.perf_counter() - t0
        finally:
            remove_lazy(model)
    for name in VARIANTS:  # warm-up
        run(name)
    ratios = {name: [] for name in VARIANTS[1:]}
    for _ in range(a.rounds):
        base = run("full")
        for name in ratios:
            ratios[name].append(run(name) / base)
    ideal = 1 - (a.steps // 2) / a.steps
    print(f"{a.model}, batch {a.batch}, {a.steps} steps, cfg {a.cfg_scale}, {torch.get_num_threads()} threads; "
          f"ideal {ideal:.3f}")
    print("| variant | time ratio (median) | range | efficiency |")
    print("|---|---|---|---|")
    for name, v in ratios.items():
        med = statistics.median(v)
        print(f"| {name} | {med:.3f} | {min(v):.3f}-{max(v):.3f} | {med / ideal:.2f} |")


if __name__ == "__main__":
    main()
