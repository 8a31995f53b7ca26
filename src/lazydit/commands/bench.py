"""`lazydit bench`: latency of DDIM-N, of DDIM-k at the lazy runs' MACs and of lazy-N, against
their ideal MACs; on a zoo DiT (`eval.bench`) or a diffusers pipeline (`eval.pipeline_bench`)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..io import check_output
from .. import flags
from ..flags import group, option
from .options import ModelOptions


def _floats(text: str) -> list[float]:  # argparse names it in its error: "invalid _floats value"
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None


@dataclass(kw_only=True)
class Config:
    model: ModelOptions = group(ModelOptions)
    batch_size: int = flags.batch_size(8, help="images per generation; CFG doubles the rows")
    cfg_scale: float | None = flags.cfg_scale(None, help="classifier-free guidance of a DiT (default 1.5); a "
                                                           "pipeline keeps its own call's guidance (--pipe-kwargs)")
    steps: int | None = flags.steps(None, help="N (default 50; a pipeline: 28)")
    lazy_ratios: list = option([0.5], type=_floats, help="forced static lazy ratios, comma-separated")
    gates: str | None = flags.gates(help="also time this learned gate file")
    ddim_match: bool = option(True, help="skip the DDIM-k runs at the lazy runs' MACs")
    dtype: str = option("fp32", choices=("fp32", "bf16", "fp16"))
    warmup: int = flags.warmup(help="unrecorded rounds first")
    repeats: int = flags.repeats(5, help="recorded rounds (each runs every configuration)")
    threads: int | None = flags.threads(help="torch CPU threads")
    seed: int = flags.seed()
    out: str = flags.out_dir("out/bench")
    pipe_kwargs: dict | None = flags.pipe_kwargs()


def run(cfg: Config) -> None:
    check_output(cfg.out, "bench.json", "bench.md")
    from ..eval.bench_report import markdown_table, write_bench
    from ..integrations.diffusers.fit import is_pipeline
    if is_pipeline(cfg.model.name):
        rep = _bench_pipeline(cfg)
    else:
        if cfg.pipe_kwargs is not None:
            raise ValueError("--pipe-kwargs applies to a diffusers pipeline (--model PIPELINE_DIR or Flux-FMNIST)")
        rep = _bench_dit(cfg)
    jpath, _ = write_bench(rep, cfg.out)
    print(markdown_table(rep) + f"\nwritten to {os.path.dirname(jpath)}")


def _bench_pipeline(cfg: Config) -> dict:
    from ..eval.pipeline_bench import PipelineBenchConfig, run_pipeline_bench
    m = cfg.model
    if cfg.steps is not None and cfg.steps < 2:
        raise ValueError("lazy benchmarks need at least 2 steps")
    if m.checkpoint or m.random_init or m.num_classes or cfg.cfg_scale is not None or cfg.dtype != "fp32":
        raise ValueError(f"{m.name} is a diffusers pipeline with its own weights and call: --ckpt, --random-init, "
                         f"--num-classes, --cfg-scale and --dtype do not apply (guidance goes in --pipe-kwargs)")
    pipe, kwargs, prompts = m.open_pipeline(cfg.pipe_kwargs)
    c = PipelineBenchConfig(model=m.name, batch_size=cfg.batch_size, steps=cfg.steps or 28,
                            lazy_ratios=cfg.lazy_ratios, gates=cfg.gates, match_steps=cfg.ddim_match,
                            warmup=cfg.warmup, repeats=cfg.repeats, threads=cfg.threads, seed=cfg.seed,
                            call_kwargs=kwargs, image_size=m.image_size, out_dir=cfg.out)
    return run_pipeline_bench(pipe.to(m.device), c, prompts)


def _bench_dit(cfg: Config) -> dict:
    from ..eval.bench import BenchConfig, run_bench
    m = cfg.model
    c = BenchConfig(model=m.name, checkpoint=m.checkpoint, random_init=m.random_init, image_size=m.image_size,
                    num_classes=m.num_classes, batch_size=cfg.batch_size,
                    cfg_scale=1.5 if cfg.cfg_scale is None else cfg.cfg_scale, steps=cfg.steps or 50,
                    lazy_ratios=cfg.lazy_ratios, gates=cfg.gates, match_ddim=cfg.ddim_match, dtype=cfg.dtype,
                    device=m.device, warmup=cfg.warmup, repeats=cfg.repeats, threads=cfg.threads, seed=cfg.seed,
                    out_dir=cfg.out)
    return run_bench(c)
