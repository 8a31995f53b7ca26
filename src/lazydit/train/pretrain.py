"""Train a shipped model from scratch: DiT-FMNIST (class-conditional DDPM, the default) or
Flux-FMNIST (text-prompted rectified flow, `pretrain_flux`). One loop, one checkpoint format, one
resume check and one EMA export for both; each model brings its data, loss and export (a "recipe")."""
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

from .. import flags
from ..core.diffusion.noise_schedule import NoiseSchedule, q_sample
from ..io import atomic_path, open_run_log, write_json
from ..core.models import DiT, DiTConfig, embedded_config
from .checkpoint import first_difference, load_checkpoint, read_checkpoint_meta, save_checkpoint


MODELS = ("DiT-FMNIST", "Flux-FMNIST")


@dataclass
class PretrainConfig:
    # One field per option; `metadata` is its `lazydit pretrain` flag (see lazydit.cli_config), and
    # the options other configs share come from `lazydit.flags`.
    model: str = flags.model("DiT-FMNIST", choices=MODELS, help="which shipped model to train (default DiT-FMNIST)")
    out_dir: str = flags.out_dir("runs/pretrain", help="output folder (checkpoint, log, ema weights)")
    data_dir: str | None = field(default=None, metadata={
        "help": "folder with the Fashion-MNIST IDX files (default: the Debian package's)"})
    steps: int = flags.steps(6000, help="optimizer steps")
    batch_size: int = flags.batch_size(128, help="images per step")
    lr: float = field(default=5e-4, metadata={  # higher than DiT's 1e-4 because the run is short
        "help": "AdamW learning rate"})
    warmup: int = flags.warmup(200, help="linear learning-rate warm-up steps")
    ema_decay: float = field(default=0.999, metadata={  # short runs need a faster EMA than DiT's 0.9999
        "help": "EMA decay of the exported weights, in [0, 1)"})
    ckpt_every: int = field(default=250, metadata={"type": "positive_int", "help": "steps between atomic checkpoints"})
    seed: int = flags.seed()
    threads: int | None = flags.threads(None, help="torch CPU threads")  # None: torch's default

    def validate(self):
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose from {', '.join(MODELS)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:  # also refuses NaN; 1.0 would never move the EMA
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if min(self.steps, self.batch_size, self.ckpt_every) < 1 or self.warmup < 0:
            raise ValueError("steps, batch size and ckpt_every must be >= 1, warmup >= 0")


class _DiTRecipe:
    """DiT-FMNIST: epsilon-prediction DDPM on 1000 steps, class labels 0-9 (the null class is the model's)."""

    def __init__(self, cfg: PretrainConfig, model_cfg: DiTConfig | None):
        from ..data import load_fashion_mnist
        self.model_cfg = model_cfg or embedded_config()
        images, labels = load_fashion_mnist("train", cfg.data_dir)
        # Pixels to [-1, 1]; zero-pad when the model expects a larger canvas than 28x28.
        x_all = torch.from_numpy(images).float().div(127.5).sub(1).unsqueeze(1)
        pad = (self.model_cfg.input_size - 28) // 2
        if pad:
            x_all = F.pad(x_all, (pad, pad, pad, pad), value=-1.0)
        self.x_all, self.y_all = x_all, torch.from_numpy(labels)
        self.sched = NoiseSchedule.full()

    def model_dict(self) -> dict:
        return self.model_cfg.to_dict()

    def build(self) -> torch.nn.Module:
        return DiT(self.model_cfg)

    def frozen_tensors(self) -> dict:
        return {}  # nothing outside the trained model

    def load_frozen(self, tensors: dict) -> None:
        pass

    def loss(self, model, batch_size: int) -> torch.Tensor:
        idx = torch.randint(0, len(self.x_all), (batch_size,))
        x0, y = self.x_all[idx], self.y_all[idx]
        t = torch.randint(0, self.sched.num_steps, (batch_size,))
        noise = torch.randn_like(x0)
        return F.mse_loss(model(q_sample(self.sched, x0, t, noise), t, y), noise)

    def export(self, path: str, weights: dict, cfg: PretrainConfig) -> None:
        from safetensors.torch import save_file
        with atomic_path(path) as tmp:
            save_file(weights, tmp, metadata={"lazydit": json.dumps({"model": self.model_dict(),
                                                                     "pretrain": asdict(cfg)})})


def _recipe(cfg: PretrainConfig, model_cfg):
    if cfg.model == "Flux-FMNIST":
        from .pretrain_flux import FluxRecipe
        return FluxRecipe(cfg, model_cfg)
    return _DiTRecipe(cfg, model_cfg)


def pretrain(cfg: PretrainConfig, model_cfg=None, resume: bool = False) -> str:
    """Train `cfg.model` (its config `model_cfg`: a DiTConfig or a FluxFMNISTConfig; default: the
    shipped one's); return the path of the exported debiased EMA weights."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    recipe = _recipe(cfg, model_cfg)  # loads the data; draws no random numbers
    torch.manual_seed(cfg.seed)
    model = recipe.build()
    ema = copy.deepcopy(model).requires_grad_(False)
    init = {k: v.clone() for k, v in model.state_dict().items()}  # for the EMA's bias correction
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0)
    os.makedirs(cfg.out_dir, exist_ok=True)
    ckpt_path = os.path.join(cfg.out_dir, "checkpoint.safetensors")
    start = 0
    if resume:
        _check_same_run(ckpt_path, cfg, recipe.model_dict())
        tensors, meta = load_checkpoint(ckpt_path, opt)
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        recipe.load_frozen({k[7:]: v for k, v in tensors.items() if k.startswith("frozen.")})
        start = meta["step"]
    write_json(os.path.join(cfg.out_dir, "config.json"), {"pretrain": asdict(cfg), "model": recipe.model_dict()})
    log = open_run_log(os.path.join(cfg.out_dir, "log.jsonl"), start, "step")
    model.train()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="pretrain")
    t0 = time.time()
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        loss = recipe.loss(model, cfg.batch_size)
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
                       **{f"ema.{k}": v for k, v in ema.state_dict().items()},
                       **{f"frozen.{k}": v for k, v in recipe.frozen_tensors().items()}}
            save_checkpoint(ckpt_path, tensors, opt, {"step": step + 1, "config": asdict(cfg),
                                                     "model": recipe.model_dict()})
    log.close()
    out = os.path.join(cfg.out_dir, "ema.safetensors")
    recipe.export(out, debiased_ema(ema.state_dict(), init, cfg.ema_decay, cfg.steps), cfg)
    return out


# Options that do not change what the run computes: a resumed run may extend `steps` (a killed
# run is resumed with the steps it was meant to reach), move its output or use other threads.
_RESUME_FREE = ("steps", "out_dir", "threads", "ckpt_every")


def _check_same_run(path: str, cfg: PretrainConfig, model_dict: dict) -> None:
    """Refuse, before loading anything, a checkpoint written by another model or other options."""
    meta = read_checkpoint_meta(path)
    # A checkpoint written before an option existed ran with its default (`model` came with Flux-FMNIST).
    saved = {**asdict(PretrainConfig()), **meta["config"]}
    if saved["model"] != cfg.model:
        raise ValueError(f"checkpoint {path} belongs to another model ({saved['model']} -> {cfg.model}); "
                         f"resume with the same --model")
    other = first_difference(meta["model"], model_dict) if "model" in meta else None
    if other is not None:
        raise ValueError(f"checkpoint {path} belongs to another model ({other}); resume with the same model")
    diff = first_difference(saved, asdict(cfg), ignore=_RESUME_FREE)
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
