"""What the commands load: a model by zoo name or local diffusers folder, with its gates, forced
pattern or skip schedule attached (`SampleConfig` names them), and initial noise from a file.

This is where core (`lazydit.core.models`, `lazydit.core.lazy`) and the diffusers integration meet, so that
the model zoo never imports an integration and no command imports another command's module."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn

from .core.lazy import LazyConfig, apply_lazy, load_gates, patterns
from .core.models import EMBEDDED, load_model
from .io import with_old_keys


def load_any_model(name: str, checkpoint: str | None = None, random_init: bool = False, **overrides) -> nn.Module:
    """`load_model(name, ...)`, or for a local diffusers folder its own transformer, config and weights."""
    if not os.path.isdir(name):
        return load_model(name, checkpoint, random_init=random_init, **overrides)
    if checkpoint is not None or random_init or any(v is not None for v in overrides.values()):
        raise ValueError(f"{name} is a diffusers folder with its own weights and config; "
                         f"--ckpt, --random-init, --image-size and --num-classes do not apply")
    from .integrations.diffusers.models import load_diffusers_folder
    return load_diffusers_folder(name).eval()


@dataclass
class SampleConfig:
    model: str = EMBEDDED               # zoo name
    checkpoint: str | None = None       # weights path; None = shipped weights (embedded) or random
    random_init: bool = False           # allow random weights for a zoo model (smoke tests, benchmarks)
    image_size: int | None = None       # model input side (latent side for latent DiTs)
    num_classes: int | None = None      # override the zoo's class count
    gates: str | None = None            # gate file from `lazydit train-gates`
    force_skip: str | None = None       # static pattern instead of gates: 'every:N' or 'fraction:F'
    skip_schedule: str | None = None    # skip-schedule file from `lazydit freeze`: no gate scores at all
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

    def record(self) -> dict:
        """The config as sample_config.json and sample_many_config.json hold it: `skip_schedule`
        under its old key "schedule", so sample-many runs started before the rename resume."""
        return with_old_keys(asdict(self), {"skip_schedule": "schedule"})


def _check_timesteps(path: str, meta: dict, steps: int):
    """Gates made on a diffusers scheduler's timesteps decide for other noise levels than this sampler's."""
    from .core.diffusion.noise_schedule import NoiseSchedule
    ts = meta.get("timesteps")
    own = NoiseSchedule.respaced(steps).timestep_map[::-1]
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
    if sum(bool(v) for v in (cfg.gates, cfg.force_skip, cfg.skip_schedule)) > 1:
        raise ValueError("give only one of --gates, --force-skip and --skip-schedule")
    if cfg.skip_schedule:
        from .core.lazy.skip_schedule_file import load_skip_schedule
        ctrl = load_skip_schedule(cfg.skip_schedule, arch=model.arch_name, depth=model.config.depth,
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
