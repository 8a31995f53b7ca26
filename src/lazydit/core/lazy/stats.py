"""Skip decisions of one generation, as the controller recorded them."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import KINDS, kind_class


@dataclass
class LazyStats:
    """Skip decisions of one generation: skips[k, l, m, b] is True when row b skipped site m
    (the controller's kinds; DiT: 0 attn, 1 ffn) of layer l at step k. Rows are model-batch rows
    (2 per image under CFG), the rows of every CFG branch called separately side by side.
    `present` (L, M) marks the sites that exist: a FLUX single-stream block has no text
    feed-forward, and its cell counts in no ratio."""

    skips: torch.Tensor  # (N, L, M, B) bool
    steps_run: int
    kinds: tuple = KINDS
    present: torch.Tensor | None = None  # (L, M) bool; None: every cell exists

    def ratio(self, kind: str | None = None) -> float:
        """Skipped fraction of the calls of existing sites; kind "attn"/"ffn" also selects every
        site of that class (FLUX's text feed-forward counts as "ffn"), another kind only itself."""
        s = self.skips[: self.steps_run]
        cols = list(range(len(self.kinds)))
        if kind is not None:
            cols = [m for m, k in enumerate(self.kinds) if k == kind or (kind in KINDS and kind_class(k) == KINDS.index(kind))]
        if self.present is None or bool(self.present.all()):
            s = s[:, :, cols] if kind is not None else s
            return float(s.float().mean()) if s.numel() else 0.0
        keep = self.present[:, cols]  # (L, m)
        s = s[:, :, cols][:, keep]  # (steps, cells, B)
        return float(s.float().mean()) if s.numel() else 0.0

    def per_step_layer(self) -> torch.Tensor:
        """(N, L, M) fraction of rows that skipped: the paper's Fig. 4 heatmap data."""
        return self.skips.float().mean(-1)

    def summary(self) -> dict:
        return {"lazy_ratio": self.ratio(), "attn": self.ratio("attn"), "ffn": self.ratio("ffn"),
                "steps": self.steps_run}
