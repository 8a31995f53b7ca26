"""What a skipped module returns: a copy of its last computed output (the paper, FORA) or a
forecast from its last computed outputs (TaylorSeer-style finite differences).

Rows skip independently, so every row keeps its own history: the last `order + 1` outputs it
computed and the step at which it computed each. The forecast is the Lagrange extrapolation
through those points, evaluated at the current step; with points at steps k0 > k1 and order 1
this is y0 + (y0 - y1) * (k - k0) / (k0 - k1). A row with fewer points than the order asks for
uses the highest order its points allow (one point: a copy).

The "fit" operators keep the same history but replace the Lagrange weights of each
(step, layer, module) by weights fitted by least squares to the true outputs on calibration
images (`LazyController.fit_reuse`): the extrapolation then follows each module's own curvature
instead of assuming a polynomial in the step index.
"""
from __future__ import annotations

import torch

OPERATORS = {"copy": 0, "taylor1": 1, "taylor2": 2, "fit1": 1, "fit2": 2, "fit3": 3, "fit4": 4}


def is_fitted(name: str) -> bool:
    return name.startswith("fit")


def operator_order(name: str) -> int:
    if name not in OPERATORS:
        raise ValueError(f"unknown reuse operator {name!r}; choose {', '.join(OPERATORS)}")
    return OPERATORS[name]


class History:
    """The last computed outputs of one module, newest first, per row.

    A ring: slot (head + i) % P holds the i-th newest output. A push of the whole batch writes one
    slot in place and moves the head, where shifting every slot (a concatenation of P outputs, for
    the outputs and again for the inputs of a corrected site) was the largest cost around a skipped
    call on DiT-XL/2. The object a push is called on is then stale: callers keep only the returned
    history, as the controller does.

    While every row computed at the same steps, as under any schedule shared by the batch, the
    history is `shared`: (steps newest first, count) as Python numbers. Its forecast weights are
    then a few floats and its pushes touch no tensor but the slot, with no small tensor ops or host
    syncs per module call; the per-row `steps` and `count` tensors are built only when rows part."""

    def __init__(self, values: torch.Tensor, steps: torch.Tensor | None = None, count: torch.Tensor | None = None,
                 shared: tuple | None = None, head: int = 0):
        if shared is None and (steps is None or count is None):
            raise ValueError("a history without shared steps needs per-row steps and counts")
        self.values = values  # (P, B, T, D): P = order + 1 slots, in ring order from `head`
        self._steps = steps   # (P, B) float in ring order, or None while shared
        self._count = count   # (B,) long: how many slots hold real outputs (0..P), or None while shared
        self.shared = shared
        self.head = head      # slot of the newest output

    @classmethod
    def start(cls, out: torch.Tensor, step: float, order: int) -> "History":
        values = out.new_zeros((order + 1, *out.shape))  # zeros: unused slots weigh 0 in a forecast, and 0 * NaN is NaN
        values[0] = out
        return cls(values, shared=((float(step),), 1))

    @property
    def steps(self) -> torch.Tensor:
        """(P, B) float: the step at which each slot was computed, in ring order."""
        if self._steps is None:
            pts, n = self.shared
            p, b = self.values.shape[:2]
            newest_first = [pts[min(i, n - 1)] for i in range(p)]  # unused slots: never read (count)
            ring = [newest_first[(i - self.head) % p] for i in range(p)]
            self._steps = torch.tensor(ring, device=self.values.device)[:, None].expand(p, b).contiguous()
        return self._steps

    @property
    def count(self) -> torch.Tensor:
        if self._count is None:
            self._count = torch.full((self.values.shape[1],), self.shared[1], dtype=torch.long, device=self.values.device)
        return self._count

    def slot(self, i: int) -> torch.Tensor:
        """The i-th newest output of every row: (B, T, D)."""
        return self.values[(self.head + i) % self.values.shape[0]]

    def ordered(self) -> "History":
        """The same history with slot 0 newest (head 0): what per-row updates and fits index."""
        if self.head == 0:
            return self
        order = [(self.head + i) % self.values.shape[0] for i in range(self.values.shape[0])]
        return History(self.values[order], self.steps[order], self.count, self.shared)

    def push(self, out: torch.Tensor, step: float, rows: torch.Tensor | None = None) -> "History":
        """A new history in which `rows` (all when None) computed `out` (rows of `out` = `rows`)."""
        p = self.values.shape[0]
        if rows is None and self.shared is not None:
            head = (self.head - 1) % p  # the oldest slot becomes the newest
            if p == 1:  # copy: the history is just the last output, no need to copy it
                return History(out[None], shared=((float(step),), 1))
            self.values[head].copy_(out)
            pts, n = self.shared
            return History(self.values, shared=(((float(step),) + pts)[:p], min(n + 1, p)), head=head)
        if p == 1:
            if rows is None:
                return History(out[None], torch.full_like(self.steps, step), self.count.clamp(max=1))
            values, steps = self.values.clone(), self.steps.clone()
            values[0, rows] = out.to(values.dtype)
            steps[0, rows] = step
            count = self.count.clone()
            count[rows] = 1
            return History(values, steps, count)
        if rows is None:
            head = (self.head - 1) % p
            self.values[head].copy_(out)
            steps = self.steps.clone()
            steps[head].fill_(step)
            return History(self.values, steps, (self.count + 1).clamp(max=p), None, head)
        old = self.ordered()
        values, steps, count = old.values.clone(), old.steps.clone(), old.count.clone()
        values[1:, rows] = old.values[:-1, rows]
        values[0, rows] = out.to(values.dtype)
        steps[1:, rows] = old.steps[:-1, rows]
        steps[0, rows] = step
        count[rows] = (count[rows] + 1).clamp(max=values.shape[0])
        return History(values, steps, count)

    def forecast(self, step: float, fitted=None) -> torch.Tensor:
        """The operator's output at `step` for every row: (B, T, D). `fitted` (P,) replaces the
        Lagrange weights of the rows whose history is full (others keep Lagrange): a tensor (NaN:
        not fitted), or, on the hot path, a list of floats the caller validated once."""
        if self.values.shape[0] == 1:
            return self.values[0]
        if self.shared is not None and not torch.is_tensor(step):
            pts, n = self.shared
            if isinstance(fitted, torch.Tensor):
                fitted = fitted.tolist() if bool(torch.isfinite(fitted).all()) else None
            w = fitted if n == self.values.shape[0] and fitted is not None else [_basis(pts[:n], i, step) for i in range(n)]
            return self.weighted_sum(w)
        h = self.ordered()
        w = lagrange_weights(h.steps, h.count, step)  # (P, B)
        if fitted is not None and not isinstance(fitted, torch.Tensor):
            fitted = torch.tensor(fitted)
        if fitted is not None and bool(torch.isfinite(fitted).all()):
            full = h.count == h.values.shape[0]
            w = torch.where(full[None], fitted.to(w)[:, None], w)
        return torch.einsum("pb,pb...->b...", w.to(h.values.dtype), h.values)

    def weighted_sum(self, w: list) -> torch.Tensor:
        """sum_i w[i] * (i-th newest output), w newest first; unused slots weigh 0. One
        matrix-vector product over the ring, where a scaled copy and P - 1 in-place adds were
        P passes over the outputs and P dispatches."""
        p = self.values.shape[0]
        ring = [0.0] * p
        for i, wi in enumerate(w):
            ring[(self.head + i) % p] = wi
        return (_weights_tensor(tuple(ring), self.values) @ self.values.view(p, -1)).view(self.values.shape[1:])

    def rows(self, idx: torch.Tensor) -> "History":
        return History(self.values[:, idx], self.steps[:, idx], self.count[idx], self.shared, self.head)


_WEIGHTS: dict = {}


def _weights_tensor(ring: tuple, like: torch.Tensor) -> torch.Tensor:
    """`ring` as a tensor beside `like`. A schedule uses a few hundred distinct weight vectors
    (fitted cells, Lagrange points, ring heads), each made once: building a small tensor from
    Python floats costs as much as the forecast's product at batch 1, and on a GPU a copy."""
    key = (ring, like.dtype, like.device)
    w = _WEIGHTS.get(key)
    if w is None:
        if len(_WEIGHTS) >= 65536:  # bounded: many schedules in one process
            _WEIGHTS.clear()
        w = _WEIGHTS[key] = torch.tensor(ring, dtype=like.dtype, device=like.device)
    return w


def _basis(points, i: int, step: float) -> float:
    """The i-th Lagrange basis polynomial through `points`, evaluated at `step`."""
    out = 1.0
    for j, pj in enumerate(points):
        if j != i:
            out *= (step - pj) / (points[i] - pj)
    return out


def lagrange_weights(steps: torch.Tensor, count: torch.Tensor, step: float) -> torch.Tensor:
    """(P, B) weights w with forecast = sum_p w[p] * value[p]: the Lagrange basis through the
    first count[b] points of row b, evaluated at `step`; unused slots get weight 0."""
    p, b = steps.shape
    w = torch.zeros(p, b, dtype=torch.float64, device=steps.device)
    s = steps.double()
    for n in range(1, p + 1):  # rows holding n points extrapolate with order n - 1
        rows = count == n
        if not bool(rows.any()):
            continue
        for i in range(n):
            term = torch.ones(b, dtype=torch.float64, device=steps.device)
            for j in range(n):
                if j != i:
                    term = term * (step - s[j]) / (s[i] - s[j])
            w[i] = torch.where(rows, term, w[i])
    return w.float()


def fit_weights(hist: History, target: torch.Tensor, step: float, ridge: float = 1e-4) -> torch.Tensor:
    """(P,) weights w minimising |sum_p w[p] * value[p] - target|^2 over the rows whose history is
    full, shrunk towards the Lagrange weights (ridge, relative to the data's scale) so that a
    degenerate history falls back to the polynomial forecast. NaN when no row has a full history."""
    hist = hist.ordered()
    p = hist.values.shape[0]
    full = hist.count == p
    if not bool(full.any()):
        return torch.full((p,), float("nan"))
    h = hist.values[:, full].double().flatten(1)          # (P, M)
    y = target[full].double().flatten()                     # (M,)
    prior = lagrange_weights(hist.steps[:, full][:, :1], hist.count[full][:1], step)[:, 0].double()
    gram = h @ h.T
    lam = ridge * gram.diagonal().mean().clamp_min(1e-30)
    w = torch.linalg.solve(gram + lam * torch.eye(p, dtype=gram.dtype), h @ y + lam * prior)
    return w.float().cpu()
