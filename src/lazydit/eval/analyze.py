"""`lazydit analyze`: the paper's Sec. 3.2 evidence, cosine similarity of each module's output
between consecutive sampling steps, from a full-compute generation.

Forward hooks on the modules `lazy_targets` names (the same boundary the gates act on: F(Z)
before the gate multiply) record each call's output; the lazy controller is not involved. Each
module runs once per step, so the k-th call of a module is step k. Similarity is per model row
(CFG's cond and null rows both count, as both are what gates see), over all tokens and channels.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..io import atomic_path, write_json
from ..core.lazy import KINDS, get_controller, lazy_targets
from ..pipeline import generate


@dataclass
class AnalyzeConfig:
    steps: int = 50
    cfg_scale: float = 1.5
    labels: tuple = tuple(range(8))
    seed: int = 0
    out_dir: str = "out/analyze"


def similarity(model: torch.nn.Module, c: AnalyzeConfig) -> dict:
    """{'mean': (N-1, L, 2), 'min': (N-1, L, 2)}: cos(F_k, F_{k-1}) over rows, for steps k = 1..N-1."""
    if get_controller(model) is not None:
        raise ValueError("analyze needs a model without lazy gates: it measures full computation")
    if c.steps < 2:
        raise ValueError("similarity between consecutive steps needs at least 2 steps")
    targets, _ = lazy_targets(model)
    depth = 1 + max(layer for layer, _, _ in targets)
    prev, sims = {}, {}  # (layer, kind) -> last output / list of (B,) similarities

    def hook_for(key):
        def hook(module, args, out):
            last = prev.get(key)
            if last is not None:
                sims.setdefault(key, []).append(F.cosine_similarity(out.flatten(1).float(), last.flatten(1).float(), dim=1))
            prev[key] = out.detach()
        return hook
    handles = [m.register_forward_hook(hook_for((layer, kind))) for layer, kind, m in targets]
    try:
        generate(model, list(c.labels), [c.seed + i for i in range(len(c.labels))], steps=c.steps,
                 cfg_scale=c.cfg_scale, progress=True)
    finally:
        for h in handles:
            h.remove()
    per_row = torch.stack([torch.stack([torch.stack(sims[(l, k)]) for k in KINDS], dim=1)
                           for l in range(depth)], dim=1)  # (N-1, L, 2, B)
    return {"mean": per_row.mean(-1), "min": per_row.amin(-1)}


def plot(sim: dict, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), constrained_layout=True)
    for r, stat in enumerate(("mean", "min")):
        for m, kind in enumerate(("attention", "feed-forward")):
            ax = axes[r, m]
            data = sim[stat][:, :, m].T.numpy()  # (L, N-1): layer x step
            im = ax.imshow(data, aspect="auto", origin="lower", cmap="viridis",
                           extent=(0.5, data.shape[1] + 0.5, -0.5, data.shape[0] - 0.5))
            ax.set_title(f"{kind}: {stat} cosine similarity to the previous step")
            ax.set_xlabel("sampling step k")
            ax.set_ylabel("layer")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            fig.colorbar(im, ax=ax)
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def run_analyze(model: torch.nn.Module, c: AnalyzeConfig, model_info: dict | None = None) -> dict:
    sim = similarity(model, c)
    os.makedirs(c.out_dir, exist_ok=True)
    name = getattr(model, "arch_name", type(model).__name__)
    summary = {kind: {"mean": float(sim["mean"][:, :, m].mean()), "min": float(sim["min"][:, :, m].min()),
                      "layer_mean": sim["mean"][:, :, m].mean(0).tolist()}
               for m, kind in enumerate(KINDS)}
    write_json(os.path.join(c.out_dir, "similarity.json"),
               {"config": asdict(c), "model": model_info or {"arch": name}, "summary": summary,
                "steps_note": "row k-1 compares step k with step k-1, k = 1..N-1; axes (step, layer, [attn, ffn])",
                "mean": sim["mean"].tolist(), "min": sim["min"].tolist()})
    plot(sim, os.path.join(c.out_dir, "similarity.png"), f"{name}, DDIM-{c.steps}, cfg {c.cfg_scale}")
    return summary
