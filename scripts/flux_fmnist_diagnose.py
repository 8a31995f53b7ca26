"""Why a budget of the Flux-FMNIST frontier is lost: the default policy against TaylorSeer order 2
on the *same* placement (same skipped steps, hence one FLOPs budget up to the correction's cost),
on the frontier's held-out prompts and seeds.

If TaylorSeer2 on the default's own placement scores like the default, the fitted forecast and the
input correction add nothing on this trajectory, and a rival that wins does so with the extra
computed step that FLOPs matching ("never fewer than the default") gives it.

    python scripts/flux_fmnist_diagnose.py RUN/gates-28-0.3/gates.safetensors --images 256
"""
from __future__ import annotations

import argparse
import json
import math

import torch

from lazydit.core.lazy import LazyConfig
from lazydit.eval.seeds import EVAL_SEED
from lazydit.integrations.diffusers.fit import open_pipeline, pipeline_sampler
from lazydit.integrations.diffusers.pipeline import apply_lazy_to_pipeline, remove_lazy_from_pipeline
from lazydit.metrics import bootstrap_ci, image_psnr


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("gates", help="the default policy's gate file from a Flux-FMNIST frontier or train-gates run")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--seed", type=int, default=EVAL_SEED, help="first evaluation seed (the frontier's)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    pipe, call, prompts = open_pipeline("Flux-FMNIST")
    ctrl = apply_lazy_to_pipeline(pipe, a.gates)
    n, mask = ctrl.config.num_steps, ctrl.forced.clone()
    remove_lazy_from_pipeline(pipe)
    sample = pipeline_sampler(pipe, prompts, n, call)
    seeds = [a.seed + i for i in range(a.images)]
    ref = sample(seeds)

    def score(images):
        per = image_psnr(images, ref)
        mse = float(((images.clamp(-1, 1) - ref.clamp(-1, 1)) / 2).pow(2).mean())
        return {"psnr": float(per.mean()), "ci95": list(bootstrap_ci(per, 2000)),
                "pooled": 10 * math.log10(1 / mse), "_per": per}

    apply_lazy_to_pipeline(pipe, a.gates)
    rows = {"default (as fitted)": score(sample(seeds))}
    remove_lazy_from_pipeline(pipe)
    for op in ("taylor2", "taylor1", "copy"):
        apply_lazy_to_pipeline(pipe, num_inference_steps=n, config=LazyConfig(num_steps=n, reuse=op)).force(mask)
        rows[f"{op} on the default's placement"] = score(sample(seeds))
        remove_lazy_from_pipeline(pipe)
    base = rows["default (as fitted)"]["_per"]
    print(f"{a.gates}: {n} steps, {int(mask[:, 0, 0].sum())} skipped steps, {a.images} images (seeds {a.seed}+)")
    print("| operator | PSNR [95% CI] | pooled | default minus it, paired [95% CI] |")
    print("|---|---|---|---|")
    out = {}
    for name, r in rows.items():
        lo, hi = bootstrap_ci(base - r["_per"], 2000)
        print(f"| {name} | {r['psnr']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] | {r['pooled']:.2f} | "
              f"{float((base - r['_per']).mean()):+.2f} [{lo:+.2f}, {hi:+.2f}] |")
        out[name] = {k: v for k, v in r.items() if not k.startswith("_")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
