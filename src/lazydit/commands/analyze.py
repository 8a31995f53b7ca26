"""`lazydit analyze`: cosine similarity of each module's output between consecutive steps, the
redundancy lazy sampling exploits (paper Sec 3.2; `eval.analyze`)."""
from __future__ import annotations

from dataclasses import dataclass

from ..io import check_output
from .. import flags
from ..flags import group
from .options import ModelOptions


@dataclass(kw_only=True)
class Config:
    model: ModelOptions = group(ModelOptions)
    steps: int = flags.steps()
    cfg_scale: float = flags.cfg_scale(1.5)
    labels: list = flags.labels(list(range(8)))
    seed: int = flags.seed(help="image i uses seed+i")
    out: str = flags.out_dir("out/analyze")


def run(cfg: Config) -> None:
    check_output(cfg.out, "similarity.json", "similarity.png")
    from ..eval.analyze import AnalyzeConfig, run_analyze
    from ..loading import build_lazy_model
    model = build_lazy_model(cfg.model.sample_config())
    c = AnalyzeConfig(steps=cfg.steps, cfg_scale=cfg.cfg_scale, labels=tuple(cfg.labels), seed=cfg.seed,
                      out_dir=cfg.out)
    s = run_analyze(model, c, {"arch": cfg.model.name, "checkpoint": cfg.model.checkpoint,
                               "random_init": cfg.model.random_init})
    print(f"mean cosine similarity attn {s['attn']['mean']:.4f} (min {s['attn']['min']:.4f}), "
          f"ffn {s['ffn']['mean']:.4f} (min {s['ffn']['min']:.4f}); written to {cfg.out}")
