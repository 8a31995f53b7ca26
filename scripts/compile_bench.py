"""Eager vs torch.compile for lazy sampling of the shipped DiT-FMNIST, as lazydit's own DiT and
converted to diffusers' DiTTransformer2DModel (a benchmark, not a test; numbers in docs/diffusers.md).

Modes: full (no gates), forced (a static every-other-step schedule, `ctrl.force`), gates
(input-dependent gates: random weights whose decisions differ between rows, steps and modules).
Per (model, mode, batch) it prints:
- graphs/fwd, breaks, compiled: from dynamo with a counting backend (cheap): graph calls per model
  forward in the second generation, distinct graph-break reasons, graphs compiled in generation 1
  and 2 (a non-zero second figure means recompiles in steady state; a frame past the recompile limit
  falls back to eager and stops counting);
- first, ratio: with inductor (--inductor): seconds of the first compiled generation (it compiles),
  and compiled/eager seconds per generation in steady state (medians of --repeats, interleaved).

    .venv/bin/python scripts/compile_bench.py --steps 10 --batch-sizes 1,8 --inductor
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from lazydit.core.lazy import apply_lazy, patterns
from lazydit.core.models import EMBEDDED, load_model


def build(model_name: str):
    dit = load_model(EMBEDDED).eval()
    if model_name == "lazydit":
        return dit
    from lazydit.integrations.diffusers import build_diffusers_dit, dit_to_diffusers
    tr = build_diffusers_dit(dit.config)
    tr.load_state_dict(dit_to_diffusers(dit.state_dict(), dit.config))
    return tr.eval()


def gated(model_name: str, mode: str, steps: int):
    model = build(model_name)
    if mode == "full":
        return model
    ctrl = apply_lazy(model, steps)
    if mode == "forced":
        ctrl.force(patterns.every_nth(steps, ctrl.depth, 2))
    else:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():  # std 0.05: about half the decisions skip, rows often disagree
            ctrl.attn.copy_(torch.randn(ctrl.attn.shape, generator=g) * 0.05)
            ctrl.ffn.copy_(torch.randn(ctrl.ffn.shape, generator=g) * 0.05)
    return model


def generation(model_name: str, model, steps: int, batch: int) -> torch.Tensor:
    labels = [i % 10 for i in range(batch)]
    noise = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    if model_name == "lazydit":
        from lazydit.pipeline import generate
        return generate(model, labels, list(range(batch)), steps=steps, cfg_scale=3.0, noise=noise).images
    import diffusers

    from lazydit.integrations.diffusers import sample_dit
    scheduler = diffusers.DDIMScheduler(timestep_spacing="trailing", clip_sample=False)
    return sample_dit(model, scheduler, labels, noise, steps, guidance_scale=3.0)


class Counting:
    """A dynamo backend that runs each graph as traced, counting compiles and calls."""

    def __init__(self):
        self.compiled, self.calls = 0, 0

    def __call__(self, gm, example_inputs):
        self.compiled += 1

        def run(*args):
            self.calls += 1
            return gm.forward(*args)
        return run


def count_graphs(model_name: str, mode: str, steps: int, batch: int) -> dict:
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    model, backend = gated(model_name, mode, steps), Counting()
    model.compile(backend=backend)
    generation(model_name, model, steps, batch)
    first = backend.compiled
    backend.calls = 0
    generation(model_name, model, steps, batch)
    breaks = sorted(counters["graph_break"])
    return {"graphs/fwd": backend.calls / steps, "breaks": len(breaks), "compiled": f"{first}+{backend.compiled - first}",
            "why": "; ".join(b.splitlines()[0][:70] for b in breaks[:3])}


def time_inductor(model_name: str, mode: str, steps: int, batch: int, repeats: int) -> dict:
    torch._dynamo.reset()
    eager, comp = gated(model_name, mode, steps), gated(model_name, mode, steps)
    comp.compile()
    t0 = time.perf_counter()
    generation(model_name, comp, steps, batch)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    generation(model_name, eager, steps, batch)
    eager_first = time.perf_counter() - t0
    te, tc = [], []
    for _ in range(repeats):  # interleaved: load on this shared machine hits both alike
        for m, acc in ((eager, te), (comp, tc)):
            t0 = time.perf_counter()
            generation(model_name, m, steps, batch)
            acc.append(time.perf_counter() - t0)
    return {"first": f"{first:.1f}s", "eager first": f"{eager_first:.2f}s",
            "ratio": f"{statistics.median(tc) / statistics.median(te):.2f}"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--models", default="lazydit,diffusers")
    ap.add_argument("--modes", default="full,forced,gates")
    ap.add_argument("--inductor", action="store_true", help="also time inductor (slow: it compiles)")
    ap.add_argument("--no-count", action="store_true", help="skip the dynamo graph counts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch._dynamo.config.cache_size_limit = 8  # the default: report what a user gets
    for model_name in a.models.split(","):
        for mode in a.modes.split(","):
            for batch in (int(b) for b in a.batch_sizes.split(",")):
                row = {"model": model_name, "mode": mode, "batch": batch}
                if not a.no_count:
                    row.update(count_graphs(model_name, mode, a.steps, batch))
                if a.inductor:
                    row.update(time_inductor(model_name, mode, a.steps, batch, a.repeats))
                print(" | ".join(f"{k}: {v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
