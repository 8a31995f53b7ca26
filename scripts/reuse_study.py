"""Which reuse operator, distance unit and placement extrapolate best, on the shipped DiT-FMNIST.

Static whole-step skip patterns only, so no training is involved. Prints the mean per-image PSNR
(images in [0, 1], capped at 100 dB) against full compute at the same step count, on evaluation
seeds 1,000,000 + i with labels i % 10 and cfg 3. "fit" operators fit their weights on 8
calibration images (seeds 30,000 + i) first.

    python scripts/reuse_study.py distance    # copy vs taylor1/2 with steps, timesteps or log-SNR
    python scripts/reuse_study.py placement   # warm-up W then evenly spread, taylor1/2 vs fit2/3
"""
from __future__ import annotations

import argparse
from contextlib import contextmanager

import torch

from lazydit.core.diffusion.noise_schedule import NoiseSchedule
from lazydit.metrics import image_psnr
from lazydit.core.lazy import LazyConfig, apply_lazy, patterns, remove_lazy
from lazydit.core.lazy import reuse as R
from lazydit.core.models import EMBEDDED, load_model
from lazydit.pipeline import generate


@contextmanager
def distance(unit: str, n: int):
    """Measure the forecast's step distance in `unit` by remapping step k to a coordinate.
    The library keeps sampling steps (see docs/method.md); this patch exists only for the study."""
    sched = NoiseSchedule.respaced(n)
    idx = torch.arange(n - 1, -1, -1)
    if unit == "timestep":
        coords = torch.as_tensor(sched.timestep_map, dtype=torch.float64)[idx]
    elif unit == "logsnr":
        ac = torch.as_tensor(sched.alphas_cumprod)[idx]
        coords = (ac / (1 - ac)).log()
    else:
        coords = torch.arange(n, dtype=torch.float64)
    f, p, s = R.History.forecast, R.History.push, R.History.start
    R.History.forecast = lambda self, k, fitted=None: f(self, float(coords[int(k)]), fitted)
    R.History.push = lambda self, out, k, rows=None: p(self, out, float(coords[int(k)]), rows)
    R.History.start = classmethod(lambda cls, out, k, order: s.__func__(cls, out, float(coords[int(k)]), order))
    try:
        yield
    finally:
        R.History.forecast, R.History.push, R.History.start = f, p, s


def run(model, n, mask, reuse, labels, seeds, full):
    ctrl = apply_lazy(model, n, LazyConfig(num_steps=n, reuse=reuse))
    ctrl.force(mask)
    if R.is_fitted(reuse):
        with ctrl.fit_reuse():
            generate(model, [i % 10 for i in range(8)], [30_000 + i for i in range(8)], steps=n, cfg_scale=3.0)
    out = generate(model, labels, seeds, steps=n, cfg_scale=3.0).images
    remove_lazy(model)
    return float(image_psnr(out, full).mean())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", choices=["distance", "placement"])
    p.add_argument("--images", type=int, default=32)
    a = p.parse_args()
    model = load_model(EMBEDDED)
    depth = model.config.depth
    labels, seeds = [i % 10 for i in range(a.images)], [1_000_000 + i for i in range(a.images)]
    cases = {50: ["fraction:0.3", "every:2", "fraction:0.6", "every:3"], 20: ["fraction:0.3", "every:2"]}
    if a.study == "placement":
        cases = {50: [0.3, 0.5, 0.6], 20: [0.5]}
    print("| steps | pattern | lazy | operator | distance | PSNR (dB) |\n|---|---|---|---|---|---|")
    for n, pats in cases.items():
        full = generate(model, labels, seeds, steps=n, cfg_scale=3.0).images
        for pat in pats:
            if a.study == "distance":
                masks = [(pat, patterns.from_name(pat, n, depth))]
                runs = [("copy", "step")] + [(op, u) for op in ("taylor1", "taylor2")
                                             for u in ("step", "timestep", "logsnr")]
            else:
                ws = [w for w in (1, 3, 5, 8, 12, 16, 20, 24) if w < n]
                masks = [(f"warmup{w}-spread", m) for w in ws
                         if (m := patterns.warmup_spread(n, depth, pat, w)) is not None]
                runs = [(op, "step") for op in ("taylor1", "taylor2", "fit2", "fit3")]
            for name, mask in masks:
                for op, unit in runs:
                    with distance(unit, n):
                        psnr = run(model, n, mask, op, labels, seeds, full)
                    print(f"| {n} | {name} | {float(mask.float().mean()):.2f} | {op} | {unit} | {psnr:.2f} |",
                          flush=True)


if __name__ == "__main__":
    main()
