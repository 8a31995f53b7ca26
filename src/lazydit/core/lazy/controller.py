"""The lazy controller: owner of the gates, the decider, the caches, the step index and the statistics.

Orientation: a gate's score s is the probability of COMPUTING the module (as in the official
code). The lazy loss penalises s, pushing towards skipping. Skip = return the reuse operator's
value instead: a copy of the module's last computed output (the paper) or a forecast from its
last computed outputs (`lazydit.core.lazy.reuse`).

Whether a call skips is up to the controller's one decider (`lazydit.core.lazy.deciders`): the
gates (the default), a skip schedule (`force`) or a training-free policy (`set_policy`), wrapped by
the skip cap when the config has one. What a skip returns (the operator, its fitted weights, the
input correction) is the controller's, the same for every decider. All of it is read-only from
outside: the methods below change it, and validate what they are given.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn as nn

from .config import KINDS, LazyConfig, kind_class
from .correction import CorrectionFit, InputCorrection
from .deciders import Decider, Gates, SkipCap, SkipSchedule
from .policies import Policy
from .reuse import History, fit_weights, is_fitted, operator_order
from .stats import LazyStats

MODES = ("hard", "soft", "full")


@dataclass
class _GenState:
    """Per-generation runtime state; replaced wholesale by `LazyController.reset()`."""

    step: int = 0
    hist: dict = field(default_factory=dict)     # (layer, kind) -> History of computed outputs
    age: dict = field(default_factory=dict)      # (layer, kind) -> steps since computed (the skip cap's)
    skips: torch.Tensor | None = None            # (N, L, M, B), read through `skip_record()`
    batch_skips: list = field(default_factory=list)  # [(step, layer, m)] whole-batch skips not yet in `skips`
    soft_scores: list = field(default_factory=list)  # [(kind, layer, s (B,))] of soft steps
    policy: dict = field(default_factory=dict)   # runtime state of a training-free policy
    inputs: dict = field(default_factory=dict)   # (layer, kind) -> History of computed inputs (correction)
    active: bool = True                          # False once a generation finished: plain forwards
    layouts: dict = field(default_factory=dict)  # (layer, kind) -> token counts of a tuple output's parts

    def skip_record(self) -> torch.Tensor | None:
        """(N, L, M, B) bool: every skip of this generation so far (None before its first call)."""
        if self.batch_skips:
            steps, layers, columns = zip(*self.batch_skips)
            self.skips[list(steps), list(layers), list(columns)] = True
            self.batch_skips.clear()
        return self.skips


class LazyController(nn.Module):
    """Gates for every (layer, module, step), the decider, plus the runtime state of one generation.

    Modes (`set_mode`): "hard" (the decider decides; gather/scatter the computing rows), "soft"
    (training the gates: out = s*F(Z) + (1-s)*cache), "full" (compute everything, keep caches).
    """

    def __init__(self, config: LazyConfig, depth: int, dim: int, meta: dict | None = None,
                 kinds: tuple = KINDS, present: torch.Tensor | None = None, dims: dict | None = None):
        super().__init__()
        self.depth, self.dim = depth, dim
        # The sites of a block, in column order: DiT ("attn", "ffn"); FLUX adds "ffn_text", Wan
        # "cross". `present` (L, M) marks the cells that exist (a single-stream block has no text
        # feed-forward); masks, fitted weights and corrections are (N, L, M, ...) grids either way.
        self.kinds = tuple(kinds)
        if len(set(self.kinds)) != len(self.kinds) or not self.kinds:
            raise ValueError(f"site kinds must be distinct and not empty, got {self.kinds}")
        self._columns = {kind: m for m, kind in enumerate(self.kinds)}
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
        self._mode = "hard"
        # "fit" operators: (N, L, M, P) forecast weights per cell, NaN = Lagrange; fitted inside
        # `fit_reuse`, which makes skipped cells compute their true output to fit against.
        self._fitted: torch.Tensor | None = None
        self._cell_weights: dict = {}  # (step, layer, m) -> the cell's fitted weights as floats (or None)
        self._fitting = False
        # Input correction of fitted forecasts (`lazydit.core.lazy.correction`): applied when set;
        # `fit_reuse` may collect its normal equations.
        self._correction: InputCorrection | None = None
        self._correction_stats: CorrectionFit | None = None
        self._configure(config, Gates(config, self.kinds))
        self.reset()

    # ---- read-only views --------------------------------------------------------------
    @property
    def config(self) -> LazyConfig:
        return self._config

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def decider(self) -> Decider:
        """The one decider: `Gates`, a `SkipSchedule` or a policy (without the skip cap's wrapper)."""
        return self._decider

    @property
    def forced(self) -> torch.Tensor | None:
        """The skip schedule's (N, L, M[, B]) mask when it decides, else None."""
        return self._decider.mask if isinstance(self._decider, SkipSchedule) else None

    @property
    def policy(self) -> Policy | None:
        return self._decider if isinstance(self._decider, Policy) else None

    @property
    def fitted(self) -> torch.Tensor | None:
        return self._fitted

    @property
    def correction(self) -> InputCorrection | None:
        return self._correction

    @property
    def num_kinds(self) -> int:
        return len(self.kinds)

    def gate_params(self) -> list:
        return [getattr(self, kind) for kind in self.kinds]

    # ---- configuration: the only ways in --------------------------------------------------
    def _configure(self, config: LazyConfig, decider: Decider):
        """Install a config and a decider, and what the per-call path reads from them."""
        self._config = config
        self._order, self._fit_op = operator_order(config.reuse), is_fitted(config.reuse)
        self._decider = decider
        running = decider if config.max_skip_run is None else SkipCap(decider, config.max_skip_run)
        self._decide, self._observe = running.decide, running.observe
        self._refresh_inputs()

    def _refresh_inputs(self):
        # Module inputs are kept only where an input correction uses or fits them.
        self._track_inputs = self._fit_op and (self._correction is not None or self._correction_stats is not None)

    def set_config(self, **changes):
        """Replace fields of the config (thresholds, skip cap, reuse operator), validated as a new
        LazyConfig. A new operator drops the old one's fitted weights."""
        unknown = sorted(set(changes) - set(LazyConfig.__dataclass_fields__))
        if unknown:
            raise ValueError(f"LazyConfig has no field {', '.join(unknown)}")
        n = self._config.num_steps
        if changes.get("num_steps", n) != n:
            raise ValueError(f"the gates are for {n} steps; attach new gates for {changes['num_steps']}")
        config = replace(self._config, **changes)
        if config.reuse != self._config.reuse:
            self._fitted, self._cell_weights = None, {}
        gates = isinstance(self._decider, Gates)  # their thresholds come from the config
        self._configure(config, Gates(config, self.kinds) if gates else self._decider)

    def set_mode(self, mode: str):
        """"hard", "soft" or "full" (see the class). Rows that ran in another mode count as just
        computed for the skip cap."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose {', '.join(MODES)}")
        if mode != self._mode:
            for st in self._branches:
                st.age = {}
        self._mode = mode

    def force(self, mask: torch.Tensor | None):
        """Decide by a skip schedule (True = skip) of shape (N, L, 2[, B]) by class or (N, L, M[, B])
        by site (see `site_mask`), in place of the current decider; None: back to the gates."""
        self._configure(self._config, Gates(self._config, self.kinds) if mask is None
                        else SkipSchedule(self.site_mask(mask), self.kinds))

    def set_policy(self, policy: Decider | None):
        """Decide by a training-free policy (`policies.make_policy`) or any other decider, in place
        of the current one; None: back to the gates."""
        if policy is not None and not isinstance(policy, Decider):
            raise ValueError(f"a policy must be a lazydit decider (policies.make_policy), got {type(policy).__name__}")
        self._configure(self._config, policy if policy is not None else Gates(self._config, self.kinds))
        self.reset()

    def set_fitted(self, weights: torch.Tensor | None):
        """The fitted operator's forecast weights (N, L, M, P), NaN where a cell keeps the Lagrange
        weights; None: Lagrange everywhere until fitted."""
        if weights is not None:
            shape = (self._config.num_steps, self.depth, self.num_kinds, self._order + 1)
            if not self._fit_op or tuple(weights.shape) != shape:
                raise ValueError(f"reuse weights of shape {tuple(weights.shape)} do not fit the operator "
                                 f"{self._config.reuse!r}" + (f", which needs {shape}" if self._fit_op else ""))
            if bool(torch.isinf(weights).any()):
                raise ValueError("infinite reuse weights")
            weights = weights.float()
        self._fitted, self._cell_weights = weights, {}

    def set_correction(self, correction: InputCorrection | None):
        """The input correction of the fitted forecast; None: none."""
        if correction is not None:
            if not isinstance(correction, InputCorrection):
                raise ValueError(f"an input correction must be an InputCorrection, got {type(correction).__name__}")
            if correction.u.shape[1:4] != (self.depth, self.num_kinds, self.dim):
                raise ValueError(f"an input correction of shape {tuple(correction.u.shape)} does not fit a model of "
                                 f"depth {self.depth}, {self.num_kinds} site kinds and width {self.dim}")
            if correction.groups > 1 and correction.num_steps != self._config.num_steps:
                raise ValueError(f"an input correction for {correction.num_steps} steps does not fit "
                                 f"{self._config.num_steps}-step gates")
        self._correction = correction
        self._refresh_inputs()

    @contextmanager
    def fit_reuse(self, correction_stats: CorrectionFit | None = None):
        """Within: every skipped cell also computes its true output and fits its forecast weights to
        it (least squares over the rows that skipped), and, given `correction_stats`, adds the input
        correction's normal equations there. The weights stay fitted afterwards."""
        if not self._fit_op:
            raise ValueError(f"reuse operator {self._config.reuse!r} has no weights to fit; use fit1..fit4")
        if correction_stats is not None and correction_stats.gram.shape[1:4] != (self.depth, self.num_kinds, self.dim):
            raise ValueError(f"correction statistics of shape {tuple(correction_stats.gram.shape)} do not fit a "
                             f"model of depth {self.depth}, {self.num_kinds} site kinds and width {self.dim}")
        self._fitting, self._correction_stats = True, correction_stats
        self._refresh_inputs()
        try:
            yield self
        finally:
            self._fitting, self._correction_stats = False, None
            self._refresh_inputs()

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
        n = self._config.num_steps
        lo, hi = (int(k.min()), int(k.max())) if torch.is_tensor(k) else (k, k)
        if not 0 <= lo <= hi < n:
            raise ValueError(f"step {hi if hi >= n else lo} outside the {n}-step gates")
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

    def stats(self) -> LazyStats:
        ran = [st for st in self._branches if st.skips is not None]
        n = self._config.num_steps
        if ran:
            skips = torch.cat([st.skip_record().cpu() for st in ran], dim=-1)
            steps_run = min(max(int(st.step) for st in ran) + 1, n)
        else:
            skips, steps_run = torch.zeros(n, self.depth, self.num_kinds, 0, dtype=torch.bool), 0
        present = None if bool(self.present.all()) else self.present
        return LazyStats(skips=skips, steps_run=steps_run, kinds=self.kinds, present=present)

    def site_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A (N, L, 2[, B]) mask by class (column 0 attention-like, 1 feed-forward-like sites) as
        the (N, L, M[, B]) mask of this controller's sites; a (N, L, M[, B]) mask as it is. So
        `patterns.every_nth(N, ctrl.depth, 2)` means the same for every family."""
        n, l, m = self._config.num_steps, self.depth, self.num_kinds
        if mask.dim() < 3 or mask.shape[:2] != (n, l) or mask.shape[2] not in (2, m):
            raise ValueError(f"forced mask must start with shape ({n}, {l}, 2) or ({n}, {l}, {m}), got {tuple(mask.shape)}")
        if mask.shape[2] == m:
            return mask.bool()
        mask = mask.bool()
        both = mask[:, :, :1] & mask[:, :, 1:2]
        return torch.cat([mask, both], dim=2)[:, :, [kind_class(k) for k in self.kinds]]

    # ---- the gates --------------------------------------------------------------------
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

    # ---- every wrapped module call ------------------------------------------------------
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
        st = self.state
        if not st.active:
            return fn(z, *args, **kwargs)
        if self._parameters[self.kinds[0]].device != z.device:  # the model was moved after the gates were attached
            self.to(z.device)
        key, k = (layer, kind), st.step
        hist = st.hist.get(key)
        per_row = torch.is_tensor(k)  # training batches mix steps
        if hist is None or hist.values.shape[1] != z.shape[0] or (bool((k == 0).all()) if per_row else k == 0):
            return self._first_call(key, fn, z, args, kwargs)
        b = z.shape[0]
        if self._mode == "hard":
            compute, n = self._decide(self, layer, kind, z)
        elif self._mode == "full":
            compute, n = None, b
        else:
            return self._soft(key, fn, z, hist, args, kwargs)
        kf = k if per_row else float(k)
        if n == b:
            out = fn(z, *args, **kwargs)
            st.hist[key] = hist.push(out, kf)
            if self._track_inputs and not per_row and key in st.inputs:
                st.inputs[key] = st.inputs[key].push(z, kf)
        elif n == 0:
            truth = fn(z, *args, **kwargs) if self._fitting and not per_row else None
            corrected = self._track_inputs and not per_row and key in st.inputs
            out = self._skip_value(layer, kind, kf, hist, truth, z if corrected else None)
            self._record(layer, kind, b, True)
        else:
            out = self._mixed(key, fn, z, hist, compute, n, args, kwargs)
        if self._observe is not None:
            self._observe(self, layer, kind, z, out, compute if compute is not None else torch.full((b,), n == b, device=z.device))
        return out

    def _first_call(self, key, fn, z, args, kwargs):
        """No usable history (step 0, another batch, primed for other rows): compute, and start the
        site's histories."""
        st, k = self.state, self.state.step
        out = fn(z, *args, **kwargs)
        if torch.is_tensor(k):  # per-row steps (training batches) keep one output: a later forecast there is primed
            st.hist[key] = History.start(out, 0.0, 0)
        else:
            st.hist[key] = History.start(out, float(k), self._order)
            if self._track_inputs:
                st.inputs[key] = History.start(z, float(k), 1)
            if st.skips is None:
                self._start_record(z.shape[0])
        st.age.pop(key, None)  # fresh: just computed
        if self._observe is not None:
            self._observe(self, key[0], key[1], z, out, torch.full((z.shape[0],), True, device=z.device))
        return out

    def _mixed(self, key, fn, z, hist, compute, n, args, kwargs):
        """Rows part ways: the computing rows run the module on their own, the others take the
        reuse operator's value."""
        st, (layer, kind), b = self.state, key, z.shape[0]
        k = st.step if torch.is_tensor(st.step) else float(st.step)
        idx = torch.nonzero_static(compute, size=n)[:, 0]  # n is known: no second sync for the shape
        st.inputs.pop(key, None)  # a shared input history no longer exists
        sub = fn(z[idx], *_rows(args, idx, b), **_rows(kwargs, idx, b))
        skipping = ~compute
        truth = fn(z, *args, **kwargs) if self._fitting and not torch.is_tensor(k) else None
        out = self._skip_value(layer, kind, k, hist, truth, skipping=skipping).clone()
        out[idx] = sub.to(out.dtype)
        st.hist[key] = hist.push(sub, k, idx)
        self._record(layer, kind, b, skipping)
        return out

    def _soft(self, key, fn, z, hist, args, kwargs):
        """Training the gates: the module's output and the reuse operator's value, mixed by the score."""
        st, (layer, kind), k = self.state, key, self.state.step
        s = self.score(kind, layer, z)  # (B,)
        st.soft_scores.append((kind, layer, s))
        out = fn(z, *args, **kwargs)
        reuse = hist.forecast(k if torch.is_tensor(k) else float(k))
        sv = s.to(out.dtype).view(-1, *([1] * (out.dim() - 1)))
        out = sv * out + (1 - sv) * reuse
        self._record(layer, kind, z.shape[0], (s < self._config.threshold(kind)).detach())
        st.hist[key] = History.start(out, 0.0, 0)
        return out

    def _start_record(self, batch: int):
        # On the decisions' device: recording them costs no copy to the host.
        self.state.skips = torch.zeros(self._config.num_steps, self.depth, self.num_kinds, batch, dtype=torch.bool,
                                       device=self._parameters[self.kinds[0]].device)

    def _record(self, layer: int, kind: str, batch: int, skipped):
        """Store a skip of the current step: True for the whole batch, or the (B,) rows that skipped.
        The record starts all False, so a call that computed costs nothing."""
        st = self.state
        if torch.is_tensor(st.step):
            return
        if st.skips is None:
            self._start_record(batch)
        if skipped is True:
            # Noted in a list, written at the next read: a tensor write per skipped call cost more
            # than the rest of the call's bookkeeping (5 us on a CPU; on a GPU, a kernel launch).
            st.batch_skips.append((st.step, layer, self._columns[kind]))
        else:
            st.skip_record()[st.step, layer, self._columns[kind]] = skipped

    def _skip_value(self, layer, kind, k, hist, truth=None, z=None, skipping=None):
        """The reuse operator's value for every row. `truth`: the module's true output, given while
        fitting: the cell's weights are first fitted to it on the rows that skip (`skipping`: bool
        (B,); None = all). `z`: the module's input, given when the whole batch skips and inputs are
        tracked (input correction)."""
        if not self._fit_op or torch.is_tensor(k):
            return hist.forecast(k)
        k = int(k)
        m = self._columns[kind]
        if truth is not None:
            if self._fitted is None:
                self._fitted = torch.full((self._config.num_steps, self.depth, self.num_kinds, self._order + 1), float("nan"))
            rows = skipping.nonzero(as_tuple=True)[0] if skipping is not None else torch.arange(truth.shape[0], device=truth.device)
            self._fitted[k, layer, m] = fit_weights(hist.rows(rows), truth[rows], float(k))
            self._cell_weights.pop((k, layer, m), None)
        out = hist.forecast(float(k), self._weights_of(k, layer, m))
        if z is None or z.shape != out.shape:  # joint attention (image in, image and text out): no correction
            return out
        dz = z - self.state.inputs[(layer, kind)].forecast(float(k))
        if truth is not None and self._correction_stats is not None:
            self._correction_stats.add(k, layer, m, dz, truth - out)
        if self._correction is not None:
            out = self._correction.add_to(out, dz, k, layer, m)
        return out

    def _weights_of(self, k: int, layer: int, m: int) -> list | None:
        """The fitted forecast weights of one cell as Python floats, None where it keeps Lagrange's;
        checked once per cell, not at every skipped call (a host sync each)."""
        if self._fitted is None:
            return None
        key = (k, layer, m)
        if key not in self._cell_weights:
            row = self._fitted[k, layer, m]
            self._cell_weights[key] = row.tolist() if bool(torch.isfinite(row).all()) else None
        return self._cell_weights[key]


_EAGER: dict = {}


def _kept_out_of_compile() -> Callable:
    if "forward" not in _EAGER:
        _EAGER["forward"] = torch.compiler.disable(LazyController._lazy_forward)
    return _EAGER["forward"]


def _rows(obj, idx, batch):
    """Select rows `idx` of every batched tensor among a module's extra arguments."""
    if isinstance(obj, dict):
        return {k: _rows(v, idx, batch) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_rows(v, idx, batch) for v in obj)
    if torch.is_tensor(obj) and obj.dim() > 0 and obj.shape[0] == batch:
        return obj[idx]
    return obj
