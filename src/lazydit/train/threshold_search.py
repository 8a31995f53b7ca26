"""One threshold search for every policy that must skip a given fraction of calls: the gates'
shared threshold and the training-free rivals' thresholds. Each try samples images, so the
search is judged by how few tries it needs."""
from __future__ import annotations

from typing import Callable


def search_increasing(measure: Callable[[float], float], target: float, lo: float, hi: float, start: float,
                      step: float, rounds: int, tol: float) -> tuple[float, float]:
    """x in [lo, hi] where `measure(x)`, which grows with x, comes within `tol` of `target`, in
    at most `rounds` calls. Returns (x, measure(x)) of the closest call.

    Walks from `start` by `step`, doubling it, until two measured points bracket the target;
    then false position inside the bracket. The skip ratio is close to linear over a narrow
    bracket, so interpolation needs fewer tries than halving; each new point stays within the
    bracket's inner three quarters, so a flat stretch of the curve still shrinks it.
    """
    below = above = None  # (x, value) of the latest tries under and over the target
    x, best = start, None
    for _ in range(rounds):
        got = measure(x)
        if best is None or abs(got - target) < abs(best[1] - target):
            best = (x, got)
        if abs(got - target) < tol:
            break
        if got < target:
            below = (x, got)
        else:
            above = (x, got)
        if below and above:
            (a, fa), (b, fb) = below, above
            inner = (b - a) / 8
            nxt = min(max(a + (target - fa) * (b - a) / max(fb - fa, 1e-12), a + inner), b - inner)
        else:
            nxt = min(max(x + (step if got < target else -step), lo), hi)
            step *= 2
        if nxt == x:  # at the end of the range and still short: nothing closer to try
            break
        x = nxt
    return best
