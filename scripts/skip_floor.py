"""The floor of module-level skipping on a model: how fast lazy sampling could be if a skipped
call cost nothing at all, against full compute and the real skipped call.

Three runs of the same gate file's decisions, interleaved after a warm-up round: full compute,
the real default policy (forecast, input correction, history), and the same decisions with every
skipped call returning its last output with no work. Everything outside the lazy modules (norms,
modulation, residual adds, embedders, final layer, CFG, the sampler step) runs in all three, so the
third run's time ratio is the best any reuse operator can reach on this machine: an efficiency
target below floor / MACs ratio cannot be met by making skipped calls cheaper.

    python scripts/skip_floor.py --gates G/gates.safetensors --batch 1 --rounds 5
"""
from __future__ import annotations

import argparse
import statistics

import torch

from lazydit.core.lazy import apply_lazy, load_gates, remove_lazy
from lazydit.core.lazy.controller import LazyController
from lazydit.loading import SampleConfig, build_lazy_model
from lazydit.pipeline import generate


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gates", required=True, help="gate file of the default policy (lazydit train-gates)")
    p.add_argument("--model", default="DiT-FMNIST")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg-scale", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = build_lazy_model(SampleConfig(model=a.model)).eval()
    ctrl = load_gates(a.gates, arch=model.arch_name, depth=model.config.depth,
                      hidden_size=model.config.hidden_size, num_steps=a.steps)
    real = LazyController._skip_value
    labels, seeds = [i % model.config.num_classes for i in range(a.batch)], list(range(a.batch))

    def free(self, layer, kind, k, hist, truth=None, z=None, skipping=None):
        return hist.slot(0)  # the newest output, no arithmetic: what a skip cannot undercut

    def run(name: str) -> float:
        remove_lazy(model)
        LazyController._skip_value = free if name == "free skips" else real
        try:
            if name != "full":
                apply_lazy(model, a.steps, controller=ctrl)
            return generate(model, labels, seeds, steps=a.steps, cfg_scale=a.cfg_scale).seconds
        finally:
            LazyController._skip_value = real
            remove_lazy(model)

    names = ("full", "default policy", "free skips")
    times = {n: [] for n in names}
    for rnd in range(a.rounds + 1):  # round 0 warms up
        for n in names:
            t = run(n)
            if rnd:
                times[n].append(t)
    apply_lazy(model, a.steps, controller=ctrl)
    stats = generate(model, labels, seeds, steps=a.steps, cfg_scale=a.cfg_scale).stats
    remove_lazy(model)
    print(f"{a.model}, batch {a.batch} with CFG, {a.steps} steps, {a.threads} thread(s), {a.rounds} rounds; "
          f"lazy ratio {stats.ratio():.3f}")
    print("| run | time ratio to full (median) | range over rounds |")
    print("|---|---|---|")
    for n in names:
        r = [t / f for t, f in zip(times[n], times["full"])]
        print(f"| {n} | {statistics.median(r):.3f} | {min(r):.3f}-{max(r):.3f} |")


if __name__ == "__main__":
    main()
