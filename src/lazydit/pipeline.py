"""Generation: per-image seeded noise, DiT-convention CFG, and the lazy controller's lifecycle."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from .core.diffusion.samplers import sample_loop
from .core.diffusion.noise_schedule import NoiseSchedule
from .core.lazy import LazyStats, get_controller


def cfg_model_fn(model: nn.Module, labels: torch.Tensor, cfg_scale: float, guide_channels: int | None = 3):
    """model_fn(x, t) with classifier-free guidance in DiT's convention.

    The batch is doubled into (cond, null) rows; the null class is num_classes. Guidance acts
    on the first `guide_channels` output channels only (DiT's default 3, kept "for exact
    reproducibility" of its results); None guides every eps channel. Other channels (the rest
    of eps, and the learned variance) come from the conditional half, as in DiT.
    """
    if not (math.isfinite(cfg_scale) and cfg_scale >= 1):  # NaN fails every comparison: test finiteness
        raise ValueError(f"cfg scale must be a finite number >= 1, got {cfg_scale}")
    num_classes = model.config.num_classes
    if cfg_scale == 1:
        return lambda x, t: model(x, t, labels)
    null = torch.full_like(labels, num_classes)
    y = torch.cat([labels, null])
    channels = model.config.in_channels
    gc = channels if guide_channels is None else min(guide_channels, channels)

    def fn(x, t):
        out = model(torch.cat([x, x]), torch.cat([t, t]), y)  # (2B, C_out, H, W)
        cond, uncond = out.chunk(2)
        guided = uncond[:, :gc] + cfg_scale * (cond[:, :gc] - uncond[:, :gc])
        return torch.cat([guided, cond[:, gc:]], dim=1)
    return fn


class SeededNoise:
    """One torch.Generator per image, so image i depends only on seeds[i], never on batching."""

    def __init__(self, seeds, shape, device="cpu"):
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.shape, self.device = tuple(shape), device

    def draw(self) -> torch.Tensor:
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.gens]).to(self.device)


@dataclass
class Generation:
    images: torch.Tensor          # (B, C, H, W) in the model's data range ([-1, 1] for pixels)
    labels: torch.Tensor          # (B,)
    seconds: float                # wall time of the sampling loop
    stats: LazyStats | None       # skip decisions, when the model has lazy gates


def check_labels(labels: torch.Tensor, num_classes: int):
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        raise ValueError(f"class label {int(bad[0])} is out of range [0, {num_classes - 1}]")


def generate(model: nn.Module, labels, seeds, steps: int = 50, cfg_scale: float = 1.5,
             method: str = "ddim", eta: float = 0.0, guide_channels: int | None = 3,
             noise: torch.Tensor | None = None, progress: bool = False) -> Generation:
    """Sample one image per (label, seed). Resets the lazy controller first, if the model has one."""
    cfg = model.config
    device = next(model.parameters()).device
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    check_labels(labels, cfg.num_classes)
    if len(seeds) != len(labels):
        raise ValueError(f"got {len(labels)} labels but {len(seeds)} seeds")
    if len(labels) == 0:  # would reach torch.stack of no noise tensors and fail there, unexplained
        raise ValueError("generate needs at least one label and one seed, got none")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= eta <= 1.0:  # also refuses NaN
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if method == "ddpm" and eta != 0.0:
        raise ValueError("eta applies to ddim only; ddpm's noise is fixed by its noise schedule")
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    rng = SeededNoise(seeds, shape, device)
    x = rng.draw() if noise is None else noise.to(device)
    if tuple(x.shape) != (len(labels), *shape):
        raise ValueError(f"noise has shape {tuple(x.shape)}, expected {(len(labels), *shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("the initial noise contains NaN or inf")
    ctrl = get_controller(model)
    if ctrl is not None:
        if ctrl.config.num_steps != steps:
            raise ValueError(f"the model's gates are for {ctrl.config.num_steps} steps, but sampling runs {steps}")
        ctrl.reset()
    sched = NoiseSchedule.respaced(steps)
    fn = cfg_model_fn(model, labels.to(device), cfg_scale, guide_channels)
    t0 = time.perf_counter()
    img = sample_loop(fn, sched, x, method=method, eta=eta, noise_fn=lambda k: rng.draw(),
                      on_step=(lambda k, _x: ctrl.set_step(k)) if ctrl is not None else None, progress=progress)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if ctrl is not None:
        ctrl.finish()
    if not bool(torch.isfinite(img).all()):
        raise ValueError("sampling produced NaN or inf: check the checkpoint's weights, the gate file and "
                         "the sampler settings")
    return Generation(images=img, labels=labels, seconds=seconds, stats=ctrl.stats() if ctrl is not None else None)
