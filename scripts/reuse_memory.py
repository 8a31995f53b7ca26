"""Peak memory of the reuse operators' histories: no gates, copy, taylor1, taylor2.

Each variant runs in a fresh process (peak RSS cannot be reset within one), samples a
random-weight zoo DiT with every other step skipped, and reports peak RSS (or CUDA peak on a
GPU) next to the bytes the controller's histories hold at the end of the generation.

    python scripts/reuse_memory.py --model DiT-B/2 --image-size 32 --batch 4 --steps 6
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def one(a, reuse):
    import torch
    from lazydit.core.lazy import LazyConfig, apply_lazy, patterns
    from lazydit.core.models import load_model
    from lazydit.pipeline import generate
    torch.set_num_threads(1)
    model = load_model(a.model, None, input_size=a.image_size).to(a.device)
    ctrl = None
    if reuse != "none":
        ctrl = apply_lazy(model, a.steps, LazyConfig(num_steps=a.steps, reuse=reuse))
        ctrl.force(patterns.every_nth(a.steps, model.config.depth, 2))
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    generate(model, list(range(a.batch)), list(range(a.batch)), steps=a.steps, cfg_scale=1.5)
    hist = 0 if ctrl is None else sum(h.values.numel() * h.values.element_size() for h in ctrl.state.hist.values())
    peak = (torch.cuda.max_memory_allocated() if a.device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({"reuse": reuse, "peak_mb": peak / 2**20, "history_mb": hist / 2**20}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="DiT-B/2")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch", type=int, default=4, help="images (CFG doubles the rows)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.only:
        return one(a, a.only)
    rows = []
    for reuse in ("none", "copy", "taylor1", "taylor2"):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--only", reuse], capture_output=True,
                             text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    base = rows[0]["peak_mb"]
    print(f"{a.model}, input side {a.image_size}, batch {a.batch} with CFG, {a.steps} steps, every other step skipped")
    print("| reuse | peak MB | vs no gates | history MB |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['reuse']} | {r['peak_mb']:.0f} | +{r['peak_mb'] - base:.0f} | {r['history_mb']:.0f} |")


if __name__ == "__main__":
    main()
