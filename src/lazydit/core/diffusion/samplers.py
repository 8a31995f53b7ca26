"""DDIM and DDPM ancestral sampling as pure functions of a `model_fn(x, t)`.

The sampler never imports a model. `model_fn` returns the raw network output: eps, or
(eps, variance-interpolation) stacked on channels when the model learns sigma (DiT).
Step k of a generation (k = 0 is the first, noisiest step) evaluates noise-schedule index N-1-k.
"""
from __future__ import annotations

from typing import Callable

import torch

from .noise_schedule import NoiseSchedule, extract


def split_output(out: torch.Tensor, channels: int):
    """(eps, var_values or None) from a raw model output with `channels` image channels."""
    if out.shape[1] == 2 * channels:
        return out[:, :channels], out[:, channels:]
    return out, None


def predict_xstart(sched: NoiseSchedule, x, i, eps):
    # Coefficients formed in float64 before the cast, as ADM does.
    ac = sched.alphas_cumprod
    return extract((1.0 / ac) ** 0.5, i, x) * x - extract((1.0 / ac - 1) ** 0.5, i, x) * eps


def ddim_step(sched: NoiseSchedule, out, x, i: int, eta: float = 0.0, noise=None):
    """One DDIM update from noise-schedule index i to i-1 (ADM's ddim_sample, clip_denoised=False)."""
    eps, _ = split_output(out, x.shape[1])
    x0 = predict_xstart(sched, x, i, eps)
    # Re-derive eps from x0 exactly as ADM does, so results match the reference bit for bit.
    ac, ac_prev = extract(sched.alphas_cumprod, i, x), extract(sched.alphas_cumprod_prev, i, x)
    eps = (extract((1.0 / sched.alphas_cumprod) ** 0.5, i, x) * x - x0) / extract(
        (1.0 / sched.alphas_cumprod - 1) ** 0.5, i, x)
    sigma = eta * ((1 - ac_prev) / (1 - ac)).sqrt() * (1 - ac / ac_prev).sqrt()
    mean = x0 * ac_prev.sqrt() + (1 - ac_prev - sigma ** 2).sqrt() * eps
    if eta > 0 and noise is not None:  # sample_loop passes no noise at the last step
        mean = mean + sigma * noise
    return mean


def ddpm_step(sched: NoiseSchedule, out, x, i: int, noise=None):
    """One ancestral step; learned sigma uses ADM's LEARNED_RANGE, else FIXED_LARGE (DiT)."""
    eps, var_values = split_output(out, x.shape[1])
    x0 = predict_xstart(sched, x, i, eps)
    ac, ac_prev = extract(sched.alphas_cumprod, i, x), extract(sched.alphas_cumprod_prev, i, x)
    beta = extract(sched.betas, i, x)
    mean = (beta * ac_prev.sqrt() / (1 - ac)) * x0 + ((1 - ac_prev) * (1 - beta).sqrt() / (1 - ac)) * x
    if var_values is not None:
        min_log = extract(sched.posterior_log_variance_clipped, i, x)
        max_log = beta.log()
        frac = (var_values + 1) / 2
        log_var = frac * max_log + (1 - frac) * min_log
    else:
        fixed_large = sched.posterior_variance[1] if i == 0 else sched.betas[i]
        log_var = torch.log(torch.tensor(float(fixed_large), device=x.device))
    if i == 0:
        return mean
    return mean + torch.exp(0.5 * log_var) * noise


def denoise(model_fn: Callable, x: torch.Tensor, timesteps: list, update: Callable,
            on_step: Callable[[int, torch.Tensor], None] | None = None, desc: str | None = None) -> torch.Tensor:
    """The one sampling loop of lazydit, for every sampler: for each step k, `on_step(k, x)` (a lazy
    controller's step, a rollout's record), then `out = model_fn(x, timesteps[k])` without autograd,
    then `x = update(k, out, x)` (a DDIM or DDPM step, or a diffusers scheduler's). `desc`: a
    progress bar's label (None: no bar)."""
    steps = range(len(timesteps))
    if desc is not None:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc=desc, leave=False)
    for k in steps:
        if on_step is not None:
            on_step(k, x)
        with torch.no_grad():
            out = model_fn(x, timesteps[k])
        x = update(k, out, x)
    return x


def sample_loop(
    model_fn: Callable,
    sched: NoiseSchedule,
    x: torch.Tensor,
    method: str = "ddim",
    eta: float = 0.0,
    noise_fn: Callable[[int], torch.Tensor] | None = None,
    on_step: Callable[[int], None] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Run the reverse process from x_T with `denoise`. `on_step(k, x)` fires before the k-th model call."""
    if method not in ("ddim", "ddpm"):
        raise ValueError(f"unknown sampler {method!r}; choose ddim or ddpm")
    n = sched.num_steps
    timesteps = [sched.model_timesteps(n - 1 - k, x.shape[0], x.device) for k in range(n)]  # (B,) original

    def update(k, out, x):
        i = n - 1 - k
        needs_noise = i > 0 and (method == "ddpm" or eta > 0)
        noise = noise_fn(k) if needs_noise else None
        return ddim_step(sched, out, x, i, eta, noise) if method == "ddim" else ddpm_step(sched, out, x, i, noise)
    return denoise(model_fn, x, timesteps, update, on_step, f"{method}-{n}" if progress else None)
