"""Train a class-conditional pixel-space DiT from scratch: the recipe of the shipped model."""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..diffusion.schedule import Schedule, q_sample
from ..io import atomic_path, open_run_log, write_json
from ..models import DiT, DiTConfig, embedded_config
from .checkpoint import first_difference, load_checkpoint, read_checkpoint_meta, save_checkpoint


@dataclass
class PretrainConfig:
    # One field per option; `metadata` is its `lazydit pretrain` flag (see lazydit.cli_config).
    out_dir: str = field(default="runs/pretrain", metadata={
        "flag": "--out", "type": "out_dir", "help": "output folder (checkpoint, log, ema weights)"})
    data_dir: str | None = field(default=None, metadata={
        "help": "folder with the Fashion-MNIST IDX files (default: the Debian package's)"})
    steps: int = field(default=6000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=128, metadata={"help": "images per step"})
    lr: float = field(default=5e-4, metadata={  # higher than DiT's 1e-4 because the run is short
        "help": "AdamW learning rate"})
    warmup: int = field(default=200, metadata={"help": "linear learning-rate warm-up steps"})
    ema_decay: float = field(default=0.999, metadata={  # short runs need a faster EMA than DiT's 0.9999
        "help": "EMA decay of the exported weights, in [0, 1)"})
    ckpt_every: int = field(default=250, metadata={"type": "positive_int", "help": "steps between atomic checkpoints"})
    seed: int = field(default=0, metadata={"type": "seed"})
    threads: int | None = field(default=None, metadata={  # None: torch's default
        "type": "positive_int", "help": "torch CPU threads"})

    def validate(self):
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:  # also refuses NaN; 1.0 would never move the EMA
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if min(self.steps, self.batch_size, self.ckpt_every) < 1 or self.warmup < 0:
            raise ValueError("steps, batch size and ckpt_every must be >= 1, warmup >= 0")


def pretrain(cfg: PretrainConfig, model_cfg: DiTConfig | None = None, resume: bool = False) -> str:
    from ..data import load_fashion_mnist
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model_cfg = model_cfg or embedded_config()
    images, labels = load_fashion_mnist("train", cfg.data_dir)
    # Pixels to [-1, 1]; zero-pad when the model expects a larger canvas than 28x28.
    x_all = torch.from_numpy(images).float().div(127.5).sub(1).unsqueeze(1)
    pad = (model_cfg.input_size - 28) // 2
    if pad:
        x_all = F.pad(x_all, (pad, pad, pad, pad), value=-1.0)
    y_all = torch.from_numpy(labels)
    torch.manual_seed(cfg.seed)
    model = DiT(model_cfg)
    ema = copy.deepcopy(model).requires_grad_(False)
    init = {k: v.clone() for k, v in model.state_dict().items()}  # for the EMA's bias correction
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0)
    sched = Schedule.full()
    os.makedirs(cfg.out_dir, exist_ok=True)
    ckpt_path = os.path.join(cfg.out_dir, "checkpoint.safetensors")
    start = 0
    if resume:
        _check_same_run(ckpt_path, cfg, model_cfg)
        tensors, meta = load_checkpoint(ckpt_path, opt)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        start = meta["step"]
    write_json(os.path.join(cfg.out_dir, "config.json"), {"pretrain": asdict(cfg), "model": model_cfg.to_dict()})
    log = open_run_log(os.path.join(cfg.out_dir, "log.jsonl"), start, "step")
    model.train()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="pretrain")
    t0 = time.time()
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        idx = torch.randint(0, len(x_all), (cfg.batch_size,))
        x0, y = x_all[idx], y_all[idx]
        t = torch.randint(0, sched.num_steps, (cfg.batch_size,))
        noise = torch.randn_like(x0)
        loss = F.mse_loss(model(q_sample(sched, x0, t, noise), t, y), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - cfg.ema_decay)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % 50 == 0:
            log.write(json.dumps({"step": step + 1, "loss": loss.item(), "elapsed_s": time.time() - t0}) + "\n")
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps:
            tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()},
                       **{f"ema.{k}": v for k, v in ema.state_dict().items()}}
            save_checkpoint(ckpt_path, tensors, opt, {"step": step + 1, "config": asdict(cfg),
                                                     "model": model_cfg.to_dict()})
    log.close()
    out = os.path.join(cfg.out_dir, "ema.safetensors")
    from safetensors.torch import save_file
    weights = debiased_ema(ema.state_dict(), init, cfg.ema_decay, cfg.steps)
    with atomic_path(out) as tmp:
        save_file(weights, tmp, metadata={"lazydit": json.dumps({"model": model_cfg.to_dict(), "pretrain": asdict(cfg)})})
    return out


# Options that do not change what the run computes: a resumed run may extend `steps` (a killed
# run is resumed with the steps it was meant to reach), move its output or use other threads.
_RESUME_FREE = ("steps", "out_dir", "threads", "ckpt_every")


def _check_same_run(path: str, cfg: PretrainConfig, model_cfg: DiTConfig) -> None:
    """Refuse, before loading anything, a checkpoint written by another model or other options."""
    meta = read_checkpoint_meta(path)
    other = first_difference(meta["model"], model_cfg.to_dict()) if "model" in meta else None
    if other is not None:
        raise ValueError(f"checkpoint {path} belongs to another model ({other}); resume with the same model")
    diff = first_difference(meta["config"], asdict(cfg), ignore=_RESUME_FREE)
    if diff is not None:
        raise ValueError(f"checkpoint {path} is from a different run ({diff}); resume with the same options, "
                         f"or start afresh in another --out")
    if meta.get("step", 0) > cfg.steps:
        raise ValueError(f"checkpoint {path} is at step {meta['step']}, past --steps {cfg.steps}")


def debiased_ema(ema: dict, init: dict, decay: float, steps: int) -> dict:
    """Remove the initial weights' share decay**steps from an EMA started at them (Adam-style
    bias correction): a short run's EMA would otherwise still hold much of the random init."""
    w = decay ** steps
    return {k: ((v - w * init[k]) / (1 - w)).contiguous() if v.is_floating_point() else v.contiguous()
            for k, v in ema.items()}
