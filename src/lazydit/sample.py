"""`lazydit sample`: load a model (and gates), generate a batch, write a PNG grid and an .npz."""
from __future__ import annotations

import os
from dataclasses import asdict

from .images import save_grid, save_npz
from .io import write_json
from .loading import SampleConfig, build_lazy_model, read_noise
from .pipeline import Generation, generate


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
