"""Baseline schedules to compare lazy sampling with, as pure functions returning masks or step counts.

Masks follow `lazydit.core.lazy.patterns`: shape (N, L, 2) bool, True = skip (reuse the cache), module
0 = attention, 1 = feed-forward, and step 0 never skips. Apply one with `controller.force(mask)`.
"""
from __future__ import annotations

import torch

from ..core.lazy import patterns


def fora_mask(num_steps: int, depth: int, interval: int) -> torch.Tensor:
    """FORA-style static caching: recompute every module every `interval`-th step, reuse in between."""
    return patterns.every_nth(num_steps, depth, interval)


def static_from_decisions(skips: torch.Tensor, target_ratio: float | None = None) -> torch.Tensor:
    """A Learning-to-Cache-style input-independent mask from learned per-sample decisions.

    skips: (N, L, 2, B) bool from `LazyStats.skips`, pooled over as many generations as wanted
    (concatenate on B). Without a target, a cell skips where at least half the rows skipped it.
    With `target_ratio`, the round(target * N * L * 2) cells of highest mean skip rate skip instead
    (ties: earlier step, then lower layer, then attention first), so the static schedule spends
    exactly the MACs of that lazy ratio. Step 0 never skips either way.
    """
    if skips.dim() != 4 or skips.shape[2] != 2:
        raise ValueError(f"skips must have shape (N, L, 2, B), got {tuple(skips.shape)}")
    if skips.shape[3] == 0:
        raise ValueError("skips holds no rows to average over")
    rate = skips.float().mean(-1)  # (N, L, 2)
    rate[0] = -1.0                 # nothing is cached at step 0
    if target_ratio is None:
        return rate >= 0.5
    n, l, _ = rate.shape
    if not 0.0 <= target_ratio <= (n - 1) / n:
        raise ValueError(f"target ratio must be in [0, {(n - 1) / n:.3f}] for {n} steps, got {target_ratio}")
    k = round(target_ratio * n * l * 2)
    # A stable sort on the flattened (step, layer, module) order breaks ties deterministically.
    order = torch.sort(rate.flatten(), descending=True, stable=True).indices[:k]
    mask = torch.zeros(n * l * 2, dtype=torch.bool)
    mask[order] = True
    return mask.view(n, l, 2)
