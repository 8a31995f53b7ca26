"""`lazydit bench-deploy`: time frozen sampling on onnxruntime, torch eager and torch.compile
(`export.bench`)."""
from __future__ import annotations

from dataclasses import dataclass

from ..cli_args import int_list
from ..io import check_output
from .. import flags
from ..flags import group, option
from .options import ModelOptions


def _sizes(text: str) -> list[int]:
    return int_list(text, "batch sizes", "1,8", minimum=1)


@dataclass(kw_only=True)
class Config:
    model: ModelOptions = group(ModelOptions)
    skip_schedule: str | None = flags.skip_schedule(
        "skip-schedule file (default: --lazy-ratio of whole steps, spread)")
    lazy_ratio: float = flags.lazy_ratio(0.5)
    reuse: str = flags.reuse("taylor1")
    steps: int = flags.steps(positive=True)
    cfg_scale: float = flags.cfg_scale(3.0)
    batch_sizes: list = option([1, 8], type=_sizes, help="comma-separated, e.g. 1,8")
    threads: int = flags.threads(1, help="intra-op threads of torch and onnxruntime")
    warmup: int = flags.warmup()
    repeats: int = flags.repeats(3, positive=True)
    compile: bool = option(True, help="skip torch.compile (its first round compiles C++)")
    out: str = flags.out_dir("out/bench-deploy")


def run(cfg: Config) -> None:
    check_output(cfg.out, "bench-deploy.json", "bench-deploy.md")
    from ..export.bench import DeployBenchConfig, run_deploy_bench, write_report
    m = cfg.model
    if m.device != "cpu":
        raise ValueError("bench-deploy measures the CPU paths (onnxruntime's CPU provider); leave --device out")
    c = DeployBenchConfig(model=m.name, checkpoint=m.checkpoint, random_init=m.random_init, image_size=m.image_size,
                          num_classes=m.num_classes, skip_schedule=cfg.skip_schedule, lazy_ratio=cfg.lazy_ratio,
                          reuse=cfg.reuse, steps=cfg.steps, cfg_scale=cfg.cfg_scale, batch_sizes=cfg.batch_sizes,
                          threads=cfg.threads, warmup=cfg.warmup, repeats=cfg.repeats, compile=cfg.compile,
                          out_dir=cfg.out)
    path = write_report(run_deploy_bench(c), cfg.out)
    with open(path) as f:
        print(f.read())
