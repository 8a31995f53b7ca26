"""The placement search (`--mode placement`, the default with `--target-lazy`): a static skip
schedule, where to skip and how to forecast what is skipped, fitted to the model on calibration
images.

1. Placement: candidate skip schedules compute a warm-up of W steps in full, then spread the
   budget's whole-step skips evenly over the rest. Each candidate is scored by the final-sample
   PSNR against full compute on selection images, after step 2, and the best W is kept (all
   candidates are screened on a quarter of the images first; the best three get the full set).
2. Operator: with a "fit" operator, every skipped (step, layer, module) gets forecast weights
   fitted by least squares to its true outputs on fitting images, along the skip schedule's own
   trajectory (`LazyController.fit_reuse`). Without an explicit --reuse, fit2 places the skips
   and fit3 is then tried on the chosen placement; the better on selection images is kept.
3. Input correction: a low-rank map from each skipped module's input surprise to an output
   correction (`lazydit.core.lazy.correction`), fitted on the fitting images per step (as memory
   allows) and shared by all steps, for each rank in `correction_ranks`; the best on the
   selection images is kept, and only if it raises the selection PSNR.

Fitting and selection images use their own seed ranges (30,000 and 40,000 plus 1,000 x seed),
disjoint from the harness's evaluation seeds (`eval.seeds`).
"""
from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from ..core.lazy import patterns
from ..core.lazy.correction import CorrectionFit
from ..core.lazy.reuse import is_fitted
from ..metrics import image_psnr
from ..pipeline import generate

# Ridge of the input correction, relative to each Gram matrix's mean diagonal. Per-step maps see
# a tenth of the data of a shared one; a strong prior towards no correction kept them from
# fitting noise (20 steps, 50%, 64 held-out images: ridge 3 beat 0.3 and 1; docs/method.md).
RIDGE = 3.0
CHUNK = 16  # images per generation while collecting the correction's statistics


def _images(model, seeds, steps, cfg_scale):
    labels = [j % model.config.num_classes for j in range(len(seeds))]
    return generate(model, labels, seeds, steps=steps, cfg_scale=cfg_scale).images


def _score(sample, ctrl, mask, op, fit_seeds, sel_seeds, ref, cfg) -> tuple[float, torch.Tensor | None]:
    """Selection PSNR of `mask` with operator `op`, its weights fitted on `fit_seeds` first."""
    ctrl.set_config(reuse=op)
    ctrl.force(mask)
    ctrl.set_fitted(None)
    if is_fitted(op):
        with ctrl.fit_reuse():
            sample(fit_seeds)
    return float(image_psnr(sample(sel_seeds), ref).mean()), ctrl.fitted


@torch.no_grad()
def search_placements(model, ctrl, cfg, progress: bool = True, sample=None) -> dict:
    """Leave `ctrl` forcing the best skip schedule for cfg.target_lazy, with fitted weights.

    `sample(seeds)`: final images in [-1, 1] of one generation per seed; by default lazydit's own
    sampler on `model` (labels j % classes, cfg.cfg_scale). A diffusers pipeline gives its own call
    (`lazydit.train.diffusers_gates.fit_pipeline`), so the search runs the pipeline's loop and scheduler."""
    if sample is None:
        def sample(seeds):
            return _images(model, seeds, cfg.num_steps, cfg.cfg_scale)
    n, depth, t0 = cfg.num_steps, ctrl.depth, time.perf_counter()
    check_reachable(n, cfg.target_lazy)
    half = max(1, cfg.calib_images // 2)
    fit_seeds = [30_000 + 1000 * cfg.seed + j for j in range(half)]
    sel_seeds = [40_000 + 1000 * cfg.seed + j for j in range(half)]
    ctrl.set_mode("full")
    ref = sample(sel_seeds)
    ctrl.set_mode("hard")
    op = ctrl.config.reuse
    cands = candidates(n, depth, cfg.target_lazy, cfg.schedule_candidates)
    # Screen every placement on a quarter of the images, then score the best few on all of them:
    # the ranking of placements is coarse, the choice among close ones is not.
    screen, shortlist = max(2, half // 4), 3
    screened = {}
    if len(cands) > shortlist and screen < half:
        for name, mask in tqdm(cands, desc="placements (screen)", disable=not progress):
            screened[name] = _score(sample, ctrl, mask, op, fit_seeds[:screen], sel_seeds[:screen],
                                    ref[:screen], cfg)[0]
        keep = sorted(screened, key=screened.get, reverse=True)[:shortlist]
        cands = [(name, mask) for name, mask in cands if name in keep]
    scores, best = {}, None
    for name, mask in tqdm(cands, desc="placements", disable=not progress):
        scores[name], fitted = _score(sample, ctrl, mask, op, fit_seeds, sel_seeds, ref, cfg)
        if best is None or scores[name] > scores[best[0]]:
            best = (name, mask, fitted)
    name, mask, fitted = best
    best_op, ops = op, {op: scores[name]}
    if cfg.reuse is None:
        # Higher orders help some placements and hurt others: try them on the chosen placement.
        for other in ("fit3",):
            ops[other], w = _score(sample, ctrl, mask, other, fit_seeds, sel_seeds, ref, cfg)
            if ops[other] > ops[best_op]:
                best_op, fitted = other, w
    ctrl.set_config(reuse=best_op)
    ctrl.force(mask)
    ctrl.set_fitted(fitted)
    corrections = {}
    if cfg.correction_ranks and is_fitted(best_op):
        corrections = _fit_correction(sample, ctrl, cfg, sel_seeds, ref, ops[best_op])
    # The keys are the gate file's "schedule_search" metadata: kept as files before carry them.
    return {"schedule": name, "reuse": best_op, "screen_psnr": screened, "selection_psnr": scores,
            "operator_psnr": ops, "correction_psnr": corrections,
            "correction_rank": ctrl.correction.rank if ctrl.correction else 0,
            "correction_groups": ctrl.correction.groups if ctrl.correction else 0,
            "lazy_ratio": float(mask.float().mean()), "search_seconds": time.perf_counter() - t0}


def _correction_stats(sample, ctrl, cfg, seeds, groups: int) -> CorrectionFit:
    """Normal equations of the input correction over `seeds`, along the trajectory that the
    controller's current correction (if any) produces; the forecast weights stay as scored."""
    fitted = ctrl.fitted.clone()
    stats = CorrectionFit(ctrl.depth, ctrl.dim, cfg.num_steps, groups, ctrl.num_kinds)
    with ctrl.fit_reuse(stats):
        for i in range(0, len(seeds), CHUNK):  # the histories of a chunk, not of all images, in memory
            sample(seeds[i:i + CHUNK])
    ctrl.set_fitted(fitted)  # the fitting pass refits the weights on the way; keep the scored ones
    return stats


def _fit_correction(sample, ctrl, cfg, sel_seeds, ref, plain: float) -> dict:
    """Fit the input correction per step where memory allows and shared by all steps, keep the
    (groups, rank) that scores best on the selection images, then refit it along the trajectory
    it produces, as long as that helps. Returns {"G<groups>r<rank>[+<pass>]": selection PSNR}."""
    n = cfg.num_steps
    seeds = [30_000 + 1000 * cfg.seed + j for j in range(cfg.correction_images)]
    fine = CorrectionFit.max_groups(ctrl.depth, ctrl.dim, n, kinds=ctrl.num_kinds)
    ctrl.set_correction(None)
    stats = _correction_stats(sample, ctrl, cfg, seeds, fine)
    scores, best = {"none": plain}, (plain, None, "none")
    for groups in sorted({fine, 1}, reverse=True):
        grouped = stats if groups == fine else stats.coarsened(groups)
        for rank in cfg.correction_ranks:
            ctrl.set_correction(grouped.solve(rank, RIDGE))
            key = f"G{groups}r{rank}"
            scores[key] = float(image_psnr(sample(sel_seeds), ref).mean())
            if scores[key] > best[0]:
                best = (scores[key], ctrl.correction, key)
    # The statistics came from the uncorrected trajectory; the corrected one is what sampling
    # sees, so refit along it. Statistics accumulate over passes: a fit on the latest trajectory
    # alone overshoots and the passes oscillate (20 steps, 50%: 46.5, 47.1, 46.5 dB on held-out
    # images; accumulated: 46.5, 47.1, 47.1).
    if best[1] is not None:
        stats = stats.coarsened(best[1].groups) if best[1].groups != fine else stats
    for extra in range(1, cfg.correction_passes):
        if best[1] is None:
            break
        ctrl.set_correction(best[1])
        stats.absorb(_correction_stats(sample, ctrl, cfg, seeds, best[1].groups))
        ctrl.set_correction(stats.solve(best[1].rank, RIDGE))
        key = f"{best[2].split('+')[0]}+{extra}"
        scores[key] = float(image_psnr(sample(sel_seeds), ref).mean())
        if scores[key] <= best[0]:
            break
        best = (scores[key], ctrl.correction, key)
    ctrl.set_correction(best[1])
    return scores


def check_reachable(n: int, ratio: float) -> None:
    """Refuse a lazy ratio that no skip schedule of n steps lands within 0.03 of."""
    if not candidates(n, 1, ratio, 1):
        raise ValueError(f"no skip schedule of {n} steps lands within 0.03 of lazy ratio {ratio} (whole steps "
                         f"come in 1/{n} = {1 / n:.3f}); use more steps or a ratio such as {round(ratio * n) / n:.3f}")


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
