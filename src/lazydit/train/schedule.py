"""Learned static schedules (`--mode schedule`, the default with `--target-lazy`): where to
skip, and how to forecast what is skipped, fitted to the model on calibration images.

1. Placement: candidate schedules compute a warm-up of W steps in full, then spread the
   budget's whole-step skips evenly over the rest. Each candidate is scored by the final-sample
   PSNR against full compute on selection images, after step 2, and the best W is kept.
2. Operator: with a "fit" operator, every skipped (step, layer, module) gets forecast weights
   fitted by least squares to its true outputs on fitting images, along the schedule's own
   trajectory (`LazyController.fitting`). Without an explicit --reuse, fit2 places the skips
   and fit3 is then tried on the chosen placement; the better on selection images is kept.

Fitting and selection images use their own seed ranges (30,000 and 40,000 plus 1,000 x seed),
disjoint from the harness's evaluation seeds (1,000,000 and up).
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from ..lazy import patterns
from ..pipeline import generate


def _images(model, seeds, steps, cfg_scale):
    labels = [j % model.config.num_classes for j in range(len(seeds))]
    return generate(model, labels, seeds, steps=steps, cfg_scale=cfg_scale).images


def _psnr(x, ref) -> float:
    mse = ((x.clamp(-1, 1) - ref.clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse.clamp_min(1e-30))).clamp(max=100).mean())


@torch.no_grad()
def search_schedule(model, ctrl, cfg, progress: bool = True) -> dict:
    """Leave `ctrl` forcing the best schedule for cfg.target_lazy, with fitted weights."""
    n, depth, t0 = cfg.num_steps, ctrl.depth, time.perf_counter()
    half = max(1, cfg.calib_images // 2)
    fit_seeds = [30_000 + 1000 * cfg.seed + j for j in range(half)]
    sel_seeds = [40_000 + 1000 * cfg.seed + j for j in range(half)]
    ctrl.mode = "full"
    ref = _images(model, sel_seeds, n, cfg.cfg_scale)
    ctrl.mode = "hard"
    scores, best = {}, None
    for name, mask in tqdm(candidates(n, depth, cfg.target_lazy, cfg.schedule_candidates), desc="schedule",
                           disable=not progress):
        ctrl.force(mask)
        ctrl.fitted = None
        ctrl.fitting = True
        _images(model, fit_seeds, n, cfg.cfg_scale)
        ctrl.fitting = False
        scores[name] = _psnr(_images(model, sel_seeds, n, cfg.cfg_scale), ref)
        if best is None or scores[name] > scores[best[0]]:
            best = (name, mask, ctrl.fitted)
    name, mask, fitted = best
    best_op, ops = ctrl.config.reuse, {}
    if cfg.reuse is None:
        # Higher orders help some placements and hurt others: try them on the chosen placement.
        ctrl.force(mask)
        ops[best_op] = scores[name]
        for op in ("fit3",):
            ctrl.config = replace(ctrl.config, reuse=op)
            ctrl.fitted = None
            ctrl.fitting = True
            _images(model, fit_seeds, n, cfg.cfg_scale)
            ctrl.fitting = False
            ops[op] = _psnr(_images(model, sel_seeds, n, cfg.cfg_scale), ref)
            if ops[op] > ops[best_op]:
                best_op, fitted = op, ctrl.fitted
    ctrl.config = replace(ctrl.config, reuse=best_op)
    ctrl.force(mask)
    ctrl.fitted = fitted
    return {"schedule": name, "reuse": best_op, "selection_psnr": scores, "operator_psnr": ops,
            "lazy_ratio": float(mask.float().mean()), "search_seconds": time.perf_counter() - t0}


def candidates(n: int, depth: int, ratio: float, count: int) -> list:
    """(name, mask) pairs within 0.03 of `ratio`: warm-up W then evenly spread skips, for up to
    `count` values of W from 1 (no warm-up) up, and warm-up then every-n for n = 2, 3, 4."""
    spread = [w for w in range(1, n) if patterns.warmup_spread(n, depth, ratio, w) is not None]
    if len(spread) > count:
        idx = torch.linspace(0, len(spread) - 1, count).round().long().unique()
        spread = [spread[i] for i in idx]
    out = [(f"warmup{w}-spread", patterns.warmup_spread(n, depth, ratio, w)) for w in spread]
    for every in (2, 3, 4):
        w = max(0, round(n - ratio * n * every / (every - 1)))
        out.append((f"warmup{w}-every{every}", patterns.warmup_every(n, depth, w, every)))
    unique = []
    for name, mask in out:
        if abs(float(mask.float().mean()) - ratio) <= 0.03 and not any(torch.equal(mask, m) for _, m in unique):
            unique.append((name, mask))
    return unique
