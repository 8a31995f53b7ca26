"""One harness for every way of cutting compute: same model, same seeds and labels, one table.

Groups of methods share a step count N and its full-compute reference:
  DDIM-N (full) | lazy-N at each target (learned gates, input-dependent) |
  static-N (uniform whole-step reuse at the same ratio, FORA-like) |
  L2C-N (input-independent mask averaged from the gates' decisions, same ratio) |
  DDIM-k (fewer steps at the MACs of the lazy run).
`lazydit demo` is this harness with defaults sized for 2 CPU cores.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

import torch

from ..io import write_json
from ..lazy import apply_lazy, patterns, remove_lazy
from ..models import EMBEDDED
from ..pipeline import generate
from ..sample import save_grid
from ..train.gates import GateTrainConfig, train_gates
from .baselines import ddim_steps_for_macs, static_from_decisions
from .macs import lazy_macs, module_macs


@dataclass
class CompareConfig:
    out_dir: str = "out/demo"
    model: str = EMBEDDED
    checkpoint: str | None = None
    settings: list = field(default_factory=lambda: [(50, 0.3), (50, 0.5), (20, 0.5)])  # (steps, target)
    n_samples: int = 64             # images per method (same seeds and labels for all)
    n_ref: int = 500                # real images for FD/KID (embedded model only)
    cfg_scale: float = 3.0
    seed: int = 0
    train_iters: int = 100          # gate-training iterations per setting
    train_batch: int = 8
    rollout_every: int = 8
    gates_dir: str | None = None    # reuse gate files <dir>/gates-N-R.safetensors instead of training
    threads: int | None = None


def _timed_generate(model, labels, seeds, steps, cfg_scale, batch=50):
    """Generate in chunks; returns (images, seconds, skips or None)."""
    imgs, skips, secs = [], [], 0.0
    for i in range(0, len(labels), batch):
        g = generate(model, labels[i:i + batch], seeds[i:i + batch], steps=steps, cfg_scale=cfg_scale)
        imgs.append(g.images)
        secs += g.seconds
        if g.stats is not None:
            skips.append(g.stats.skips)
    return torch.cat(imgs), secs, (torch.cat(skips, dim=-1) if skips else None)


def run_compare(cfg: CompareConfig, model) -> dict:
    from tqdm.auto import tqdm
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    os.makedirs(cfg.out_dir, exist_ok=True)
    mc = model.config
    labels = [i % mc.num_classes for i in range(cfg.n_samples)]
    seeds = [cfg.seed + i for i in range(cfg.n_samples)]
    mm = module_macs(mc, "linear")
    rows, heat = [], {}
    steps_needed = sorted({n for n, _ in cfg.settings})
    plan = [("full", n, None) for n in steps_needed] + [("lazy", n, r) for n, r in cfg.settings]
    bar = tqdm(total=len(plan) * 2 + len(cfg.settings) * 2, desc="compare")
    refs, full_time = {}, {}

    def record(name, n, images, secs, macs, skips=None, group=None):
        rows.append({"method": name, "steps": n, "group": group or n, "images": images, "seconds": secs,
                     "macs": macs, "skips": skips})

    for n in steps_needed:
        imgs, secs, _ = _timed_generate(model, labels, seeds, n, cfg.cfg_scale)
        refs[n], full_time[n] = imgs, secs
        record(f"DDIM-{n}", n, imgs, secs, 2 * n * mm.forward)
        bar.update(2)
    for n, target in cfg.settings:
        gate_file = os.path.join(cfg.gates_dir, f"gates-{n}-{target}.safetensors") if cfg.gates_dir else None
        ctrl = _fit_or_load(model, cfg, n, target, gate_file)
        imgs, secs, skips = _timed_generate(model, labels, seeds, n, cfg.cfg_scale)
        macs = 2 * lazy_macs(skips, mm)
        ratio = float(skips.float().mean())
        record(f"lazy-{n}@{target:.0%}", n, imgs, secs, macs, skips)
        heat[f"lazy-{n}@{target:.0%}"] = skips.float().mean(-1)  # (N, L, 2)
        bar.update(2)
        # Input-independent baselines at the same lazy ratio, then DDIM at the same MACs.
        for name, mask in ((f"static-{n}@{ratio:.0%}", patterns.target_fraction(n, mc.depth, ratio)),
                           (f"L2C-{n}@{ratio:.0%}", static_from_decisions(skips, ratio))):
            ctrl.force(mask)
            imgs, secs, sk = _timed_generate(model, labels, seeds, n, cfg.cfg_scale)
            record(name, n, imgs, secs, 2 * lazy_macs(sk, mm, gates=False), sk)
            ctrl.force(None)
        remove_lazy(model)
        k = ddim_steps_for_macs(macs, 2 * mm.forward)
        imgs, secs, _ = _timed_generate(model, labels, seeds, k, cfg.cfg_scale)
        record(f"DDIM-{k}", k, imgs, secs, 2 * k * mm.forward, group=n)
        bar.update(2)
    bar.close()
    return _score(cfg, model, rows, refs, full_time, heat)


def _fit_or_load(model, cfg: CompareConfig, n: int, target: float, gate_file: str | None):
    from ..lazy import load_gates
    if gate_file and os.path.exists(gate_file):
        ctrl = load_gates(gate_file, arch=getattr(model, "arch_name", type(model).__name__), depth=model.config.depth,
                          hidden_size=model.config.hidden_size, num_steps=n)
        return apply_lazy(model, n, controller=ctrl)
    tcfg = GateTrainConfig(num_steps=n, iters=cfg.train_iters, batch_size=cfg.train_batch, target_lazy=target,
                           cfg_scale=cfg.cfg_scale, rollout_every=cfg.rollout_every, seed=cfg.seed,
                           out_dir=os.path.join(cfg.out_dir, f"gates-{n}-{target}"))
    ctrl, _ = train_gates(model, tcfg, progress=True)
    return ctrl


def _score(cfg, model, rows, refs, full_time, heat) -> dict:
    from .metrics import psnr_ssim
    embedded = cfg.model == EMBEDDED
    if embedded:
        from ..data import load_reference
        from .metrics import class_accuracy, effnet_features, fd_kid
        real, _ = load_reference(cfg.n_ref)
        real_f = effnet_features(real)
    base_macs = {r["steps"]: r["macs"] for r in rows if r["method"] == f"DDIM-{r['steps']}" and r["group"] == r["steps"]}
    table = []
    for r in rows:
        g = r["group"]
        ref = refs[g]
        mse = float((r["images"].clamp(-1, 1) - ref.clamp(-1, 1)).pow(2).mean())
        ssim = psnr_ssim(r["images"], ref)["ssim"] if mse > 0 else 1.0
        entry = {"method": r["method"], "steps": r["steps"], "group": g,
                 "lazy_attn": float(r["skips"][:, :, 0].float().mean()) if r["skips"] is not None else 0.0,
                 "lazy_ffn": float(r["skips"][:, :, 1].float().mean()) if r["skips"] is not None else 0.0,
                 "gmacs_per_image_cfg": r["macs"] / 1e9, "macs_vs_full": r["macs"] / base_macs[g],
                 "sec_per_image": r["seconds"] / cfg.n_samples, "speedup": full_time[g] / r["seconds"],
                 # PSNR of the pooled MSE: a per-image mean turns inf when any image matches exactly
                 "psnr_vs_full": 10 * math.log10(4.0 / mse) if mse > 0 else float("inf"),
                 "ssim_vs_full": ssim, "mse_vs_full": mse}
        if embedded:
            entry.update(fd_kid(real_f, r["images"]))
            entry["class_acc"] = class_accuracy(r["images"], torch.tensor([i % 10 for i in range(cfg.n_samples)]))
        table.append(entry)
        save_grid(r["images"][:20], os.path.join(cfg.out_dir, f"grid-{_slug(r['method'])}.png"))
    result = {"config": asdict(cfg), "rows": table, "macs_convention": "linear (thop-style), per image, CFG's 2 rows counted"}
    write_json(os.path.join(cfg.out_dir, "results.json"), result)
    from .plots import plot_heatmaps, plot_quality
    plot_heatmaps(heat, os.path.join(cfg.out_dir, "laziness-heatmap.png"))
    plot_quality(table, os.path.join(cfg.out_dir, "quality-vs-macs.png"), embedded)
    return result


def _slug(name: str) -> str:
    return name.replace("@", "-").replace("%", "pct")


def format_table(result: dict) -> str:
    rows = result["rows"]
    has_fd = "FD-EffNetLite0" in rows[0]
    head = ["method", "steps", "lazy attn/ffn", "GMACs/img", "MACs", "s/img", "speedup"]
    head += ["FD-EffNet", "KID", "class acc"] if has_fd else []
    head += ["PSNR vs full", "SSIM"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], str(r["steps"]), f"{r['lazy_attn']:.2f}/{r['lazy_ffn']:.2f}",
                 f"{r['gmacs_per_image_cfg']:.2f}", f"{r['macs_vs_full']:.2f}", f"{r['sec_per_image']:.4f}",
                 f"{r['speedup']:.2f}x"]
        if has_fd:
            cells += [f"{r['FD-EffNetLite0']:.2f}", f"{r['KID-EffNetLite0']:.4f}", f"{r['class_acc']:.3f}"]
        cells += [f"{r['psnr_vs_full']:.2f}", f"{r['ssim_vs_full']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
