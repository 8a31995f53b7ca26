"""`lazydit train-gates`: fit lazy gates (or a static skip schedule) with the backbone frozen, on a
zoo DiT or on a diffusers pipeline folder of a family lazydit knows (FLUX, SD3, Wan, ...)."""
from __future__ import annotations

from dataclasses import dataclass

from ..io import check_output
from ..train.gates import GateTrainConfig  # imports the lazy core and torch._dynamo: the parser defers it
from .. import flags
from ..flags import group, option
from .options import ModelOptions


@dataclass(kw_only=True)
class Config:
    model: ModelOptions = group(ModelOptions)
    # Options that are not training config, then every GateTrainConfig field (--rho-attn, --no-calibrate, ...):
    dataset: str | None = option(None, help="for --source dataset: 'fmnist' (IDX files, see --data-dir) or an .npz "
                                            "with 'images' (N,C,H,W) in model space and 'labels'")
    data_dir: str | None = option(None, help="Fashion-MNIST IDX folder")
    resume: bool = flags.resume()
    prompts: str | None = flags.prompts("with --model PIPELINE_DIR (FLUX, SD3, Wan, ...): calibration prompts, "
                                          "one per line (default: lazydit's shipped list)")
    pipe_kwargs: dict | None = flags.pipe_kwargs(
        "with --model PIPELINE_DIR: more pipe(...) arguments as JSON, e.g. "
        "'{\"guidance_scale\": 3.5, \"num_frames\": 17}'; --image-size sets height and width")
    diffusers_scheduler: bool = option(False, help="with --model PIPELINE_DIR: roll out on the pipeline's scheduler "
                                                   "(its timesteps and noise levels) instead of lazydit's DDIM; the "
                                                   "gate file records it, for pipe(...)")
    train: GateTrainConfig = group(GateTrainConfig)


def run(cfg: Config) -> None:
    t = cfg.train
    check_output(t.out_dir, "checkpoint.safetensors", "train_config.json", "log.jsonl", "gates.safetensors",
                 "summary.json")
    from ..integrations.diffusers.fit import is_pipeline
    from ..loading import build_lazy_model
    from ..train import distributed
    from ..train.data import load_gate_dataset
    from ..train.gates import train_gates
    t.validate()
    device = distributed.init_from_env(cfg.model.device)
    if is_pipeline(cfg.model.name):
        return _fit_pipeline(cfg, device)
    if cfg.prompts is not None or cfg.pipe_kwargs is not None:
        raise ValueError("--prompts and --pipe-kwargs apply to a diffusers pipeline folder (--model PIPELINE_DIR)")
    model = build_lazy_model(cfg.model.sample_config(device=device))
    data = load_gate_dataset(cfg.dataset, cfg.data_dir, model.config) if t.source == "dataset" else None
    if cfg.diffusers_scheduler:
        from ..integrations.diffusers.models import load_folder_scheduler
        from ..train.diffusers_gates import train_gates_on_scheduler
        _, summary = train_gates_on_scheduler(model, t, load_folder_scheduler(cfg.model.name), data, cfg.resume)
    else:
        _, summary = train_gates(model, t, dataset=data, resume=cfg.resume)
    if distributed.rank() == 0:
        how = (f"schedule {summary['schedule']}, operator {summary['reuse']}, correction rank "
               f"{summary['correction_rank']} in {summary['correction_groups']} step groups"
               if summary.get("mode") == "placement"
               else f"{summary['seconds_per_iter']:.3f} s/iter")
        _report(t, summary, how)


def _report(t: GateTrainConfig, summary: dict, how: str) -> None:
    ach = summary["achieved"]
    print(f"gates written to {t.out_dir}/gates.safetensors; achieved lazy ratio {ach['lazy_ratio']:.3f} "
          f"(attn {ach['attn']:.3f}, ffn {ach['ffn']:.3f}); {how}; {summary['train_seconds']:.0f} s")


def _fit_pipeline(cfg: Config, device) -> None:
    from ..integrations.diffusers.fit import read_prompts
    from ..train.diffusers_gates import fit_pipeline
    m = cfg.model
    if m.checkpoint or m.random_init or m.num_classes or cfg.resume or cfg.diffusers_scheduler or cfg.dataset:
        raise ValueError(f"{m.name} is a diffusers pipeline with its own weights, scheduler and prompts; --ckpt, "
                         f"--random-init, --num-classes, --resume, --diffusers-scheduler and --dataset do not apply")
    pipe, kwargs, prompts = m.open_pipeline(cfg.pipe_kwargs)
    _, summary = fit_pipeline(pipe.to(device), cfg.train, read_prompts(cfg.prompts) if cfg.prompts else prompts,
                              kwargs)
    _report(cfg.train, summary, f"schedule {summary['schedule']}, operator {summary['reuse']}, correction rank "
                                f"{summary['correction_rank']}")

