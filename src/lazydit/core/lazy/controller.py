"""The lazy controller: owner of the gates, the caches, the step index and the statistics.

Orientation: a gate's score s is the probability of COMPUTING the module (as in the official
code). The lazy loss penalises s, pushing towards skipping. Skip = return the reuse operator's
value instead: a copy of the module's last computed output (the paper) or a forecast from its
last computed outputs (`lazydit.core.lazy.reuse`).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from .config import KINDS, LazyConfig, kind_class
from .correction import CorrectionFit, InputCorrection
from .reuse import History, fit_weights, is_fitted, operator_order
from .stats import LazyStats


@dataclass
class _GenState:
    """Per-generation runtime state; replaced wholesale by `LazyController.reset()`."""

    step: int = 0
    hist: dict = field(default_factory=dict)     # (layer, kind) -> History of computed outputs
    age: dict = field(default_factory=dict)      # (layer, kind) -> (B,) steps since computed
    skips: torch.Tensor | None = None            # (N, L, M, B)
    soft_scores: list = field(default_factory=list)  # [(kind, layer, s (B,))] of soft steps
    policy: dict = field(default_factory=dict)   # runtime state of a training-free policy
    inputs: dict = field(default_factory=dict)   # (layer, kind) -> History of computed inputs (correction)
    active: bool = True                          # False once a generation finished: plain forwards
    layouts: dict = field(default_factory=dict)  # (layer, kind) -> token counts of a tuple output's parts


class LazyController(nn.Module):
    """Gates for every (layer, module, step) plus the runtime state of one generation.

    Modes: "hard" (threshold the gates, gather/scatter the computing rows), "soft" (training:
    out = s*F(Z) + (1-s)*cache), "full" (compute everything, keep caches). A forced skip mask
    overrides the gates in hard mode.
    """

    def __init__(self, config: LazyConfig, depth: int, dim: int, meta: dict | None = None,
                 kinds: tuple = KINDS, present: torch.Tensor | None = None, dims: dict | None = None):
        super().__init__()
        self.config = config
        self.depth, self.dim = depth, dim
        # The sites of a block, in column order: DiT ("attn", "ffn"); FLUX adds "ffn_text", Wan
        # "cross". `present` (L, M) marks the cells that exist (a single-stream block has no text
        # feed-forward); masks, fitted weights and corrections are (N, L, M, ...) grids either way.
        self.kinds = tuple(kinds)
        if len(set(self.kinds)) != len(self.kinds) or not self.kinds:
            raise ValueError(f"site kinds must be distinct and not empty, got {self.kinds}")
        self.present = (torch.ones(depth, len(self.kinds), dtype=torch.bool) if present is None
                        else present.bool().clone())
        if tuple(self.present.shape) != (depth, len(self.kinds)):
            raise ValueError(f"present must have shape ({depth}, {len(self.kinds)}), got {tuple(self.present.shape)}")
        self.meta = dict(meta or {})
        # Row k of <kind>[l] is the weight of the Linear(D, 1, bias=False) gate for step k. Each kind
        # is a parameter named after it, so a DiT's state dict keeps its "attn" and "ffn" keys. `dims`:
        # the input width of kinds whose input is not `dim` wide (FLUX's proj_out reads 5 D).
        self.dims = {k: v for k, v in (dims or {}).items() if v != dim}
        for kind in self.kinds:
            self.register_parameter(kind, nn.Parameter(torch.zeros(depth, config.num_steps, self.dims.get(kind, dim))))
        self.mode = "hard"
        self.forced: torch.Tensor | None = None  # (N, L, M[, B]) bool skip mask
        self._forced_shared: list | None = None
        self.policy = None  # a training-free policy (lazydit.core.lazy.policies) replacing the gates
        # "fit" operators: (N, L, M, P) forecast weights per cell, NaN = Lagrange; filled while
        # `fitting` is on, which makes skipped cells compute their true output to fit against.
        self.fitted: torch.Tensor | None = None
        self.fitting = False
        # Input correction of fitted forecasts (`lazydit.core.lazy.correction`): applied when set;
        # `correction_fit` collects its normal equations while `fitting` is on.
        self.correction: InputCorrection | None = None
        self.correction_fit: CorrectionFit | None = None
        self.reset()

    @property
    def num_kinds(self) -> int:
        return len(self.kinds)

    def gate_params(self) -> list:
        return [getattr(self, kind) for kind in self.kinds]

    # ---- state ownership -------------------------------------------------------------
    def reset(self):
        """Forget caches, step and statistics. Sampler calls this before every generation.

        One state per CFG branch that the pipeline calls separately (true CFG: cond, then uncond,
        at every step): a branch forecasts from its own outputs only."""
        self._branches = [_GenState()]
        self.state = self._branches[0]

    def set_branch(self, branch: int):
        """The CFG branch of the next forward (0 for a single call per step)."""
        while len(self._branches) <= branch:
            self._branches.append(_GenState(step=self.state.step))
        self.state = self._branches[branch]

    def set_step(self, k, branch: int = 0):
        """The sampling step of the next forward: an int, or a (B,) tensor of per-row steps
        (training batches mix steps; statistics are then not recorded). `branch`: which of the
        separate calls of this step it is (true CFG calls the model twice per step)."""
        if branch:
            self.set_branch(branch)
        elif self.state is not self._branches[0]:
            self.state = self._branches[0]
        lo, hi = (int(k.min()), int(k.max())) if torch.is_tensor(k) else (k, k)
        if not 0 <= lo <= hi < self.config.num_steps:
            raise ValueError(f"step {hi if hi >= self.config.num_steps else lo} outside the "
                             f"{self.config.num_steps}-step gates")
        self.state.step = k
        self.state.active = True

    def finish(self):
        """End of a generation: its statistics stay readable, and until the next `set_step` the
        model runs as if it had no gates, so a direct call cannot reuse the last step's caches."""
        for st in self._branches:
            st.active = False

    def prime(self, reuse: dict, age: dict | None = None):
        """Install the values skipped modules return at the next forward, (layer, kind) ->
        (B, T, D), e.g. replayed from a recorded rollout: training mixes against exactly these."""
        self.state.hist = {k: History(v[None], torch.zeros(1, v.shape[0], device=v.device),
                                      torch.ones(v.shape[0], dtype=torch.long, device=v.device))
                           for k, v in reuse.items()}
        self.state.age = dict(age or {})

    def reuse_values(self) -> dict:
        """What every module would return if it skipped at the current step: (layer, kind) ->
        (B, T, D). Rollouts record these so training sees the operator that sampling uses."""
        k = self.state.step
        k = k.float() if torch.is_tensor(k) else float(k)
        return {key: h.forecast(k) for key, h in self.state.hist.items()}

    def set_policy(self, policy):
        """Replace the gates by a training-free policy (None restores the gates)."""
        self.policy = policy
        self.reset()

    def stats(self) -> LazyStats:
        ran = [st for st in self._branches if st.skips is not None]
        if ran:
            skips = torch.cat([st.skips.cpu() for st in ran], dim=-1)
            steps_run = min(max(int(st.step) for st in ran) + 1, self.config.num_steps)
        else:
            skips, steps_run = torch.zeros(self.config.num_steps, self.depth, self.num_kinds, 0, dtype=torch.bool), 0
        present = None if bool(self.present.all()) else self.present
        return LazyStats(skips=skips, steps_run=steps_run, kinds=self.kinds, present=present)

    def site_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A (N, L, 2[, B]) mask by class (column 0 attention-like, 1 feed-forward-like sites) as
        the (N, L, M[, B]) mask of this controller's sites; a (N, L, M[, B]) mask as it is. So
        `patterns.every_nth(N, ctrl.depth, 2)` means the same for every family."""
        n, l, m = self.config.num_steps, self.depth, self.num_kinds
        if mask.dim() < 3 or mask.shape[:2] != (n, l) or mask.shape[2] not in (2, m):
            raise ValueError(f"forced mask must start with shape ({n}, {l}, 2) or ({n}, {l}, {m}), got {tuple(mask.shape)}")
        if mask.shape[2] == m:
            return mask.bool()
        mask = mask.bool()
        both = mask[:, :, :1] & mask[:, :, 1:2]
        return torch.cat([mask, both], dim=2)[:, :, [kind_class(k) for k in self.kinds]]

    def force(self, mask: torch.Tensor | None):
        """Force a skip pattern (True = skip) of shape (N, L, 2[, B]) by class or (N, L, M[, B]) by
        site (see `site_mask`); None clears."""
        if mask is not None:
            mask = self.site_mask(mask)
        self.forced = mask
        # A schedule shared by all rows, as Python bools: its decisions then cost no tensor ops.
        self._forced_shared = mask.tolist() if mask is not None and mask.dim() == 3 else None

    def gate_weight(self, kind: str) -> torch.Tensor:
        return getattr(self, kind)

    def logit(self, kind: str, layer: int, z: torch.Tensor) -> torch.Tensor:
        """sum over tokens of Z @ w: (B, T, D) -> (B,), in float32."""
        step = self.state.step
        w = self.gate_weight(kind)
        if torch.is_tensor(step):  # per-row steps: (B, D) weights
            return torch.einsum("btd,bd->b", z.float(), w[layer][step.to(w.device)].float())
        # Tokens summed first, as einsum would: same bits, a quarter of einsum's fixed cost.
        return torch.mv(z.float().sum(1), w[layer, step].float())

    def score(self, kind: str, layer: int, z: torch.Tensor) -> torch.Tensor:
        """s = sigmoid(sum over tokens of Z @ w), the probability of computing: (B,)."""
        return torch.sigmoid(self.logit(kind, layer, z))

    # ---- the one data-dependent decision --------------------------------------------
    def _decide(self, kind: str, layer: int, z: torch.Tensor) -> tuple[torch.Tensor | None, int]:
        """Rows that compute at this step: (bool (B,) mask, or None when all rows agree; how many
        compute). One host sync per decision: rows mostly agree, and then the whole batch computes
        or skips without a mask, gathers or per-row bookkeeping."""
        B, k, st = z.shape[0], self.state.step, self.state
        m = self.kinds.index(kind)
        cap = self.config.max_skip_run
        age = st.age.get((layer, kind))  # an int while the rows agree, else (B,); None when primed
        capped = cap is not None and age is not None
        if capped and isinstance(age, int) and age > cap and self.policy is None:
            return None, B  # the cap decides: no gate to score
        if self.policy is not None:
            compute = self.policy.decide(self, layer, kind, z)
        elif self.forced is not None:
            if torch.is_tensor(k):
                raise ValueError("forced skip masks need a single step per forward")
            f = self.forced[k, layer, m]
            compute = ~(f.to(z.device).expand(B) if f.dim() == 0 else f.to(z.device))
        elif capped and torch.is_tensor(age):
            compute = self.logit(kind, layer, z) >= _logit(self.config.threshold(kind))
        else:
            # The gates' scores come to the host once and are thresholded there: fewer tensor ops
            # than a compare and a count, the cost that decides whether gating pays on small models.
            # Logits, not probabilities: trained gates saturate sigmoid in float32.
            thr = _logit(self.config.threshold(kind))
            rows = [v >= thr for v in self.logit(kind, layer, z).tolist()]
            n = sum(rows)
            return (None if n in (0, B) else torch.tensor(rows, device=z.device)), n
        if capped and torch.is_tensor(age):  # primed caches carry no age: treat as fresh
            compute = compute | (age > cap)
        return compute, int(compute.sum())

    def _record(self, kind: str, layer: int, batch: int, skipped: torch.Tensor | None, uniform: bool | None = None):
        """Store the step's skips; `uniform`: the one decision of the whole batch, when it agreed
        (the record starts all False, so a batch that computed costs nothing)."""
        st = self.state
        if torch.is_tensor(st.step):
            return
        if st.skips is None:  # on the decisions' device: recording them costs no copy to the host
            st.skips = torch.zeros(self.config.num_steps, self.depth, self.num_kinds, batch, dtype=torch.bool,
                                   device=self.gate_params()[0].device)
        if uniform is None:
            st.skips[st.step, layer, self.kinds.index(kind)] = skipped
        elif uniform:
            st.skips[st.step, layer, self.kinds.index(kind)] = True

    # Kept out of torch.compile: the decision is data-dependent (which rows compute is known only
    # after the gate scores z), and the step, layer and history are Python state. Traced, they split
    # the graph here anyway and specialise every (step, layer, module), so dynamo recompiled this
    # frame until its recompile limit; run eagerly, the code around the wrapped modules compiles once
    # for all steps. Frozen schedules compile whole blocks: lazydit.export.compiled.
    # torch.compile imports torch._dynamo before it traces anything, so until that import no caller
    # can be compiling; decorating at import (torch.compiler.disable imports dynamo) cost every
    # command 2.5 s of start-up.
    def lazy_forward(self, layer: int, kind: str, fn: Callable, z: torch.Tensor, *args, **kwargs):
        """Stand-in for module.forward(z, ...): compute F(z) or return the reuse operator's value."""
        if "torch._dynamo" in sys.modules:
            return _kept_out_of_compile()(self, layer, kind, fn, z, *args, **kwargs)
        return self._lazy_forward(layer, kind, fn, z, *args, **kwargs)

    def _lazy_forward(self, layer: int, kind: str, fn: Callable, z: torch.Tensor, *args, **kwargs):
        st, key = self.state, (layer, kind)
        if not st.active:
            return fn(z, *args, **kwargs)
        if getattr(self, self.kinds[0]).device != z.device:  # the model was moved after the gates were attached
            self.to(z.device)
        hist = st.hist.get(key)
        first = (st.step == 0).all() if torch.is_tensor(st.step) else st.step == 0
        have_cache = hist is not None and hist.values.shape[1] == z.shape[0] and not bool(first)
        order = operator_order(self.config.reuse)
        k = st.step if torch.is_tensor(st.step) else float(st.step)
        if self.mode == "soft" and have_cache:
            s = self.score(kind, layer, z)  # (B,)
            st.soft_scores.append((kind, layer, s))
            out = fn(z, *args, **kwargs)
            reuse = hist.forecast(k)
            sv = s.to(out.dtype).view(-1, *([1] * (out.dim() - 1)))
            out = sv * out + (1 - sv) * reuse
            self._record(kind, layer, z.shape[0], (s < self.config.threshold(kind)).detach())
            st.age[key] = torch.ones(z.shape[0], dtype=torch.long, device=z.device)
            st.hist[key] = History.start(out, 0.0, 0)
            return out
        inputs = self._tracks_inputs(k)
        if (have_cache and self._forced_shared is not None and self.mode == "hard" and self.policy is None
                and self.config.max_skip_run is None and not torch.is_tensor(k)):
            return self._forced_step(layer, kind, fn, z, hist, inputs, args, kwargs)
        B = z.shape[0]
        compute, n = self._decide(kind, layer, z) if have_cache and self.mode != "full" else (None, B)
        if not have_cache:
            out = fn(z, *args, **kwargs)
            # Per-row steps (training batches) keep one output: a later forecast there is primed.
            st.hist[key] = History.start(out, 0.0, 0) if torch.is_tensor(k) else History.start(out, k, order)
            if inputs:
                st.inputs[key] = History.start(z, k, 1)
        elif n == B:
            out = fn(z, *args, **kwargs)
            self._pushed(key, hist, out, z, k, inputs)
        elif n == 0:
            out = self._skip_value(layer, kind, k, hist, lambda: fn(z, *args, **kwargs),
                                   z if inputs and key in st.inputs else None)
        else:
            idx = torch.nonzero_static(compute, size=n)[:, 0]  # n is known: no second sync for the shape
            st.inputs.pop(key, None)  # rows part ways: a shared input history no longer exists
            sub = fn(z[idx], *_rows(args, idx, B), **_rows(kwargs, idx, B))
            out = self._skip_value(layer, kind, k, hist, lambda: fn(z, *args, **kwargs), skipping=~compute).clone()
            out[idx] = sub.to(out.dtype)
            st.hist[key] = hist.push(sub, k, idx)
        uniform = None if 0 < n < B else n == 0
        if self.policy is not None:
            self.policy.observe(self, layer, kind, z, out,
                                compute if compute is not None else torch.full((B,), n == B, device=z.device))
        self._record(kind, layer, B, None if compute is None else ~compute, uniform)
        st.age[key] = self._aged(st.age.get(key) if have_cache else None, compute, uniform)
        return out

    @staticmethod
    def _aged(age, compute: torch.Tensor | None, uniform: bool | None):
        """Steps since each row computed, after this step: a Python int while the rows agree."""
        if uniform is False:
            return 1
        if uniform:
            return age + 1 if torch.is_tensor(age) else (age or 0) + 1
        if not torch.is_tensor(age):
            age = torch.full(compute.shape, age or 0, dtype=torch.long, device=compute.device)
        return torch.where(compute, torch.ones_like(age), age + 1)

    def _forced_step(self, layer, kind, fn, z, hist, inputs, args, kwargs):
        """A step of a shared schedule without a skip cap: the whole batch computes or skips, so
        the general path's per-row masks, gathers and ages are not needed (on small models they
        cost as much as the compute a skip saves)."""
        st, key, k = self.state, (layer, kind), int(self.state.step)
        m = self.kinds.index(kind)
        skip = self._forced_shared[k][layer][m]
        if skip:
            out = self._skip_value(layer, kind, float(k), hist, lambda: fn(z, *args, **kwargs),
                                   z if inputs and key in st.inputs else None)
        else:
            out = fn(z, *args, **kwargs)
            self._pushed(key, hist, out, z, float(k), inputs)
        if st.skips is None:
            st.skips = torch.zeros(self.config.num_steps, self.depth, self.num_kinds, z.shape[0], dtype=torch.bool, device=z.device)
        if skip:
            st.skips[k, layer, m] = True
        return out

    def _pushed(self, key, hist, out, z, k: float, inputs: bool):
        """The whole batch computed at step k: its output (and input, when tracked) join the histories."""
        st = self.state
        st.hist[key] = hist.push(out, k)
        if inputs and key in st.inputs:
            st.inputs[key] = st.inputs[key].push(z, k)

    def _tracks_inputs(self, k) -> bool:
        return (self.correction is not None or self.correction_fit is not None) and not torch.is_tensor(k) \
            and is_fitted(self.config.reuse)

    def _skip_value(self, layer, kind, k, hist, compute_all, z=None, skipping=None):
        """The reuse operator's value for every row; while fitting, the cell's weights are first
        fitted to the true outputs of the skipping rows (`skipping`: bool (B,); None = all). `z`: the
        module's input, given when the whole batch skips and inputs are tracked (input correction)."""
        if not is_fitted(self.config.reuse) or torch.is_tensor(k):
            return hist.forecast(k)
        k = int(k)
        p = operator_order(self.config.reuse) + 1
        if self.fitted is None or self.fitted.shape[-1] != p:
            self.fitted = torch.full((self.config.num_steps, self.depth, self.num_kinds, p), float("nan"))
        m = self.kinds.index(kind)
        truth = None
        if self.fitting:
            truth = compute_all()
            rows = skipping.nonzero(as_tuple=True)[0] if skipping is not None else torch.arange(truth.shape[0], device=truth.device)
            self.fitted[k, layer, m] = fit_weights(hist.rows(rows), truth[rows], float(k))
        out = hist.forecast(float(k), self.fitted[k, layer, m])
        if z is None or z.shape != out.shape:  # joint attention (image in, image and text out): no correction
            return out
        dz = z - self.state.inputs[(layer, kind)].forecast(float(k))
        if truth is not None and self.correction_fit is not None:
            self.correction_fit.add(k, layer, m, dz, truth - out)
        if self.correction is not None:
            out = out + self.correction.apply(k, layer, m, dz).to(out.dtype)
        return out


_EAGER: dict = {}


def _kept_out_of_compile() -> Callable:
    if "forward" not in _EAGER:
        _EAGER["forward"] = torch.compiler.disable(LazyController._lazy_forward)
    return _EAGER["forward"]


def _logit(p: float) -> float:
    if p <= 0.0:
        return float("-inf")
    if p >= 1.0:
        return float("inf")
    return math.log(p) - math.log1p(-p)


def _rows(obj, idx, batch):
    """Select rows `idx` of every batched tensor among a module's extra arguments."""
    if isinstance(obj, dict):
        return {k: _rows(v, idx, batch) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_rows(v, idx, batch) for v in obj)
    if torch.is_tensor(obj) and obj.dim() > 0 and obj.shape[0] == batch:
        return obj[idx]
    return obj
