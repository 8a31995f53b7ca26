"""Per-image PSNR against a full-compute reference from the same noise, and the bootstrap interval
of its mean. The one PSNR of lazydit: the placement search selects with it, compare and frontier
report it."""
from __future__ import annotations

import torch


def image_psnr(x: torch.Tensor, ref: torch.Tensor, cap: float = 100.0) -> torch.Tensor:
    """(B,) PSNR in dB of each image against its reference, both clamped to [-1, 1] and read on a
    [0, 1] scale. Capped at `cap` so that an exact match does not make the mean infinite."""
    # Halving the difference maps to [0, 1] with one rounding fewer than shifting each image first;
    # this is the order the placement search has always scored in, so its selections stay bit-identical.
    mse = ((x.float().clamp(-1, 1) - ref.float().clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1 / mse.clamp_min(1e-30))).clamp(max=cap)


def bootstrap_ci(values: torch.Tensor, resamples: int, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of the mean, resampling images with replacement."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(values), (resamples, len(values)), generator=g)
    means = values.double()[idx].mean(1).sort().values
    return float(means[int(0.025 * (resamples - 1))]), float(means[int(0.975 * (resamples - 1))])
