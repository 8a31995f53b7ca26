"""Figures: the layer x step laziness heatmap (paper Fig. 4) and quality against MACs."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from ..io import atomic_path  # noqa: E402


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_heatmaps(heat: dict, path: str) -> None:
    """heat: name -> (N, L, 2) skip rates. One row per run, attention and feed-forward side by side."""
    if not heat:
        return
    fig, axes = plt.subplots(len(heat), 2, figsize=(11, 2.6 * len(heat)), squeeze=False)
    for row, (name, h) in zip(axes, heat.items()):
        for m, (ax, kind) in enumerate(zip(row, ("attention", "feed-forward"))):
            im = ax.imshow(h[:, :, m].T.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="lower")
            ax.set_title(f"{name}: {kind} (mean {float(h[:, :, m].mean()):.2f})", fontsize=9)
            ax.set_xlabel("sampling step")
            ax.set_ylabel("layer")
        fig.colorbar(im, ax=row.tolist(), fraction=0.02, label="fraction skipped")
    _save(fig, path)


def plot_quality(rows: list, path: str, with_fd: bool) -> None:
    """PSNR against full compute (and FD when available) against MACs, one marker per family."""
    keys = [("psnr_vs_full", "PSNR vs full compute (dB, higher is better)")]
    if with_fd:
        keys.append(("FD-EffNetLite0", "FD-EffNetLite0 (lower is better)"))
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.2), squeeze=False)
    markers = {"lazy": "o", "static": "s", "L2C": "^", "DDIM": "x"}
    for ax, (key, label) in zip(axes[0], keys):
        for fam, mk in markers.items():
            pts = [(r["macs_vs_full"], r[key], f"{r['method']}") for r in rows
                   if r["method"].startswith(fam) and r[key] != float("inf")]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=mk, label=fam)
                for x, y, t in pts:
                    ax.annotate(t, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("MACs relative to full compute at the same step count")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    _save(fig, path)
