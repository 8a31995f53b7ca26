"""Figures: the layer x step laziness heatmap (paper Fig. 4) and quality against MACs or time."""
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


def plot_quality(rows: list, path: str, with_fd: bool, x: str = "macs_vs_full",
                 x_label: str = "MACs relative to full compute", reference: str = "DDIM") -> None:
    """Mean per-image PSNR against full compute (and FD when available) against MACs (or the row's
    `x`: FLOPs, time): one panel per step count, one marker per family, methods named in a numbered
    key so labels never overlap."""
    groups = sorted({r["group"] for r in rows})
    keys = [("psnr", "PSNR vs full compute (dB)")] + ([("FD-EffNetLite0", "FD-EffNetLite0")] if with_fd else [])
    fig, axes = plt.subplots(len(keys), len(groups), figsize=(6.5 * len(groups), 4.6 * len(keys)), squeeze=False)
    markers = dict(zip(sorted({r["family"] for r in rows}), "osD^vP*Xh<>"))
    for gi, g in enumerate(groups):
        pts = [r for r in rows if r["group"] == g and not (r["family"] == "DDIM" and r["steps"] == g)]
        for ki, (key, label) in enumerate(keys):
            ax = axes[ki][gi]
            for fam, mk in markers.items():
                sel = [(j, r) for j, r in enumerate(pts) if r["family"] == fam]
                if sel:
                    ax.scatter([r[x] for _, r in sel], [r[key] for _, r in sel], marker=mk, label=fam)
                    for j, r in sel:
                        ax.annotate(str(j + 1), (r[x], r[key]), fontsize=7, xytext=(4, 2),
                                    textcoords="offset points")
            ax.set_title(f"{g} steps (vs {reference}-{g})", fontsize=10)
            ax.set_xlabel(x_label)
            ax.set_ylabel(label)
            if ki == 0:
                ax.legend(fontsize=7, loc="lower right")
        key_text = "\n".join(f"{j + 1}: {r['method']}" for j, r in enumerate(pts))
        axes[-1][gi].text(0.0, -0.18, key_text, transform=axes[-1][gi].transAxes, fontsize=7, va="top")
    _save(fig, path)
