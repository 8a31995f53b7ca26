"""Who decides whether a module call computes or skips: a controller holds one decider at a time.

`decide(ctrl, layer, kind, z)` answers for one call of site (layer, kind) on its input z (B, T, D),
at the controller's current step: (the bool (B,) mask of the rows that compute, or None when all
rows agree; how many rows compute). Rows mostly agree, and then the whole batch computes or skips
with no mask, gathers or per-row bookkeeping. A decider holds settings only: what one generation
needs lives in `ctrl.state`, which the controller resets. `observe(ctrl, layer, kind, z, out,
compute)`, where a decider defines it, sees every call's output (None: the controller skips it).

- `Gates`: the learned gates, the controller's parameters, thresholded.
- `SkipSchedule`: a skip mask fixed before sampling (a placement search, a file, a rival's pattern).
- a training-free policy (`lazydit.core.lazy.policies`), deciding from a cheap change signal.
- `SkipCap` wraps any of them: a row that skipped `cap` calls in a row computes the next.
"""
from __future__ import annotations

import math

import torch


class Decider:
    """The decider interface (see the module's docstring)."""

    observe = None
    # A decider whose decide() keeps per-step state (a policy's signal of the step) must be asked
    # even where the skip cap has already decided.
    sees_every_call = False

    def decide(self, ctrl, layer: int, kind: str, z: torch.Tensor) -> tuple[torch.Tensor | None, int]:
        raise NotImplementedError


class Gates(Decider):
    """Compute where the gate's score s = sigmoid(sum over tokens of Z @ w) reaches its kind's threshold."""

    def __init__(self, config, kinds: tuple):
        # Logits, not probabilities: trained gates saturate sigmoid in float32.
        self.thresholds = {kind: logit(config.threshold(kind)) for kind in kinds}

    def decide(self, ctrl, layer, kind, z):
        # The scores come to the host once and are thresholded there: fewer tensor ops than a
        # compare and a count, the cost that decides whether gating pays on small models.
        thr = self.thresholds[kind]
        rows = [v >= thr for v in ctrl.logit(kind, layer, z).tolist()]
        n = sum(rows)
        return (None if n in (0, len(rows)) else torch.tensor(rows, device=z.device)), n


class SkipSchedule(Decider):
    """A fixed skip mask of the controller's sites, (N, L, M) shared by all rows or (N, L, M, B)
    per row; True = skip."""

    def __init__(self, mask: torch.Tensor, kinds: tuple):
        self.mask = mask
        self.columns = {kind: m for m, kind in enumerate(kinds)}
        # A mask shared by all rows, as Python bools per step, layer and kind: its decisions then
        # cost no tensor ops.
        self.plan = [[dict(zip(kinds, cells)) for cells in step] for step in mask.tolist()] if mask.dim() == 3 else None

    def decide(self, ctrl, layer, kind, z):
        k = ctrl.state.step
        if torch.is_tensor(k):
            raise ValueError("forced skip masks need a single step per forward")
        if self.plan is not None:
            return (None, 0) if self.plan[k][layer][kind] else (None, z.shape[0])
        compute = ~self.mask[k, layer, self.columns[kind]].to(z.device)
        return compute, int(compute.sum())


class SkipCap(Decider):
    """`inner` with at most `cap` consecutive skips per row and site: past the cap the row
    computes, and the gates are not even scored. Each site's steps since it computed live in
    `ctrl.state.age`; a site without an entry (its first call, primed caches, a mode switch)
    counts as computed at its previous call."""

    def __init__(self, inner: Decider, cap: int):
        self.inner, self.cap = inner, cap
        self.observe, self.sees_every_call = inner.observe, inner.sees_every_call

    def decide(self, ctrl, layer, kind, z):
        ages, key, b = ctrl.state.age, (layer, kind), z.shape[0]
        age = ages.get(key, 1)  # an int while the rows agree, else (B,)
        if not torch.is_tensor(age) and age > self.cap:
            if self.sees_every_call:
                self.inner.decide(ctrl, layer, kind, z)
            ages[key] = 1
            return None, b
        compute, n = self.inner.decide(ctrl, layer, kind, z)
        if torch.is_tensor(age) and n < b:
            due = age > self.cap
            compute = due if compute is None else compute | due
            n = int(compute.sum())
        ages[key] = _aged(age, compute, n, b)
        return compute, n


def _aged(age, compute: torch.Tensor | None, n: int, b: int):
    """Steps since each row computed, after this call: a Python int while the rows agree."""
    if n == b:
        return 1
    if n == 0:
        return age + 1
    if not torch.is_tensor(age):
        age = torch.full(compute.shape, age, dtype=torch.long, device=compute.device)
    return torch.where(compute, torch.ones_like(age), age + 1)


def logit(p: float) -> float:
    if p <= 0.0:
        return float("-inf")
    if p >= 1.0:
        return float("inf")
    return math.log(p) - math.log1p(-p)
