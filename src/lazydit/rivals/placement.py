"""Placement search for a rival, with the same effort as the default policy's placement search
(`lazydit.train.placement_search.search_placements`): every candidate is screened on a quarter of the
selection images, the best few are scored on all of them, the best score wins.

A rival whose warm-up and interval (TaylorSeer, TaylorSeerCache) or spread (FORA) is left at one
hand-picked value would be compared against a searched default: the gain would partly be the search.
"""
from __future__ import annotations

from typing import Callable, Sequence

from tqdm import tqdm

SHORTLIST = 3  # as the default's search


def search_placement(candidates: Sequence[tuple[str, object]], score: Callable[[object, int], float],
                     images: int, desc: str = "placement", progress: bool = False) -> tuple[str, object, dict]:
    """(name, candidate, {name: selection score}) of the best candidate.

    score(candidate, k): mean quality (higher is better) on the first k selection images.
    images: how many selection images the default's search scored on."""
    if not candidates:
        raise ValueError("no placement to search")
    screen = max(2, images // 4)
    screened = {}
    cands = list(candidates)
    if len(cands) > SHORTLIST and screen < images:
        for name, cand in tqdm(cands, desc=f"{desc} (screen)", disable=not progress, leave=False):
            screened[name] = score(cand, screen)
        keep = sorted(screened, key=screened.get, reverse=True)[:SHORTLIST]
        cands = [(name, cand) for name, cand in cands if name in keep]
    scores = {}
    for name, cand in tqdm(cands, desc=desc, disable=not progress, leave=False):
        scores[name] = score(cand, images)
    best = max(scores, key=scores.get)
    return best, dict(cands)[best], {"screen": screened, "selection": scores}


def spread_evenly(items: list, count: int) -> list:
    """At most `count` of `items`, evenly spaced, first and last kept."""
    if count <= 0 or len(items) <= count:
        return list(items)
    if count == 1:
        return [items[0]]
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def whole_step_placements(num_steps: int, depth: int, budget: float, flops_of, count: int) -> list:
    """FORA's and TaylorSeer's placements at a FLOPs budget: [(name, (N, depth, 2) mask)].

    The number of skipped steps is the largest whose measured FLOPs (`flops_of(mask)`, relative to
    full compute) are still at least `budget`, so the rival never gets less compute than the policy
    it is matched to. The placements are the even spread and every warm-up (compute the first w
    steps, spread the same skips over the rest), at most `count` of them."""
    from ..core.lazy import patterns
    # Start near the answer (a step's share of the FLOPs is about 1/N): each try runs the pipeline.
    skips = most_skips(num_steps, budget, lambda k: flops_of(patterns.target_fraction(num_steps, depth, k / num_steps)),
                       start=round((1 - budget) * num_steps))
    if skips == 0:
        return [("none", patterns.target_fraction(num_steps, depth, 0.0))]
    return spread_placements(num_steps, depth, skips, count)


def most_skips(num_steps: int, budget: float, cost_of, start: int | None = None) -> int:
    """The most skipped whole steps whose cost (`cost_of(skips)`, relative to full compute, falling
    as skips grow) is still at least `budget`: a rival matched this way never gets less compute
    than the default. The walk starts at `start` (default: N - 1) and goes up as well as down, since
    a skipped step saves less than 1/N where parts that never skip (embedders) are heavy."""
    def fits(k: int) -> bool:
        return cost_of(k) >= budget - 1e-9
    skips = num_steps - 1 if start is None else max(0, min(num_steps - 1, start))  # step 0 always computes
    while skips < num_steps - 1 and fits(skips + 1):
        skips += 1
    while skips > 0 and not fits(skips):
        skips -= 1
    return skips


def spread_placements(num_steps: int, depth: int, skips: int, count: int) -> list:
    """`skips` whole steps evenly spread, and after every warm-up w (the first w steps computed),
    as [(name, (N, depth, 2) mask)], at most `count` of them."""
    from ..core.lazy import patterns
    fraction = skips / num_steps
    out = [(f"spread-{skips}", patterns.target_fraction(num_steps, depth, fraction))]
    for w in range(1, num_steps):
        mask = patterns.warmup_spread(num_steps, depth, fraction, w)
        if mask is None:
            break
        if not any(bool((mask == m).all()) for _, m in out):
            out.append((f"warmup{w}-spread-{skips}", mask))
    return spread_evenly(out, count)


def warmup_interval_settings(num_steps: int, skips: int, skipped_by, intervals=(2, 3, 4),
                             min_warmup: int = 0) -> list:
    """[(warm-up, interval)] of a warm-up-then-every-n schedule (TaylorSeer's form) that skip
    exactly `skips` steps by `skipped_by(warmup, interval)`: per interval, every warm-up that
    does (a few, as the skip count grows by at most one per step of warm-up)."""
    return [(w, i) for i in intervals for w in range(min_warmup, num_steps + 1) if skipped_by(w, i) == skips]
