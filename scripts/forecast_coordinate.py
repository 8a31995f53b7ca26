"""Which coordinate should a forecast extrapolate in under flow matching: the step index, sigma,
or log-SNR? Records every lazy site's output at every step of full-compute generations through a
pipeline, then forecasts each output from earlier ones (Lagrange, orders 1 and 2) the way a skipped
module would, and prints the relative error per coordinate.

Histories are spaced as a schedule spaces them: stride 1 (consecutive computed steps) and stride 2
(every other step computed, the 50% schedule). log-SNR of rectified flow is 2 log((1 - sigma) / sigma);
it is infinite at sigma = 1, so forecasts whose history holds that step are left out for every
coordinate alike (the same targets are scored for all three).

    python scripts/forecast_coordinate.py --weights runs/flux-fmnist/ema.safetensors --images 8
"""
import argparse
import math

import torch

from lazydit.integrations.diffusers.fit import pipeline_sampler
from lazydit.core.lazy.apply import lazy_targets


def lagrange(xs, ys, x):
    """The value at x of the polynomial through (xs, ys)."""
    out = 0.0
    for j, (xj, yj) in enumerate(zip(xs, ys)):
        w = 1.0
        for m, xm in enumerate(xs):
            if m != j:
                w *= (x - xm) / (xj - xm)
        out = out + w * yj
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=None, help="Flux-FMNIST weights (default: the shipped asset)")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--seed", type=int, default=60_000, help="first seed (clear of fitting, selection and evaluation)")
    a = p.parse_args()
    torch.set_num_threads(1)
    from lazydit.integrations.diffusers.flux_fmnist import flux_fmnist_pipeline
    from lazydit.integrations.diffusers.flux_fmnist_text import DEFAULT_PROMPTS, UNCOND
    pipe = flux_fmnist_pipeline(weights=a.weights)
    pipe.set_progress_bar_config(disable=True)
    call = {"height": 28, "width": 28, "max_sequence_length": 12, "negative_prompt": UNCOND, "true_cfg_scale": 3.0}
    records: dict = {}
    hooks = []
    for layer, kind, module in lazy_targets(pipe.transformer)[0]:
        def rec(_m, _a, out, key=(layer, kind)):
            out = out if torch.is_tensor(out) else torch.cat([o for o in out if o is not None], dim=1)
            records.setdefault(key, []).append(out.detach().double())
        hooks.append(module.register_forward_hook(rec))
    try:
        pipeline_sampler(pipe, list(DEFAULT_PROMPTS), a.steps, call)([a.seed + i for i in range(a.images)])
    finally:
        for h in hooks:
            h.remove()
    sigmas = [float(s) for s in pipe.scheduler.sigmas[: a.steps]]
    coords = {"step": [float(k) for k in range(a.steps)], "sigma": sigmas,
              "log-SNR": [2 * math.log((1 - s) / s) if 0 < s < 1 else float("nan") for s in sigmas]}
    # Calls alternate cond, uncond per step (true CFG) within each chunk of images; keep cond calls.
    n_calls = len(next(iter(records.values())))
    per_chunk = 2 * a.steps
    print(f"{n_calls} calls recorded per site; sigmas {sigmas[0]:.3f} ... {sigmas[-1]:.3f}")
    print("| stride | order | step | sigma | log-SNR |")
    print("|---|---|---|---|---|")
    for stride in (1, 2):
        for order in (1, 2):
            errs = {c: [] for c in coords}
            for outs in records.values():
                for chunk in range(n_calls // per_chunk):
                    cond = outs[chunk * per_chunk: (chunk + 1) * per_chunk: 2]  # (steps) of (B, T, D)
                    for k in range(stride * (order + 1), a.steps):
                        hist = [k - stride * (j + 1) for j in range(order + 1)]
                        if any(not math.isfinite(coords["log-SNR"][h]) for h in hist + [k]):
                            continue
                        truth = cond[k]
                        for c, xs in coords.items():
                            pred = lagrange([xs[h] for h in hist], [cond[h] for h in hist], xs[k])
                            errs[c].append(float((pred - truth).norm() / truth.norm().clamp_min(1e-12)))
            row = " | ".join(f"{sum(v) / len(v):.4f}" for v in errs.values())
            print(f"| {stride} | {order} | {row} |")


if __name__ == "__main__":
    main()
