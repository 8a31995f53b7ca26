"""Input-independent skip masks (True = skip), shape (N, L, 2): for tests, benchmarks and the
static baselines. Step 0 never skips, since nothing is cached yet."""
from __future__ import annotations

import torch


def every_nth(num_steps: int, depth: int, n: int) -> torch.Tensor:
    """FORA-style: compute every n-th step, reuse the cache in between (n=2: alternate steps)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    skip = torch.tensor([k % n != 0 for k in range(num_steps)])
    return skip[:, None, None].expand(num_steps, depth, 2).clone()


def target_fraction(num_steps: int, depth: int, fraction: float) -> torch.Tensor:
    """Skip whole steps, spread evenly, so that `fraction` of all module calls skip.

    Bresenham spacing over steps 1..N-1 keeps runs of skips as short as the fraction allows.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"lazy fraction must be in [0, 1), got {fraction}")
    n_skip = round(fraction * num_steps)
    if n_skip > num_steps - 1:
        raise ValueError(f"cannot skip {n_skip} of {num_steps} steps: step 0 always computes")
    skip = torch.zeros(num_steps, dtype=torch.bool)
    for j in range(n_skip):
        # the j-th skip sits at the centre of the j-th of n_skip equal slices of steps 1..N-1
        skip[1 + int((j + 0.5) * (num_steps - 1) / n_skip)] = True
    return skip[:, None, None].expand(num_steps, depth, 2).clone()


def warmup_every(num_steps: int, depth: int, warmup: int, n: int) -> torch.Tensor:
    """TaylorSeerCache's schedule: compute the first `warmup` steps, then every n-th step
    (warm-up 0 is plain every-n: step 0 computes either way)."""
    if n < 1 or not 0 <= warmup <= num_steps:
        raise ValueError(f"need n >= 1 and a warm-up in [0, {num_steps}], got {n}, {warmup}")
    skip = torch.tensor([k >= warmup and (k - warmup) % n != 0 for k in range(num_steps)])
    return skip[:, None, None].expand(num_steps, depth, 2).clone()


def warmup_spread(num_steps: int, depth: int, fraction: float, warmup: int) -> torch.Tensor | None:
    """Compute the first `warmup` steps, then spread round(fraction * N) whole-step skips evenly
    over the rest (TaylorSeer's warm-up, generalised to any density). None when the skips do not
    fit: every skip needs a computed step somewhere after the warm-up."""
    if not 0.0 <= fraction < 1.0 or not 1 <= warmup < num_steps:
        raise ValueError(f"need a fraction in [0, 1) and a warm-up in [1, {num_steps - 1}], got {fraction}, {warmup}")
    n_skip, span = round(fraction * num_steps), num_steps - warmup
    if n_skip > span - 1:
        return None
    skip = torch.zeros(num_steps, dtype=torch.bool)
    for j in range(n_skip):
        skip[warmup + int((j + 0.5) * span / n_skip)] = True
    return skip[:, None, None].expand(num_steps, depth, 2).clone()


def from_name(spec: str, num_steps: int, depth: int) -> torch.Tensor:
    """Parse a CLI pattern: 'every:N' or 'fraction:F' (e.g. 'fraction:0.5')."""
    kind, _, val = spec.partition(":")
    try:
        if kind == "every":
            return every_nth(num_steps, depth, int(val))
        if kind == "fraction":
            return target_fraction(num_steps, depth, float(val))
    except ValueError as e:
        raise ValueError(f"bad skip pattern {spec!r}: {e}") from None
    raise ValueError(f"bad skip pattern {spec!r}; use 'every:N' or 'fraction:F'")
