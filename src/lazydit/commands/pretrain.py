"""`lazydit pretrain`: train a shipped model (DiT-FMNIST or Flux-FMNIST) from scratch."""
from __future__ import annotations

from dataclasses import dataclass

from ..io import check_output
from ..train.pretrain import PretrainConfig
from .. import flags
from ..flags import group


@dataclass(kw_only=True)
class Config:
    resume: bool = flags.resume()
    train: PretrainConfig = group(PretrainConfig)  # every PretrainConfig field is a flag, e.g. --ema-decay


def run(cfg: Config) -> None:
    check_output(cfg.train.out_dir, "checkpoint.safetensors", "config.json", "log.jsonl", "ema.safetensors")
    from ..train.pretrain import pretrain
    print(f"EMA weights written to {pretrain(cfg.train, resume=cfg.resume)}")  # it validates before any work
