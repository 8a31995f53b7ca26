"""Input correction of a fitted forecast (placement mode).

A skipped module still receives its input Z_k, and that input is fresh: the embedders and every
module before it ran on x_k at this step. A forecast from earlier outputs ignores it. Where Z_k
departs from what its own history predicted, the output departs too, so a low-rank linear map
fitted on calibration images turns the input's surprise into an output correction:

    out_k = forecast_k + (Z_k - Zhat_k) U V,   Zhat_k = order-1 forecast of Z from computed steps

One map per (step group, layer, module): U (D, r), V (r, D), costing 2 r D MACs per token of a
skipped call, which `lazydit.metrics.macs.lazy_macs` counts. Step groups are G contiguous runs of
the N steps (step k is in group k * G // N): G = 1 shares one map across all steps, G = N fits
each step its own, since how the module's output answers its input changes with the noise
level. It applies where a whole batch skips together, as under a static schedule; rows that
skip alone get the plain forecast.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class InputCorrection:
    u: torch.Tensor  # (G, L, 2, D, r); (L, 2, D, r) is read as G = 1
    v: torch.Tensor  # (G, L, 2, r, D)
    num_steps: int = 1  # N: step k uses group k * G // N
    _cast: dict = field(default_factory=dict, repr=False, compare=False)  # (U, V) per cell, dtype, device

    def __post_init__(self):
        if self.u.dim() == 4 and self.v.dim() == 4:
            self.u, self.v = self.u[None], self.v[None]
        if self.u.dim() != 5:
            raise ValueError(f"input correction needs u (G, L, 2, D, r) and v (G, L, 2, r, D), got "
                             f"{tuple(self.u.shape)} and {tuple(self.v.shape)}")
        g, l, m, d, r = self.u.shape  # m: the controller's site kinds (2 for a DiT)
        if tuple(self.v.shape) != (g, l, m, r, d) or r < 1:
            raise ValueError(f"input correction needs u (G, L, 2, D, r) and v (G, L, 2, r, D), got "
                             f"{tuple(self.u.shape)} and {tuple(self.v.shape)}")
        if not 1 <= g <= self.num_steps and g != 1:
            raise ValueError(f"input correction has {g} step groups for {self.num_steps} steps")
        if not bool(torch.isfinite(self.u).all() and torch.isfinite(self.v).all()):
            raise ValueError("input correction has NaN or infinite entries")

    @property
    def rank(self) -> int:
        return self.u.shape[-1]

    @property
    def groups(self) -> int:
        return self.u.shape[0]

    def apply(self, step: int, layer: int, m: int, dz: torch.Tensor) -> torch.Tensor:
        u, v = self._map(step, layer, m, dz)
        return (dz @ u) @ v

    def add_to(self, out: torch.Tensor, dz: torch.Tensor, step: int, layer: int, m: int) -> torch.Tensor:
        """out + (dz U) V as a new tensor, the second product and the sum in one call."""
        u, v = self._map(step, layer, m, dz)
        d = out.shape[-1]
        return torch.addmm(out.reshape(-1, d), dz.reshape(-1, dz.shape[-1]) @ u, v.to(out.dtype)).view(out.shape)

    def _map(self, step: int, layer: int, m: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, V) of the cell in `like`'s dtype and device, cast once per cell and not per call."""
        g = step * self.groups // self.num_steps if self.groups > 1 else 0
        key = (g, layer, m, like.dtype, like.device)
        if key not in self._cast:
            self._cast[key] = (self.u[g, layer, m].to(like), self.v[g, layer, m].to(like))
        return self._cast[key]


class CorrectionFit:
    """Normal equations of dZ -> residual, per (step group, layer, module), summed over the
    skipped cells of fitting images; `solve` gives the ridge solution truncated to rank r, and
    `coarsened` the statistics of fewer, wider groups."""

    def __init__(self, depth: int, dim: int, num_steps: int = 1, groups: int = 1, kinds: int = 2):
        if not 1 <= groups <= num_steps:
            raise ValueError(f"{groups} step groups for {num_steps} steps")
        self.num_steps = num_steps
        self.gram = torch.zeros(groups, depth, kinds, dim, dim, dtype=torch.float64)
        self.cross = torch.zeros(groups, depth, kinds, dim, dim, dtype=torch.float64)

    @staticmethod
    def max_groups(depth: int, dim: int, num_steps: int, budget_bytes: float = 2 ** 31, kinds: int = 2) -> int:
        """The most step groups whose statistics fit the memory budget (two float64 D x D
        matrices per group, layer and site kind): every step on small models, one group on large."""
        per_group = 2 * depth * kinds * dim * dim * 8
        return max(1, min(num_steps, int(budget_bytes // per_group)))

    @property
    def groups(self) -> int:
        return self.gram.shape[0]

    def add(self, step: int, layer: int, m: int, dz: torch.Tensor, residual: torch.Tensor):
        g = step * self.groups // self.num_steps
        a = dz.reshape(-1, dz.shape[-1]).double()
        b = residual.reshape(-1, residual.shape[-1]).double()
        self.gram[g, layer, m] += (a.T @ a).cpu()
        self.cross[g, layer, m] += (a.T @ b).cpu()

    def absorb(self, other: "CorrectionFit"):
        """Add another collection's statistics (the same groups) to these."""
        if other.gram.shape != self.gram.shape:
            raise ValueError(f"correction statistics of shape {tuple(other.gram.shape)} cannot join "
                             f"{tuple(self.gram.shape)}")
        self.gram += other.gram
        self.cross += other.cross

    def coarsened(self, groups: int) -> "CorrectionFit":
        """The same statistics summed into `groups` contiguous groups of steps (each fine group
        goes whole to the group of its first step: exact from per-step statistics)."""
        out = CorrectionFit(self.gram.shape[1], self.gram.shape[3], self.num_steps, groups, self.gram.shape[2])
        for fine in range(self.groups):
            step = -(-fine * self.num_steps // self.groups)  # the first step of the fine group
            out.gram[step * groups // self.num_steps] += self.gram[fine]
            out.cross[step * groups // self.num_steps] += self.cross[fine]
        return out

    def solve(self, rank: int, ridge: float = 1.0) -> InputCorrection:
        """ridge is relative to the mean diagonal of each Gram matrix: a strong prior towards no
        correction, since the residuals are small and the inputs highly correlated."""
        groups, depth, kinds, d, _ = self.gram.shape
        rank = min(rank, d)
        u = torch.zeros(groups, depth, kinds, d, rank)
        v = torch.zeros(groups, depth, kinds, rank, d)
        for g in range(groups):
            for layer in range(depth):
                for m in range(kinds):
                    gram = self.gram[g, layer, m]
                    if not bool(gram.diagonal().gt(0).any()):
                        continue  # never skipped: no correction
                    lam = ridge * gram.diagonal().mean()
                    full = torch.linalg.solve(gram + lam * torch.eye(d, dtype=gram.dtype), self.cross[g, layer, m])
                    left, s, right = torch.linalg.svd(full)
                    u[g, layer, m] = (left[:, :rank] * s[:rank]).float()
                    v[g, layer, m] = right[:rank].float()
        return InputCorrection(u, v, self.num_steps)
