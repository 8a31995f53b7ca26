"""Training-free skip policies: the rivals a user would pick instead of learned gates.

Each is a decider (`lazydit.core.lazy.deciders`): it decides, per row and step, from a cheap
change signal, and replaces the controller's decider with `controller.set_policy(policy)`. Skipped
modules return the controller's reuse operator (copy or forecast), so every policy is measured with
the same operators as the gates. Runtime state lives in `controller.state.policy`, which
`controller.reset()` clears.

- TeaCache-style: skip the whole step while the accumulated relative L1 change of block 0's
  modulated input stays under the threshold (TeaCache without its fitted rescaling polynomial).
- FirstBlockCache-style: always compute block 0; skip the rest of the model when block 0's
  output changed by less than the threshold (relative L1) since the previous step.
- Forecast-gated (the confidence-gated forecast of arXiv 2508.02240): always compute block 0;
  forecast block 0's output from the steps at which the whole model last computed, and trust the
  forecast for the rest of the model when block 0's forecast error is under the threshold.
"""
from __future__ import annotations

import torch

from .deciders import Decider
from .reuse import History, operator_order


def rel_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row mean |a - b| / mean |b|: (B, ...) -> (B,)."""
    return (a - b).abs().flatten(1).mean(1) / b.abs().flatten(1).mean(1).clamp_min(1e-12)


class Policy(Decider):
    """A training-free policy: decides from a cheap change signal of the current step."""

    name = ""
    sees_every_call = True  # block 0's call sets the step's signal

    def __init__(self, threshold: float):
        self.threshold = threshold  # larger skips more

    def decide(self, ctrl, layer, kind, z):
        compute = self.computing(ctrl, layer, kind, z)
        return compute, int(compute.sum())

    def computing(self, ctrl, layer, kind, z) -> torch.Tensor:
        """(B,) bool: the rows that compute this call."""
        raise NotImplementedError


class TeaCachePolicy(Policy):
    name = "teacache"

    def computing(self, ctrl, layer, kind, z):
        st = ctrl.state.policy
        if (layer, kind) == (0, "attn"):
            acc = st["acc"] + rel_l1(z.float(), st["z0"])
            skip = acc < self.threshold
            st["acc"] = torch.where(skip, acc, torch.zeros_like(acc))
            st["skip"] = skip
        return ~st["skip"]

    def observe(self, ctrl, layer, kind, z, out, compute):
        st = ctrl.state.policy
        if (layer, kind) == (0, "attn"):
            st["z0"] = z.float()
            st.setdefault("acc", torch.zeros(z.shape[0], device=z.device))


class _FirstBlockPolicy(Policy):
    """Shared by the policies that always compute block 0 and decide the rest from its output."""

    def computing(self, ctrl, layer, kind, z):
        if layer == 0:
            return torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
        st = ctrl.state.policy
        if "skip" not in st:
            st["skip"] = self._skip_rest(ctrl, st)
        return ~st["skip"]

    def observe(self, ctrl, layer, kind, z, out, compute):
        st = ctrl.state.policy
        if layer == 0:
            st.pop("skip", None)  # a new step: block 0's outputs come first
            st[kind] = out.float()
        elif layer == 1 and kind == "attn":
            self._after_decision(ctrl, st)


class FirstBlockCachePolicy(_FirstBlockPolicy):
    name = "fbcache"

    def _skip_rest(self, ctrl, st):
        cur = torch.cat([st["attn"], st["ffn"]], dim=1)
        return rel_l1(cur, st["prev"]) < self.threshold

    def _after_decision(self, ctrl, st):
        st["prev"] = torch.cat([st["attn"], st["ffn"]], dim=1)


class ForecastGatedPolicy(_FirstBlockPolicy):
    name = "fcgated"

    def _skip_rest(self, ctrl, st):
        cur = torch.cat([st["attn"], st["ffn"]], dim=1)
        hist: History | None = st.get("anchors")
        if hist is None:
            return torch.zeros(cur.shape[0], dtype=torch.bool, device=cur.device)
        return rel_l1(hist.forecast(float(ctrl.state.step)), cur) < self.threshold

    def _after_decision(self, ctrl, st):
        # Rows that compute the rest of the model anchor block 0's forecast at this step, so
        # its error measures the same extrapolation the skipped modules will use.
        cur = torch.cat([st["attn"], st["ffn"]], dim=1)
        k, hist = float(ctrl.state.step), st.get("anchors")
        if hist is None:
            st["anchors"] = History.start(cur, k, operator_order(ctrl.config.reuse))
            return
        rows = (~st["skip"]).nonzero(as_tuple=True)[0]
        if len(rows):
            st["anchors"] = hist.push(cur[rows], k, rows)


POLICIES = {p.name: p for p in (TeaCachePolicy, FirstBlockCachePolicy, ForecastGatedPolicy)}


def make_policy(name: str, threshold: float):
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose {', '.join(POLICIES)}")
    if not threshold >= 0:  # also refuses NaN
        raise ValueError(f"policy threshold must be >= 0, got {threshold}")
    return POLICIES[name](threshold)
