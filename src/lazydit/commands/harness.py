"""The comparison harness behind `lazydit compare`, `frontier` and `demo`: one set of options
(each command sets its own defaults for them) and one way to run it on a model, lazydit's DDIM
sampler (`eval.compare`) or a diffusers pipeline (`eval.pipeline_compare`). Not a command itself."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..eval.seeds import EVAL_SEED
from ..eval.timing import timing_batches
from ..io import check_output
from .. import flags
from ..flags import option
from .options import ModelOptions

DIT_OUTPUTS = ("results.json", "laziness-heatmap.png", "quality-vs-macs.png")
PIPELINE_OUTPUTS = ("results.json", "quality-vs-flops.png")


def parse_settings(text: str) -> list:
    """'50:0.3,50:0.5,20:0.5' -> [(50, 0.3), (50, 0.5), (20, 0.5)]."""
    try:
        out = [(int(a), float(b)) for a, b in (item.split(":") for item in text.split(",") if item)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"settings must look like 50:0.3,20:0.5 (steps:target), got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("settings are empty; give steps:target pairs such as 50:0.5")
    for n, r in out:
        if n < 2 or not 0 < r <= 0.95:
            raise argparse.ArgumentTypeError(f"setting {n}:{r} needs steps >= 2 and a target in (0, 0.95]")
    return out


def _hooks(text: str) -> tuple:
    """'TaylorSeerCache,MagCache' or 'all' or 'none' -> names of diffusers' hooks to run ("all" is
    resolved by the harness: DiT and pipeline families attach different sets)."""
    from ..eval.pipeline_compare import HOOKS
    from ..rivals.diffusers_hooks import DIFFUSERS_HOOKS
    known = tuple(dict.fromkeys(DIFFUSERS_HOOKS + HOOKS))
    if text.strip().lower() in ("all", "none"):
        return ("all",) if text.strip().lower() == "all" else ()
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in names if v not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown diffusers hook {', '.join(unknown) or repr(text)}; choose from "
                                         f"{', '.join(known)}, 'all' or 'none'")
    return names


def _prefixes(text: str) -> list:
    return [v for v in text.split(",") if v]


@dataclass(kw_only=True)
class HarnessOptions:
    """Defaults are `compare`'s; `frontier` measures more, `demo` less (each in its own Config)."""
    out: str = flags.out_dir("out/compare")
    settings: list = option([(50, 0.3), (50, 0.5), (50, 0.6), (20, 0.5)], type=parse_settings,
                            help="steps:target lazy ratio pairs (compare and frontier: 50:0.3,50:0.5,50:0.6,20:0.5; "
                                 "demo: 20:0.5)")
    samples: int = option(16, help="images per method (same seeds for all)")
    ref: int = option(500, help="real images for FD/KID")
    fd: bool = option(True, negatable=True,
                      help="FD/KID and class accuracy on the shipped model (off in the demo: too few images)")
    cfg_scale: float = flags.cfg_scale(3.0)
    iters: int = option(60, help="gate-training iterations per setting")
    train_batch: int = option(8)
    reuse: str = flags.reuse("taylor1", help="operator of the learned gates and of the training-free policies")
    gates_dir: str | None = option(None, help="reuse gates-N-R.safetensors files from this folder")
    calib_images: int = option(4, help="images that calibrate the training-free policies' thresholds")
    calib_rounds: int = option(4, type="positive_int", help="search rounds of each training-free policy's threshold")
    timing_rounds: int = option(3, help="interleaved timing rounds after a warm-up (3: the time columns carry a "
                                        "[min, max] range)")
    timing_images: int = option(16, help="the larger timed batch (a batch of 1 is timed too)")
    warmup_images: int | None = option(None, type="positive_int",
                                       help="images of the unrecorded warm-up round (default: --timing-images; "
                                            "the demo: 1)")
    seed: int = flags.seed(help="training and calibration seed")
    fit_seeds: int = option(1, type="positive_int",
                            help="also fit the default policy on seed+1, ..., and report its gain's spread over the "
                                 "fits (compare and demo: 1; frontier: 3; DiT models only: a pipeline is fitted on one seed)")
    eval_seed: int = option(EVAL_SEED, type="seed",
                            help="image i uses eval-seed + i (default: a range no study script or fit touches)")
    train_calib: int = option(8, help="images the default policy calibrates on (the placement search: half fit, "
                                      "half select; its input correction fits on as many)")
    schedule_candidates: int = option(4, help="placements the search tries")
    only: list | None = option(None, type=_prefixes,
                               help="comma-separated name prefixes: the default policy against only those static "
                                    "or diffusers rivals (and DDIM)")
    diffusers_hooks: tuple = option(("all",), type=_hooks,
                                    help="diffusers' own cache hooks run as rivals when diffusers is installed: "
                                         "comma-separated names, 'all' or 'none' (the demo runs only "
                                         "TaylorSeerCache: fitting the threshold hooks to the budget takes minutes "
                                         "each)")
    gates_too: bool | None = option(None, negatable=True, help="also train input-dependent on-policy gates and "
                                                                "their L2C mask (default on in frontier)")
    threads: int | None = flags.threads()
    prompts: str | None = flags.prompts("with --model PIPELINE_DIR: prompts file (default: the shipped list)")
    pipe_kwargs: dict | None = flags.pipe_kwargs(
        "with --model PIPELINE_DIR: more pipe(...) arguments as JSON; --image-size sets height and width")


def check_outputs(h: HarnessOptions, model: str) -> None:
    from ..integrations.diffusers.fit import is_pipeline
    check_output(h.out, *(PIPELINE_OUTPUTS if is_pipeline(model) else DIT_OUTPUTS))


def run(model: ModelOptions, h: HarnessOptions, gates_too: bool = False) -> None:
    """The harness on `model` (its outputs checked already); `gates_too`: --gates-too's default."""
    if h.samples < 2 or h.ref < 2:
        raise ValueError("--samples and --ref must be at least 2")
    if min(h.calib_images, h.timing_rounds, h.timing_images, h.iters, h.train_batch, h.schedule_candidates) < 1:
        raise ValueError("--calib-images, --timing-rounds, --timing-images, --iters, --train-batch and "
                         "--schedule-candidates must be positive")
    if h.train_calib < 2:
        raise ValueError("--train-calib must be at least 2")
    if h.eval_seed < 100_000:
        raise ValueError("--eval-seed must be >= 100000, clear of the seeds gate training and calibration use")
    from ..integrations.diffusers.fit import is_pipeline
    if is_pipeline(model.name):
        return _run_pipeline(model, h)
    if h.prompts is not None or h.pipe_kwargs is not None:
        raise ValueError("--prompts and --pipe-kwargs apply to a diffusers pipeline folder (--model PIPELINE_DIR)")
    from ..eval.compare import CompareConfig, format_table, run_compare
    from ..loading import build_lazy_model
    cfg = CompareConfig(out_dir=h.out, model=model.name, checkpoint=model.checkpoint, settings=h.settings,
                        n_samples=h.samples, n_ref=h.ref, fd=h.fd, cfg_scale=h.cfg_scale, seed=h.seed,
                        eval_seed=h.eval_seed, train_iters=h.iters, train_batch=h.train_batch, reuse=h.reuse,
                        gates_dir=h.gates_dir, calib_images=h.calib_images, calib_rounds=h.calib_rounds,
                        timing_images=h.timing_images, timing_rounds=h.timing_rounds, warmup_images=h.warmup_images,
                        gates_too=gates_too if h.gates_too is None else h.gates_too, train_calib=h.train_calib,
                        only=h.only or None, diffusers_hooks=_dit_hooks(h.diffusers_hooks),
                        schedule_candidates=h.schedule_candidates, threads=h.threads, fit_seeds=h.fit_seeds)
    # The DiT harness has always run on the CPU, whatever --device says (a pipeline honours it).
    result = run_compare(cfg, build_lazy_model(model.sample_config(device="cpu")))
    print(format_table(result))
    print(f"PSNR: {result['psnr_definition']}. MACs: {result['macs_convention']}. time: median ratio to full "
          f"compute over interleaved rounds. Written to {cfg.out_dir}: results.json, grid-*.png, "
          f"laziness-heatmap.png, quality-vs-macs.png")


def _dit_hooks(names: tuple) -> list:
    from ..rivals.diffusers_hooks import DIFFUSERS_HOOKS
    if "all" in names:
        return list(DIFFUSERS_HOOKS)
    unknown = [n for n in names if n not in DIFFUSERS_HOOKS]
    if unknown:
        raise ValueError(f"{', '.join(unknown)} does not attach to a DiT here; choose from {', '.join(DIFFUSERS_HOOKS)}")
    return list(names)


def _run_pipeline(model: ModelOptions, h: HarnessOptions) -> None:
    """compare/frontier on a diffusers pipeline (FLUX, SD3, Qwen-Image, Wan, HunyuanVideo)."""
    from ..eval.pipeline_compare import HOOKS, PipelineCompareConfig, run_pipeline_compare
    from ..eval.pipeline_report import format_pipeline_table
    from ..integrations.diffusers.fit import prompt_labels, read_prompts
    if model.checkpoint or model.random_init or model.num_classes or h.gates_dir or h.gates_too:
        raise ValueError(f"{model.name} is a diffusers pipeline with its own weights; --ckpt, --random-init, "
                         f"--num-classes, --gates-dir and --gates-too do not apply")
    if h.threads:
        import torch
        torch.set_num_threads(h.threads)
    hooks = tuple(HOOKS) if "all" in h.diffusers_hooks else tuple(x for x in h.diffusers_hooks if x in HOOKS)
    pipe, kwargs, prompts = model.open_pipeline(h.pipe_kwargs)
    prompts = read_prompts(h.prompts) if h.prompts else prompts
    labels = prompt_labels(model.name, prompts)  # FD/KID and class accuracy where every prompt names a class
    cfg = PipelineCompareConfig(out_dir=h.out, settings=h.settings, n_samples=h.samples, eval_seed=h.eval_seed,
                                calib_images=h.train_calib, correction_images=h.train_calib,
                                hook_images=h.calib_images, hooks=hooks, timing_rounds=h.timing_rounds,
                                timing_batches=timing_batches(h.timing_images),
                                schedule_candidates=h.schedule_candidates, fd=bool(h.fd and labels is not None),
                                n_ref=h.ref)
    result = run_pipeline_compare(pipe.to(model.device), cfg, prompts, kwargs, prompt_labels=labels)
    print(format_pipeline_table(result))
    print(f"PSNR: {result['psnr_definition']}. FLOPs: {result['flops']}. Time: {result['time']}. Written to "
          f"{cfg.out_dir}: results.json, quality-vs-flops.png, quality-vs-time-b*.png")
