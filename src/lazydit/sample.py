"""`lazydit sample`: load a model (and gates), generate a batch, write a PNG grid and an .npz."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .io import atomic_path, write_json
from .lazy import LazyConfig, apply_lazy, load_gates, patterns
from .loading import load_any_model
from .models import EMBEDDED
from .pipeline import Generation, generate


@dataclass
class SampleConfig:
    model: str = EMBEDDED               # zoo name
    checkpoint: str | None = None       # weights path; None = shipped weights (embedded) or random
    random_init: bool = False           # allow random weights for a zoo model (smoke tests, benchmarks)
    image_size: int | None = None       # model input side (latent side for latent DiTs)
    num_classes: int | None = None      # override the zoo's class count
    gates: str | None = None            # gate file from `lazydit train-gates`
    force_skip: str | None = None       # static pattern instead of gates: 'every:N' or 'fraction:F'
    schedule: str | None = None         # schedule file from `lazydit freeze`: no gate scores at all
    max_skip_run: int | None = None     # cap on consecutive skips (overrides the gate file)
    reuse: str = "copy"                 # with --force-skip: what a skip returns (copy, taylor1, taylor2);
                                        # a gate file carries its own operator
    steps: int = 50
    sampler: str = "ddim"
    eta: float = 0.0
    cfg_scale: float = 3.0
    guide_all_channels: bool = False    # CFG on every eps channel instead of DiT's first 3
    labels: list = field(default_factory=lambda: list(range(10)))
    seed: int = 0                       # image i uses seed + i
    noise: str | None = None            # optional .npy of initial noise (B, C, H, W)
    out_dir: str = "out/sample"
    device: str = "cpu"


def _check_timesteps(path: str, meta: dict, steps: int):
    """Gates made on a diffusers scheduler's timesteps decide for other noise levels than this sampler's."""
    from .diffusion.schedule import Schedule
    ts = meta.get("timesteps")
    own = Schedule.respaced(steps).timestep_map[::-1]
    if isinstance(ts, list) and any(abs(float(a) - float(b)) > 1.0 for a, b in zip(ts, own)):
        raise ValueError(f"gate file {path} was made for the timesteps of {meta.get('scheduler', 'another sampler')} "
                         f"({', '.join(f'{t:g}' for t in ts[:2])}, ...), not lazydit's DDIM "
                         f"({', '.join(f'{t:g}' for t in own[:2])}, ...); sample it through "
                         f"diffusers with apply_lazy_to_pipeline")


def build_lazy_model(cfg: SampleConfig):
    """The model of `cfg`, with gates or a forced pattern attached when asked for."""
    if cfg.checkpoint is None and cfg.model != EMBEDDED and not cfg.random_init and not os.path.isdir(cfg.model):
        raise ValueError(f"{cfg.model} needs --ckpt PATH (or --random-init for a smoke test)")
    model = load_any_model(cfg.model, cfg.checkpoint, random_init=cfg.random_init, input_size=cfg.image_size,
                       num_classes=cfg.num_classes)
    model.to(cfg.device)
    if sum(bool(v) for v in (cfg.gates, cfg.force_skip, cfg.schedule)) > 1:
        raise ValueError("give only one of --gates, --force-skip and --schedule")
    if cfg.schedule:
        from .lazy.schedulefile import load_schedule
        ctrl = load_schedule(cfg.schedule, arch=model.arch_name, depth=model.config.depth,
                             hidden_size=model.config.hidden_size, num_steps=cfg.steps)
        apply_lazy(model, cfg.steps, controller=ctrl)
    elif cfg.gates:
        ctrl = load_gates(cfg.gates, arch=model.arch_name, depth=model.config.depth,
                          hidden_size=model.config.hidden_size, num_steps=cfg.steps,
                          overrides={"max_skip_run": cfg.max_skip_run})
        _check_timesteps(cfg.gates, ctrl.meta, cfg.steps)
        apply_lazy(model, cfg.steps, controller=ctrl)
    elif cfg.force_skip:
        ctrl = apply_lazy(model, cfg.steps, LazyConfig(num_steps=cfg.steps, max_skip_run=cfg.max_skip_run,
                                                       reuse=cfg.reuse))
        ctrl.force(patterns.from_name(cfg.force_skip, cfg.steps, model.config.depth))
    return model


def read_noise(path: str) -> torch.Tensor:
    """Initial noise from an .npy file (B, C, H, W), with one-line errors for anything else."""
    if not os.path.isfile(path):
        raise ValueError(f"noise file {path} does not exist or is not a file")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"noise file {path} is not a readable .npy array ({e})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise ValueError(f"noise file {path} must hold one numeric .npy array (B, C, H, W), not an .npz archive")
    return torch.from_numpy(arr).float()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] (B, C, H, W) -> uint8 (B, H, W, C), the ADM .npz layout."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images: torch.Tensor, path: str, ncol: int | None = None, scale: int = 1) -> None:
    """A PNG grid; `scale` enlarges by pixel repetition so that 28 px images stay legible."""
    from PIL import Image
    arr = to_uint8(images[:, :3])  # latents: show their first 3 channels, as a rough preview
    b, h, w, c = arr.shape
    ncol = ncol or min(b, 10)
    nrow = -(-b // ncol)
    grid = np.zeros((nrow * (h + 2) + 2, ncol * (w + 2) + 2, c), dtype=np.uint8)
    for i in range(b):
        r, q = divmod(i, ncol)
        grid[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + q * (w + 2): 2 + q * (w + 2) + w] = arr[i]
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def save_npz(gen: Generation, path: str) -> None:
    arrays = {"arr_0": to_uint8(gen.images), "labels": gen.labels.cpu().numpy()}
    if gen.stats is not None:
        arrays["skips"] = gen.stats.skips.numpy()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def run_sample(cfg: SampleConfig) -> Generation:
    # Validate everything that can fail before anything is written.
    if cfg.steps < 2 and (cfg.gates or cfg.force_skip or cfg.schedule):
        raise ValueError("lazy sampling needs at least 2 steps")
    model = build_lazy_model(cfg)
    noise = None
    if cfg.noise:
        noise = read_noise(cfg.noise)
    seeds = [cfg.seed + i for i in range(len(cfg.labels))]
    gen = generate(model, cfg.labels, seeds, steps=cfg.steps, cfg_scale=cfg.cfg_scale, method=cfg.sampler,
                   eta=cfg.eta, guide_channels=None if cfg.guide_all_channels else 3, noise=noise, progress=True)
    os.makedirs(cfg.out_dir, exist_ok=True)
    save_grid(gen.images, os.path.join(cfg.out_dir, "grid.png"))
    save_npz(gen, os.path.join(cfg.out_dir, "samples.npz"))
    write_json(os.path.join(cfg.out_dir, "sample_config.json"),
               {"sample": asdict(cfg), "seconds": gen.seconds,
                "lazy": gen.stats.summary() if gen.stats is not None else None})
    return gen
