"""One threshold search for every policy that must skip a given fraction of calls: the gates'
shared threshold and the training-free rivals' thresholds. Each try samples images, so the
search is judged by how few tries it needs."""
from __future__ import annotations

from typing import Callable


def search_increasing(measure: Callable[[float], float], target: float, lo: float, hi: float, start: float,
                      step: float, rounds: int, tol: float, slope: float | None = None) -> tuple[float, float]:
    """x in [lo, hi] where `measure(x)`, which grows with x, comes within `tol` of `target`, in
    at most `rounds` calls. Returns (x, measure(x)) of the closest call.

    Walks from `start` by `step`, doubling it, until two measured points bracket the target;
    then false position inside the bracket. The skip ratio is close to linear over a narrow
    bracket, so interpolation needs fewer tries than halving; each new point stays within the
    bracket's inner three quarters, so a flat stretch of the curve still shrinks it. `slope`: an
    estimate of d measure / dx near the answer (e.g. from a cheaper search); the first move is
    then a Newton step instead of a walk.
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
        elif slope is not None and slope > 0:
            nxt, slope = min(max(x + (target - got) / slope, lo), hi), None
        else:
            nxt = min(max(x + (step if got < target else -step), lo), hi)
            step *= 2
        if nxt == x:  # at the end of the range and still short: nothing closer to try
            break
        x = nxt
    return best
