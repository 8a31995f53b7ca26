"""The noise schedule: the DiT/ADM linear betas and their respacing to N sampling steps.

`NoiseSchedule(N)` reproduces `create_diffusion(str(N))` of facebookresearch/DiT: the kept
timesteps, the recomputed betas of the spaced process, and the map from step index to the
original timestep that the model is conditioned on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000


def linear_betas(num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    scale = 1000 / num_timesteps  # ADM scales the endpoints so any T keeps the same SNR range
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts) -> list[int]:
    """ADM's `space_timesteps` for a section string like "50" or "10,15,20"."""
    if isinstance(section_counts, str):
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx, all_steps = 0, []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(f"cannot divide section of {size} steps into {section_count}")
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return sorted(set(all_steps))


@dataclass
class NoiseSchedule:
    """A respaced diffusion process. Index 0 is the least noisy step; sampling runs N-1 .. 0."""

    num_steps: int
    betas: np.ndarray             # (N,) betas of the spaced process, float64
    timestep_map: np.ndarray      # (N,) original timestep fed to the model at each index

    @classmethod
    def respaced(cls, num_steps: int, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> "NoiseSchedule":
        if num_steps < 1 or num_steps > num_timesteps:
            raise ValueError(f"steps must be in [1, {num_timesteps}], got {num_steps}")
        base = np.cumprod(1.0 - linear_betas(num_timesteps))
        keep = set(space_timesteps(num_timesteps, str(num_steps)))
        last, betas, tmap = 1.0, [], []
        for i, ac in enumerate(base):
            if i in keep:
                betas.append(1 - ac / last)
                last = ac
                tmap.append(i)
        return cls(num_steps=len(betas), betas=np.array(betas), timestep_map=np.array(tmap))

    @classmethod
    def full(cls, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> "NoiseSchedule":
        return cls.respaced(num_timesteps, num_timesteps)

    # Derived quantities, all float64 numpy arrays of shape (N,).
    @property
    def alphas_cumprod(self):
        return np.cumprod(1.0 - self.betas)

    @property
    def alphas_cumprod_prev(self):
        return np.append(1.0, self.alphas_cumprod[:-1])

    @property
    def posterior_variance(self):
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_log_variance_clipped(self):
        pv = self.posterior_variance
        return np.log(np.append(pv[1], pv[1:])) if len(pv) > 1 else np.log(np.maximum(pv, 1e-20))

    def model_timesteps(self, index: int, batch: int, device=None) -> torch.Tensor:
        """The original-timestep tensor the model is conditioned on at step `index`."""
        return torch.full((batch,), int(self.timestep_map[index]), dtype=torch.long, device=device)


def extract(arr: np.ndarray, index, x: torch.Tensor) -> torch.Tensor:
    """Noise-schedule values at `index` (an int, or a (B,) tensor of per-row indices), as float32
    broadcastable against x."""
    if torch.is_tensor(index):
        vals = torch.as_tensor(arr, dtype=torch.float64)[index.cpu()].float().to(x.device)
        return vals.reshape(-1, *([1] * (x.dim() - 1)))
    return torch.tensor(float(arr[index]), dtype=torch.float32, device=x.device)


def q_sample(sched: NoiseSchedule, x0: torch.Tensor, index, noise: torch.Tensor) -> torch.Tensor:
    """Noise clean x0 to step `index` (int or (B,) long tensor) of the noise schedule."""
    ac = torch.as_tensor(sched.alphas_cumprod, dtype=torch.float32, device=x0.device)[index]
    ac = ac.reshape(-1, *([1] * (x0.dim() - 1))) if ac.dim() else ac
    return ac.sqrt() * x0 + (1 - ac).sqrt() * noise
