"""Rollouts of the current lazy policy, recorded so that training sees what sampling sees.

A rollout runs the real sampler (hard, thresholded decisions, CFG as at sampling) and keeps,
for every step k >= 1, the state x_k and what each module would return if it skipped at step k
(its reuse operator's value: the cache, or the forecast from its history).
Replaying an entry reproduces exactly the situation the gates of step k face at sampling,
including caches that are many steps stale.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.diffusion.samplers import ddim_step, sample_loop
from ..core.diffusion.noise_schedule import NoiseSchedule
from ..core.lazy import KINDS, LazyController
from ..pipeline import SeededNoise, cfg_model_fn


@dataclass
class Rollout:
    labels: torch.Tensor      # (B,)
    xs: torch.Tensor          # (N, B, C, H, W): x entering step k (index 0 = pure noise)
    caches: torch.Tensor | None  # (S, L, 2, P, T, D) reuse values of S kept (step, image) pairs;
                                 # P = rows per image (2 with CFG: conditional, unconditional)
    slots: dict | None        # (step, image) -> index into caches
    skips: torch.Tensor       # (N, L, 2, R) hard decisions taken
    final: torch.Tensor       # (B, C, H, W) the sample


@torch.no_grad()
def rollout(model, ctrl: LazyController, sched: NoiseSchedule, labels: torch.Tensor, seeds: list[int],
            cfg_scale: float, mode: str = "hard", record_caches: bool = True, keep=None) -> Rollout:
    """Sample with the controller in `mode` ("hard" = as at sampling, "full" = no skipping).

    `keep`: the (step, image) pairs whose reuse values training will draw (None: every step
    >= 1 of every image). Only those are kept, preallocated in the model's dtype: a rollout of
    DiT-XL/2 at 50 steps that kept everything in fp32 would need about 53 GB."""
    device = next(model.parameters()).device
    cfg = model.config
    x = SeededNoise(seeds, (cfg.in_channels, cfg.input_size, cfg.input_size), device).draw()
    fn = cfg_model_fn(model, labels.to(device), cfg_scale)
    ctrl.reset()
    ctrl.set_mode(mode)
    b, n = len(seeds), sched.num_steps
    if keep is None:
        keep = [(k, j) for k in range(1, n) for j in range(b)]
    slots = {pair: i for i, pair in enumerate(sorted(set(keep)))} if record_caches else None
    by_step = {}
    for (k, j), i in (slots or {}).items():
        by_step.setdefault(k, []).append((j, i))
    xs, caches = [], None

    def record(k, x):
        nonlocal caches
        ctrl.set_step(k)
        xs.append(x)
        if k in by_step:
            reuse = ctrl.reuse_values()
            for (l, kind), v in reuse.items():
                if caches is None:
                    caches = v.new_zeros((len(slots), ctrl.depth, 2, v.shape[0] // b, *v.shape[1:]))
                rows = v.view(-1, b, *v.shape[1:])  # (P, B, T, D): CFG rows are [cond..., uncond...]
                for j, i in by_step[k]:
                    caches[i, l, KINDS.index(kind)] = rows[:, j]
    x = sample_loop(fn, sched, x, "ddim", on_step=record)  # the sampler's own loop: what sampling sees
    stats = ctrl.stats()
    ctrl.set_mode("hard")
    return Rollout(labels=labels, xs=torch.stack(xs), caches=caches, slots=slots, skips=stats.skips, final=x)


def rollout_bytes(model_cfg, depth: int, dim: int, num_steps: int, images: int, cfg_rows: bool,
                  record_caches: bool, kept_per_image: int | None = None, itemsize: int = 4) -> int:
    """Peak bytes a rollout holds: every step's state (stacked once at the end) and, on-policy,
    the reuse values of `kept_per_image` steps (default all) per image, for every module."""
    side = model_cfg.input_size // model_cfg.patch_size
    rows = images * (2 if cfg_rows else 1)
    kept = min(num_steps - 1, kept_per_image or num_steps)
    xs = num_steps * images * model_cfg.in_channels * model_cfg.input_size ** 2 * itemsize
    caches = kept * depth * 2 * rows * side * side * dim * itemsize if record_caches else 0
    return 2 * xs + caches


def available_bytes(device) -> int | None:
    """Memory this process could still use on `device` (None when unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def caches_for(ro: Rollout, steps: torch.Tensor, images: torch.Tensor, cfg_rows: bool) -> dict:
    """Controller cache dict for a batch of (step, image) pairs, rows ordered as cfg_model_fn
    orders them: all conditional rows, then all unconditional rows."""
    try:
        idx = torch.tensor([ro.slots[int(k), int(j)] for k, j in zip(steps, images)])
    except KeyError as e:
        raise ValueError(f"the rollout kept no reuse values for (step, image) {e.args[0]}") from None
    sel = ro.caches[idx]  # (n, L, 2, P, T, D)
    sel = sel.permute(3, 0, 1, 2, 4, 5).flatten(0, 1)  # (P * n, L, 2, T, D): cond rows, then uncond
    if not cfg_rows:
        sel = sel[: len(idx)]
    return {(l, kind): sel[:, l, m] for l in range(sel.shape[1]) for m, kind in enumerate(KINDS)}


@torch.no_grad()
def propagation_gains(model, ctrl: LazyController, sched: NoiseSchedule, labels: torch.Tensor, seeds: list[int],
                      cfg_scale: float) -> torch.Tensor:
    """(N,) how much an output error at step k moves the final sample, per unit of error.

    For each step k >= 1 of a full-compute trajectory, every module skips at step k only (the
    typical lazy perturbation), the rest of the trajectory is recomputed in full, and
    gain_k = |final change|^2 / |guided-output change at k|^2. A one-step loss weighted by these
    gains measures errors by their effect on the sample, not on the next step: without it the
    gates learn to skip early, high-noise steps whose local error is small but whose effect on
    the final image is not. Normalised to mean 1 over steps >= 1; step 0 gets 0.
    """
    device = next(model.parameters()).device
    n = sched.num_steps
    if n < 2:
        return torch.zeros(n)
    # About 16 measured steps, log-interpolated between: the curve is smooth (and smoothed below),
    # while each measurement re-runs the rest of the trajectory, O(N^2) forwards for all steps.
    measured = sorted(set(range(1, n, max(1, (n - 1) // 16))) | {n - 1})
    full = rollout(model, ctrl, sched, labels, seeds, cfg_scale, mode="full", record_caches=True,
                   keep=[(k, j) for k in measured for j in range(len(labels))])
    fn = cfg_model_fn(model, labels.to(device), cfg_scale)
    images = torch.arange(len(labels))
    errs, perturbed = [], []  # per measured k: output error at k, state after the perturbed step
    for k in measured:
        i = n - 1 - k
        t = sched.model_timesteps(i, len(labels), device)
        x = full.xs[k]
        ctrl.reset()
        ctrl.set_mode("full")
        ctrl.set_step(k)
        out_full = fn(x, t)
        ctrl.reset()
        ctrl.prime(caches_for(full, torch.full_like(images, k), images, cfg_scale > 1))
        ctrl.set_mode("hard")
        ctrl.force(torch.ones(n, ctrl.depth, 2, dtype=torch.bool))
        ctrl.set_step(k)
        out_skip = fn(x, t)
        ctrl.force(None)
        c = x.shape[1]  # eps channels only: DDIM never reads the learned sigma
        errs.append((out_skip[:, :c] - out_full[:, :c]).pow(2).mean())
        perturbed.append(ddim_step(sched, out_skip, x, i))
    # The rest of every perturbed trajectory in full compute, all in one batch that each joins
    # after its own perturbed step: the same forwards as one trajectory at a time, far fewer calls.
    ctrl.reset()
    ctrl.finish()  # plain forwards: no gates, no caches
    x, joined = perturbed[0][:0], []
    for j in range(measured[0] + 1, n):
        new = [m for m, k in enumerate(measured) if k + 1 == j]
        x = torch.cat([x] + [perturbed[m] for m in new])
        joined += new
        step_fn = cfg_model_fn(model, labels.repeat(len(joined)).to(device), cfg_scale)
        x = ddim_step(sched, step_fn(x, sched.model_timesteps(n - 1 - j, x.shape[0], device)), x, n - 1 - j)
    finals = dict(zip(joined, x.split(len(labels))))
    gains = torch.zeros(n)
    for m, k in enumerate(measured):
        final = finals.get(m, perturbed[m])  # the last step's perturbation is its own final state
        gains[k] = (final - full.final).pow(2).mean() / errs[m].clamp_min(1e-20)
    ctrl.reset()
    ctrl.set_mode("hard")
    logm = gains[measured].clamp_min(1e-12).log().numpy()
    logg = torch.from_numpy(np.interp(np.arange(1, n), measured, logm)).float()
    # Few images make single-step gains noisy; smooth in log space over neighbouring steps.
    pad = torch.cat([logg[:1].expand(2), logg, logg[-1:].expand(2)])
    smooth = torch.cat([torch.zeros(1), pad.unfold(0, 5, 1).mean(-1).exp()])
    return smooth * (n - 1) / smooth[1:].sum().clamp_min(1e-20)
