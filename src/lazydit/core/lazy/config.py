"""What a lazy controller is configured with: its sites' kinds and the `LazyConfig`.

The config is frozen: a controller derives its thresholds, operator order and skip cap from it once,
so a field changed in place would be silently ignored. Change one with `LazyController.set_config`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .reuse import operator_order

KINDS = ("attn", "ffn")  # the DiT's two sites per block; other families declare more kinds


MIXED = ("proj_out",)  # sites whose input mixes attention and feed-forward outputs (FLUX single blocks)


def kind_class(kind: str) -> int:
    """0 for attention-like sites (self-, joint or cross-attention), 1 for feed-forward-like ones:
    the paper's two gate families, which share a threshold and a column of a (N, L, 2) mask. 2 for
    a site that mixes both (a single-stream block's output projection): it skips where both do."""
    if kind in MIXED:
        return 2
    return 0 if kind.startswith(("attn", "cross")) else 1


@dataclass(frozen=True)
class LazyConfig:
    num_steps: int                      # sampling steps N the gates are trained for
    threshold_attn: float = 0.5         # compute attention when s >= this
    threshold_ffn: float = 0.5          # compute the feed-forward when s >= this
    max_skip_run: int | None = None     # at most this many consecutive skips per module (None: no cap)
    reuse: str = "copy"                 # what a skip returns: "copy" (the paper, FORA), "taylor1" or
                                        # "taylor2" (forecast from the last 2 or 3 computed outputs),
                                        # "fit1"/"fit2" (the same histories, weights fitted per cell)

    def __post_init__(self):
        operator_order(self.reuse)  # refuse an unknown operator when the config is made
        for name in ("threshold_attn", "threshold_ffn"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):  # also refuses NaN
                raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")
        cap = self.max_skip_run
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ValueError(f"max_skip_run must be an integer >= 1 or None, got {cap!r}")

    def threshold(self, kind: str) -> float:
        return self.threshold_attn if kind_class(kind) == 0 else self.threshold_ffn

    def to_dict(self) -> dict:
        return asdict(self)
