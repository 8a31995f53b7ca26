"""Input correction of a fitted forecast (schedule mode).

A skipped module still receives its input Z_k, and that input is fresh: the embedders and every
module before it ran on x_k at this step. A forecast from earlier outputs ignores it. Where Z_k
departs from what its own history predicted, the output departs too, so a low-rank linear map
fitted on calibration images turns the input's surprise into an output correction:

    out_k = forecast_k + (Z_k - Zhat_k) U V,   Zhat_k = order-1 forecast of Z from computed steps

One map per (layer, module), shared by all steps: U (D, r), V (r, D), costing 2 r D MACs per
token of a skipped call, which `lazydit.eval.macs.lazy_macs` counts. It applies where a whole
batch skips together, as under a static schedule; rows that skip alone get the plain forecast.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class InputCorrection:
    u: torch.Tensor  # (L, 2, D, r)
    v: torch.Tensor  # (L, 2, r, D)

    def __post_init__(self):
        l, m, d, r = self.u.shape
        if m != 2 or tuple(self.v.shape) != (l, 2, r, d) or r < 1:
            raise ValueError(f"input correction needs u (L, 2, D, r) and v (L, 2, r, D), got "
                             f"{tuple(self.u.shape)} and {tuple(self.v.shape)}")
        if not bool(torch.isfinite(self.u).all() and torch.isfinite(self.v).all()):
            raise ValueError("input correction has NaN or infinite entries")

    @property
    def rank(self) -> int:
        return self.u.shape[-1]

    def apply(self, layer: int, m: int, dz: torch.Tensor) -> torch.Tensor:
        u, v = self.u[layer, m].to(dz), self.v[layer, m].to(dz)
        return (dz @ u) @ v


class CorrectionFit:
    """Normal equations of dZ -> residual, per (layer, module), summed over the skipped cells of
    fitting images; `solve` gives the ridge solution truncated to rank r."""

    def __init__(self, depth: int, dim: int):
        self.gram = torch.zeros(depth, 2, dim, dim, dtype=torch.float64)
        self.cross = torch.zeros(depth, 2, dim, dim, dtype=torch.float64)

    def add(self, layer: int, m: int, dz: torch.Tensor, residual: torch.Tensor):
        a = dz.reshape(-1, dz.shape[-1]).double()
        b = residual.reshape(-1, residual.shape[-1]).double()
        self.gram[layer, m] += (a.T @ a).cpu()
        self.cross[layer, m] += (a.T @ b).cpu()

    def solve(self, rank: int, ridge: float = 1.0) -> InputCorrection:
        """ridge is relative to the mean diagonal of each Gram matrix: a strong prior towards no
        correction, since the residuals are small and the inputs highly correlated."""
        depth, _, d, _ = self.gram.shape
        rank = min(rank, d)
        u = torch.zeros(depth, 2, d, rank)
        v = torch.zeros(depth, 2, rank, d)
        for layer in range(depth):
            for m in range(2):
                g = self.gram[layer, m]
                if not bool(g.diagonal().gt(0).any()):
                    continue  # never skipped: no correction
                lam = ridge * g.diagonal().mean()
                full = torch.linalg.solve(g + lam * torch.eye(d, dtype=g.dtype), self.cross[layer, m])
                left, s, right = torch.linalg.svd(full)
                u[layer, m] = (left[:, :rank] * s[:rank]).float()
                v[layer, m] = right[:rank].float()
        return InputCorrection(u, v)
