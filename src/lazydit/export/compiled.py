"""Frozen sampling in torch, eager or compiled: the `lazydit.deploy` sampler (numpy schedule,
histories and forecasts) driving torch pieces instead of onnxruntime sessions.

Each block runs as one `BlockStep`: its attention then its feed-forward piece, each the compute
or the skip variant (`lazydit.export.parts`). The values skipped modules reuse depend only on
earlier steps, so they are computed before the block and passed in: the block is one graph with
no data-dependent branch, and `torch.compile` sees at most four variants of it (compute/skip per
module) whatever the step. Input-dependent gates cannot work this way: which rows compute is
known only once the gate has scored the module's input inside the block, and the gather and
scatter of those rows change shape from step to step, so gated sampling stays eager.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..deploy.bundle import plan_from_manifest
from ..deploy.sampler import Plan
from .parts import KINDS, ComputePart, EmbedPart, FinalPart, SkipPart


def frozen_plan(model: nn.Module, ctrl, meta: dict) -> Plan:
    """The deploy sampler's plan for a skip-schedule file read by `read_skip_schedule`: exactly what an
    exported bundle's manifest would give."""
    from .onnx_export import correction_arrays, manifest
    corr = correction_arrays(ctrl.correction) if ctrl.correction is not None else None
    return plan_from_manifest(manifest(model, ctrl, meta, None, ""), corr)


class BlockStep(nn.Module):
    """One block under a fixed (skip attention, skip feed-forward) pair. Inputs: h, c, then for
    each skipped module its reuse value (and its input forecast, when corrected). Outputs: h,
    then y (and z) of each computed module, in module order."""

    def __init__(self, pieces):
        super().__init__()
        self.pieces = nn.ModuleList(pieces)
        self.skips = tuple(isinstance(p, SkipPart) for p in pieces)
        self.eval()

    def forward(self, h, c, *feeds):
        outs, i = [], 0
        for piece, skip in zip(self.pieces, self.skips):
            if skip:
                n = 4 if piece.corrected else 1
                h = piece(h, c, *feeds[i:i + n])
                i += n
            else:
                res = piece(h, c)
                h = res[0]
                outs.extend(res[1:])
        return (h, *outs)


class TorchBackend:
    """`lazydit.deploy.sampler.Backend` over torch pieces; `compile=True` wraps the embedders, the
    final layer and every block variant the schedule uses in `torch.compile` (compiled on first
    use: run one warm-up generation before timing)."""

    def __init__(self, model: nn.Module, mask: torch.Tensor, corrected: bool = False, compile: bool = False,
                 backend: str = "inductor"):
        model = model.float().eval()
        self.corrected = corrected
        self.embed_p, self.final_p = EmbedPart(model), FinalPart(model)
        self.steps = {}
        for layer in range(model.config.depth):
            used = {tuple(bool(v) for v in row) for row in mask[:, layer].tolist()}
            for skips in used:
                pieces = [SkipPart(model, layer, kind, corrected) if skips[m]
                          else ComputePart(model, layer, kind, keep_input=corrected) for m, kind in enumerate(KINDS)]
                self.steps[layer, skips] = BlockStep(pieces)
        if compile:
            # dynamic=False: shapes are fixed for a generation; a new batch size compiles anew.
            # backend="eager": dynamo's tracing alone, to count graphs and breaks cheaply in tests.
            wrap = lambda f: torch.compile(f, dynamic=False, backend=backend)  # noqa: E731
            self.embed_p, self.final_p = wrap(self.embed_p), wrap(self.final_p)
            self.steps = {k: wrap(v) for k, v in self.steps.items()}

    @torch.no_grad()
    def embed(self, x, t, y):
        h, c = self.embed_p(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y))
        return h.numpy(), c.numpy()

    @torch.no_grad()
    def block(self, layer, skips, h, c, feeds):
        flat = [torch.from_numpy(np.ascontiguousarray(a)) for m in sorted(feeds) for a in feeds[m]]
        res = [r.numpy() for r in self.steps[layer, skips](torch.from_numpy(h), torch.from_numpy(c), *flat)]
        out, results, i = res[0], {}, 1
        per = 2 if self.corrected else 1
        for m, skip in enumerate(skips):
            if not skip:
                results[m] = (res[i], res[i + 1] if per == 2 else None)
                i += per
        return out, results

    @torch.no_grad()
    def final(self, h, c):
        return self.final_p(torch.from_numpy(h), torch.from_numpy(c)).numpy()
