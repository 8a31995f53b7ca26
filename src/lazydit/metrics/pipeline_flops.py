"""What a generation through a diffusers pipeline computes, measured, not modelled: torch's FLOP
counter runs over the generation and counts the matmuls and attention that really executed inside
the transformer. lazydit's skips (and its forecasts' and correction's own ops), diffusers' hooks
that skip whole blocks (FirstBlockCache, MagCache) and those that skip modules inside them
(TaylorSeerCache, PyramidAttentionBroadcast, FasterCache) are all measured on one scale.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def generation_flops(transformer, run) -> float:
    """FLOPs that executed inside `transformer` while `run()` ran."""
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        run()
    return float(sum(fc.get_flop_counts().get(type(transformer).__name__, {}).values()))


def site_shares(transformer, run) -> dict:
    """Each lazy site kind's share of a full-compute generation's FLOPs: what gating it can save
    at most (the rest, embedders, norms and FLUX's single-block output projection, always runs)."""
    from ..integrations.diffusers.families import SITES
    names = {id(m): n for n, m in transformer.named_modules()}
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        run()
    counts = fc.get_flop_counts()
    cls = type(transformer).__name__
    total = float(sum(counts.get(cls, {}).values()))
    out: dict = {}
    for attr, kinds in SITES[cls]:
        for block in getattr(transformer, attr):
            for kind, name in kinds:
                module = getattr(block, name, None)
                if module is not None:
                    flops = float(sum(counts.get(f"{cls}.{names[id(module)]}", {}).values()))
                    out[kind] = out.get(kind, 0.0) + flops / total
    return out
