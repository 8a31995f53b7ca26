"""`lazydit sample-many`: K images over uniform labels, sharded over torchrun ranks and resumable,
merged into an ADM .npz (`eval.sample_many`)."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from ..io import check_output
from .. import flags
from ..flags import group, option
from .options import ModelOptions, SamplingOptions


@dataclass(kw_only=True)
class Config:
    model: ModelOptions = group(ModelOptions)
    sampling: SamplingOptions = group(SamplingOptions, cfg_scale=1.5)  # 1.5: the paper's evaluation setting
    num_images: int = option(50_000)
    batch_size: int = flags.batch_size(32, help="images per generation and per shard file")
    seed: int = flags.seed(help="image i uses seed+i and label i %% num_classes")
    vae: str | None = option(None, help="local diffusers AutoencoderKL folder (latent models)")
    out: str = flags.out_dir("out/samples")


def run(cfg: Config) -> None:
    check_output(cfg.out, "shards/", "sample_many_config.json", "samples.npz", "lazy_stats.json")
    from ..eval.sample_many import SampleManyConfig, run_sample_many
    s = cfg.model.sample_config(**asdict(cfg.sampling), labels=[], seed=cfg.seed)
    path = run_sample_many(SampleManyConfig(sample=s, num_images=cfg.num_images, batch_size=cfg.batch_size,
                                            vae=cfg.vae, out_dir=cfg.out))
    if path:
        print(f"{cfg.num_images} images written to {path}; lazy statistics in "
              f"{os.path.join(cfg.out, 'lazy_stats.json')}")
