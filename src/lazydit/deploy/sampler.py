"""The frozen-schedule sampler in numpy: DDIM with classifier-free guidance, the schedule's
skip decisions, the reuse operator (copy or forecast from a module's last computed outputs)
and the input correction's input forecast. The network pieces come from a backend (onnxruntime
sessions, or compiled torch parts), so the arithmetic here is the same for both.

It mirrors `lazydit.core.lazy.controller.LazyController` on a schedule shared by the batch and
`lazydit.core.diffusion.samplers.ddim_step`, operation for operation, so that samples agree with
torch sampling to float32 rounding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Plan:
    """Everything a frozen generation needs besides the network (read from a bundle manifest)."""

    mask: np.ndarray            # (N, L, 2) bool, True = skip; step 0 computes
    order: int                  # reuse operator order: 0 copy, 1-4 forecast from order+1 outputs
    fitted: np.ndarray | None   # (N, L, 2, order+1) fitted forecast weights, NaN = Lagrange
    correction: tuple | None    # input correction U (G, L, 2, D, r), V (G, L, 2, r, D); step k uses group k*G//N
    timesteps: np.ndarray       # (N,) int64: the model's timestep at step k
    alphas_cumprod: np.ndarray  # (N,) float64, by noise-schedule index i = N-1-k
    cfg_scale: float
    guide_channels: int | None  # CFG on the first this-many eps channels; None: all
    eta: float                  # DDIM noise
    image_shape: tuple          # (C, H, W) of x
    num_classes: int            # the null (CFG) label is num_classes


class Backend(Protocol):
    def embed(self, x, t, y): ...                       # -> (h (B, T, D), c (B, Dc))
    def block(self, layer, skips, h, c, feeds): ...     # feeds: {skipped module: (y_reuse[, z_hat, U, V])}
                                                        # -> (h, {module: (y, z or None)} of computed modules)
    def final(self, h, c): ...                          # -> (B, C_out, H, W)


class _History:
    """The last computed values of one module, newest first, at the steps they were computed."""

    def __init__(self, size: int):
        self.size, self.steps, self.values = size, [], []

    def push(self, value: np.ndarray, step: int):
        self.steps = ([float(step)] + self.steps)[: self.size]
        self.values = ([value] + self.values)[: self.size]

    def forecast(self, step: int, fitted: np.ndarray | None = None) -> np.ndarray:
        if self.size == 1:
            return self.values[0]
        n = len(self.values)
        if n == self.size and fitted is not None and bool(np.isfinite(fitted).all()):
            w = [float(v) for v in fitted]
        else:  # the Lagrange basis through the computed steps, at this step
            w = [math.prod((step - pj) / (pi - pj) for j, pj in enumerate(self.steps) if j != i)
                 for i, pi in enumerate(self.steps)]
        out = self.values[0] * np.float32(w[0])
        for i in range(1, n):
            out += self.values[i] * np.float32(w[i])
        return out


def seeded_noise(seeds, shape) -> np.ndarray:
    """Per-image noise from numpy generators (image i depends only on seeds[i]). Not torch's
    stream: the same seed gives other images than `lazydit sample`; pass torch's noise to match."""
    return np.stack([np.random.default_rng(int(s)).standard_normal(shape, dtype=np.float32) for s in seeds])


def _ddim_step(plan: Plan, eps: np.ndarray, x: np.ndarray, i: int, noise) -> np.ndarray:
    """`lazydit.core.diffusion.samplers.ddim_step`: float64 coefficients cast to float32, as ADM."""
    ac64 = plan.alphas_cumprod
    f = np.float32
    ac, ac_prev = f(ac64[i]), f(ac64[i - 1] if i > 0 else 1.0)
    recip, recipm1 = f((1.0 / ac64[i]) ** 0.5), f((1.0 / ac64[i] - 1) ** 0.5)
    x0 = recip * x - recipm1 * eps
    eps = (recip * x - x0) / recipm1
    sigma = f(plan.eta) * np.sqrt((1 - ac_prev) / (1 - ac)) * np.sqrt(1 - ac / ac_prev)
    mean = x0 * np.sqrt(ac_prev) + np.sqrt(1 - ac_prev - sigma ** 2) * eps
    return mean + sigma * noise if noise is not None else mean


def _guided(plan: Plan, backend: Backend, st: dict, x, t, labels):
    """eps of one step with classifier-free guidance in DiT's convention (`lazydit.pipeline`)."""
    c_in = plan.image_shape[0]
    if plan.cfg_scale == 1:
        return _network(plan, backend, st, x, t, labels)
    null = np.full_like(labels, plan.num_classes)
    out = _network(plan, backend, st, np.concatenate([x, x]), np.concatenate([t, t]), np.concatenate([labels, null]))
    cond, uncond = np.split(out, 2)
    gc = c_in if plan.guide_channels is None else min(plan.guide_channels, c_in)
    guided = uncond[:, :gc] + np.float32(plan.cfg_scale) * (cond[:, :gc] - uncond[:, :gc])
    return np.concatenate([guided, cond[:, gc:]], axis=1)


def _network(plan: Plan, backend: Backend, st: dict, x, t, y):
    """One network evaluation at step st["step"]: skipped modules get their reuse value (and
    the forecast of their input) as feeds; computed ones join the histories."""
    k, size = st["step"], plan.order + 1
    h, c = backend.embed(x, t, y)
    for layer in range(plan.mask.shape[1]):
        skips = tuple(bool(s) for s in plan.mask[k, layer])
        feeds = {}
        for m, skip in enumerate(skips):
            if skip:
                fitted = plan.fitted[k, layer, m] if plan.fitted is not None else None
                feeds[m] = (st["outputs"][layer, m].forecast(k, fitted),)
                if plan.correction is not None:
                    u, v = plan.correction
                    g = k * u.shape[0] // plan.mask.shape[0]
                    feeds[m] += (st["inputs"][layer, m].forecast(k), u[g, layer, m], v[g, layer, m])
        h, results = backend.block(layer, skips, h, c, feeds)
        for m, (y_out, z) in results.items():
            st["outputs"].setdefault((layer, m), _History(size)).push(y_out, k)
            if plan.correction is not None:
                st["inputs"].setdefault((layer, m), _History(2)).push(z, k)  # order-1 input forecast
    return backend.final(h, c)


def sample(backend: Backend, plan: Plan, labels, noise: np.ndarray, rngs=None) -> np.ndarray:
    """Sample one image per label from `noise` (B, C, H, W) with the frozen schedule; `rngs`:
    per-image numpy generators for DDIM's noise when eta > 0."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    x = np.ascontiguousarray(noise, dtype=np.float32)
    if x.shape != (len(labels), *plan.image_shape):
        raise ValueError(f"noise has shape {x.shape}, expected {(len(labels), *plan.image_shape)}")
    if labels.size and (labels.min() < 0 or labels.max() >= plan.num_classes):
        raise ValueError(f"class labels must be in [0, {plan.num_classes - 1}]")
    if plan.eta > 0 and rngs is None:
        raise ValueError("eta > 0 needs one numpy generator per image for DDIM's noise")
    n = plan.mask.shape[0]
    st = {"step": 0, "outputs": {}, "inputs": {}}  # this generation's histories: (layer, module) -> _History
    for k in range(n):
        i = n - 1 - k  # step k evaluates noise-schedule index N-1-k
        st["step"] = k
        t = np.full(len(labels), plan.timesteps[k], dtype=np.int64)
        eps = _guided(plan, backend, st, x, t, labels)[:, : plan.image_shape[0]]
        noise_k = np.stack([g.standard_normal(plan.image_shape, dtype=np.float32) for g in rngs]) \
            if plan.eta > 0 and i > 0 else None
        x = _ddim_step(plan, eps, x, i, noise_k)
    if not np.isfinite(x).all():
        raise ValueError("sampling produced NaN or inf: check the bundle's graphs and schedule")
    return x
