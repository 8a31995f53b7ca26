"""`lazydit` command line: each subcommand builds its config dataclass and calls the library."""
from __future__ import annotations

import argparse
import sys

from .cli_args import (add_model_args, add_sampling_args, json_object, labels_arg, open_pipeline_args, out_dir,
                       positive_int, seed_arg)
from .cli_config import DeferredParser, add_config_args_later, config_from_args
from .eval.seeds import EVAL_SEED
from .io import check_output


def _pretrain_config():
    from .train.pretrain import PretrainConfig
    return PretrainConfig


def _gate_train_config():
    from .train.gates import GateTrainConfig  # imports the lazy core and torch._dynamo: only when needed
    return GateTrainConfig


def _pretrain(sub):
    p = sub.add_parser("pretrain", help="train a shipped model (DiT-FMNIST, or Flux-FMNIST with --model) on "
                                        "Fashion-MNIST from scratch")
    add_config_args_later(p, _pretrain_config)  # every PretrainConfig field, e.g. --ema-decay
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")

    def run(a):
        check_output(a.out_dir, "checkpoint.safetensors", "config.json", "log.jsonl", "ema.safetensors")
        from .train.pretrain import pretrain
        cfg = config_from_args(_pretrain_config(), a)  # pretrain validates it before any work
        print(f"EMA weights written to {pretrain(cfg, resume=a.resume)}")
    p.set_defaults(func=run)


def _sample(sub):
    p = sub.add_parser("sample", help="generate a grid (PNG) and an .npz, optionally with lazy gates")
    add_model_args(p)
    add_sampling_args(p, cfg_scale=3.0)
    p.add_argument("--labels", type=labels_arg, default=list(range(10)), help="comma-separated class labels")
    p.add_argument("--seed", type=seed_arg, default=0, help="image i uses seed+i")
    p.add_argument("--noise", default=None, help=".npy of initial noise, shape (B, C, H, W)")
    p.add_argument("--schedule", default=None, help="schedule file from `lazydit freeze` (no gate scores computed)")
    p.add_argument("--out", type=out_dir, default="out/sample")

    p.add_argument("--prompts", default=None, help="with --model PIPELINE: prompts file, one per line (default: "
                                                   "the pipeline's own; Flux-FMNIST: one per class)")
    p.add_argument("--images", type=positive_int, default=None, help="with --model PIPELINE: images (default: one "
                                                                    "per prompt)")
    p.add_argument("--pipe-kwargs", type=json_object, default=None,
                   help="with --model PIPELINE: more pipe(...) arguments as JSON; --image-size sets height and width")

    def run(a):
        check_output(a.out, "grid.png", "samples.npz", "sample_config.json")
        from .integrations.diffusers.fit import is_pipeline
        if is_pipeline(a.model):
            return _sample_pipeline(a)
        if a.prompts is not None or a.pipe_kwargs is not None or a.images is not None:
            raise ValueError("--prompts, --images and --pipe-kwargs apply to a pipeline (--model Flux-FMNIST or a folder)")
        from .sample import SampleConfig, run_sample
        cfg = SampleConfig(model=a.model, checkpoint=a.ckpt, random_init=a.random_init, image_size=a.image_size,
                           num_classes=a.num_classes, gates=a.gates, force_skip=a.force_skip,
                           max_skip_run=a.max_skip_run, reuse=a.reuse, steps=a.steps, sampler=a.sampler, eta=a.eta,
                           cfg_scale=a.cfg_scale, guide_all_channels=a.guide_all_channels, labels=a.labels,
                           seed=a.seed, noise=a.noise, out_dir=a.out, device=a.device, schedule=a.schedule)
        gen = run_sample(cfg)
        n = len(cfg.labels)
        print(f"{n} images in {gen.seconds:.2f} s ({gen.seconds / n:.3f} s/image), written to {cfg.out_dir}")
        if gen.stats is not None:
            s = gen.stats.summary()
            print(f"lazy ratio {s['lazy_ratio']:.3f} (attn {s['attn']:.3f}, ffn {s['ffn']:.3f})")
    p.set_defaults(func=run)


def _fit_pipeline(a, cfg, device):
    """train-gates on a diffusers pipeline folder of a family lazydit knows (FLUX, SD3, Wan, ...)."""
    from .integrations.diffusers.fit import read_prompts
    from .train.diffusers_gates import fit_pipeline
    if a.ckpt or a.random_init or a.num_classes or a.resume or a.diffusers_scheduler or a.dataset:
        raise ValueError(f"{a.model} is a diffusers pipeline with its own weights, scheduler and prompts; "
                         f"--ckpt, --random-init, --num-classes, --resume, --diffusers-scheduler and --dataset do not apply")
    pipe, kwargs, prompts = open_pipeline_args(a)
    _, summary = fit_pipeline(pipe.to(device), cfg, read_prompts(a.prompts) if a.prompts else prompts, kwargs)
    ach = summary["achieved"]
    print(f"gates written to {cfg.out_dir}/gates.safetensors; achieved lazy ratio {ach['lazy_ratio']:.3f} "
          f"(attn {ach['attn']:.3f}, ffn {ach['ffn']:.3f}); schedule {summary['schedule']}, operator "
          f"{summary['reuse']}, correction rank {summary['correction_rank']}; {summary['train_seconds']:.0f} s")


def _sample_pipeline(a):
    from .integrations.diffusers.fit import read_prompts
    from .sample_pipeline import PipelineSampleConfig, run_pipeline_sample
    if a.ckpt or a.random_init or a.num_classes or a.schedule or a.noise or a.max_skip_run:
        raise ValueError(f"{a.model} is a pipeline with its own weights, scheduler and prompts; --ckpt, --random-init, "
                         f"--num-classes, --schedule, --noise and --max-skip-run do not apply")
    kwargs = dict(a.pipe_kwargs or {})
    if a.image_size:
        kwargs.update(height=a.image_size, width=a.image_size)
    cfg = PipelineSampleConfig(model=a.model, prompts=read_prompts(a.prompts) if a.prompts else [], images=a.images,
                               steps=a.steps, seed=a.seed, gates=a.gates, force_skip=a.force_skip, reuse=a.reuse,
                               call_kwargs=kwargs, out_dir=a.out, device=a.device)
    res = run_pipeline_sample(cfg)
    print(f"{res['images']} images in {res['seconds']:.2f} s ({res['seconds'] / res['images']:.3f} s/image), "
          f"written to {cfg.out_dir}")
    if res["lazy"] is not None:
        s = res["lazy"]
        print(f"lazy ratio {s['lazy_ratio']:.3f} (attn {s['attn']:.3f}, ffn {s['ffn']:.3f})")


def _train_gates(sub):
    p = sub.add_parser("train-gates", help="fit lazy gates with the backbone frozen (data-free by default)")
    add_model_args(p)
    add_config_args_later(p, _gate_train_config)  # every GateTrainConfig field, e.g. --rho-attn, --no-calibrate
    # Options that are not training config:
    p.add_argument("--dataset", default=None,
                   help="for --source dataset: 'fmnist' (IDX files, see --data-dir) or an .npz with "
                        "'images' (N,C,H,W) in model space and 'labels'")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    p.add_argument("--prompts", default=None,
                   help="with --model PIPELINE_DIR (FLUX, SD3, Wan, ...): calibration prompts, one per line "
                        "(default: lazydit's shipped list)")
    p.add_argument("--pipe-kwargs", type=json_object, default=None,
                   help="with --model PIPELINE_DIR: more pipe(...) arguments as JSON, e.g. "
                        "'{\"guidance_scale\": 3.5, \"num_frames\": 17}'; --image-size sets height and width")
    p.add_argument("--diffusers-scheduler", action="store_true",
                   help="with --model PIPELINE_DIR: roll out on the pipeline's scheduler (its timesteps and noise "
                        "levels) instead of lazydit's DDIM; the gate file records it, for pipe(...)")

    def run(a):
        check_output(a.out_dir, "checkpoint.safetensors", "train_config.json", "log.jsonl", "gates.safetensors",
                     "summary.json")
        from .loading import SampleConfig, build_lazy_model
        from .train import distributed
        from .train.data import load_gate_dataset
        from .train.gates import train_gates
        cfg = config_from_args(_gate_train_config(), a)
        cfg.validate()
        device = distributed.init_from_env(a.device)
        from .integrations.diffusers.fit import is_pipeline
        if is_pipeline(a.model):
            return _fit_pipeline(a, cfg, device)
        if a.prompts is not None or a.pipe_kwargs is not None:
            raise ValueError("--prompts and --pipe-kwargs apply to a diffusers pipeline folder (--model PIPELINE_DIR)")
        model = build_lazy_model(SampleConfig(model=a.model, checkpoint=a.ckpt, random_init=a.random_init,
                                              image_size=a.image_size, num_classes=a.num_classes,
                                              device=device))
        data = load_gate_dataset(a.dataset, a.data_dir, model.config) if cfg.source == "dataset" else None
        if a.diffusers_scheduler:
            from .integrations.diffusers.models import load_folder_scheduler
            from .train.diffusers_gates import train_gates_on_scheduler
            _, summary = train_gates_on_scheduler(model, cfg, load_folder_scheduler(a.model), data, a.resume)
        else:
            _, summary = train_gates(model, cfg, dataset=data, resume=a.resume)
        if distributed.rank() == 0:
            ach = summary["achieved"]
            how = (f"schedule {summary['schedule']}, operator {summary['reuse']}, correction rank "
                   f"{summary['correction_rank']} in {summary['correction_groups']} step groups"
                   if summary.get("mode") == "schedule"
                   else f"{summary['seconds_per_iter']:.3f} s/iter")
            print(f"gates written to {cfg.out_dir}/gates.safetensors; achieved lazy ratio {ach['lazy_ratio']:.3f} "
                  f"(attn {ach['attn']:.3f}, ffn {ach['ffn']:.3f}); {how}; {summary['train_seconds']:.0f} s")
    p.set_defaults(func=run)


def _hooks(text: str) -> tuple:
    """'TaylorSeerCache,MagCache' or 'all' or 'none' -> names of diffusers' hooks to run ("all" is
    resolved by the harness: DiT and pipeline families attach different sets)."""
    from .eval.pipeline_compare import HOOKS
    from .rivals.diffusers_hooks import DIFFUSERS_HOOKS
    known = tuple(dict.fromkeys(DIFFUSERS_HOOKS + HOOKS))
    if text.strip().lower() in ("all", "none"):
        return ("all",) if text.strip().lower() == "all" else ()
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in names if v not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown diffusers hook {', '.join(unknown) or repr(text)}; choose from "
                                         f"{', '.join(known)}, 'all' or 'none'")
    return names


def _settings(text: str) -> list:
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


def _compare_args(p, kind: str):
    big = kind == "frontier"  # the frontier measures enough images for an interval, with the full recipe
    p.add_argument("--out", type=out_dir, default=f"out/{kind}")
    p.add_argument("--settings", type=_settings, default=[(50, 0.3), (50, 0.5), (50, 0.6), (20, 0.5)],
                   help="steps:target lazy ratio pairs (default 50:0.3,50:0.5,50:0.6,20:0.5)")
    p.add_argument("--samples", type=int, default=256 if big else 16, help="images per method (same seeds for all)")
    p.add_argument("--ref", type=int, default=500, help="real images for FD/KID")
    p.add_argument("--fd", action=argparse.BooleanOptionalAction, default=kind != "demo",
                   help="FD/KID and class accuracy on the shipped model (off in the demo: too few images)")
    p.add_argument("--cfg-scale", type=float, default=3.0)
    p.add_argument("--iters", type=int, default=500 if big else 60, help="gate-training iterations per setting")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--reuse", choices=["copy", "taylor1", "taylor2"], default="taylor1",
                   help="operator of the learned gates and of the training-free policies")
    p.add_argument("--gates-dir", default=None, help="reuse gates-N-R.safetensors files from this folder")
    p.add_argument("--calib-images", type=int, default=16 if big else 4,
                   help="images that calibrate the training-free policies' thresholds")
    p.add_argument("--calib-rounds", type=positive_int, default=10 if big else 4,
                   help="search rounds of each training-free policy's threshold")
    p.add_argument("--timing-rounds", type=int, default=3 if big else 1, help="interleaved timing rounds after a warm-up")
    p.add_argument("--timing-images", type=int, default=8 if big else 2)
    p.add_argument("--warmup-images", type=positive_int, default=1 if kind == "demo" else None,
                   help="images of the unrecorded warm-up round (default: --timing-images; the demo: 1)")
    p.add_argument("--seed", type=seed_arg, default=0, help="training and calibration seed")
    p.add_argument("--eval-seed", type=seed_arg, default=EVAL_SEED,
                   help="image i uses eval-seed + i (default: a range no study script or fit touches)")
    p.add_argument("--train-calib", type=int, default=32 if big else 8,
                   help="images the default policy calibrates on (the schedule search: half fit, half select; "
                        "its input correction fits on as many)")
    p.add_argument("--schedule-candidates", type=int, default=12 if big else 4, help="placements the search tries")
    p.add_argument("--only", default=None, type=lambda s: [v for v in s.split(",") if v],
                   help="comma-separated name prefixes: the default policy against only those static or "
                        "diffusers rivals (and DDIM)")
    p.add_argument("--diffusers-hooks", type=_hooks, default="TaylorSeerCache" if kind == "demo" else "all",
                   help="diffusers' own cache hooks run as rivals when diffusers is installed: comma-separated "
                        "names, 'all' or 'none' (the demo runs only TaylorSeerCache: fitting the threshold "
                        "hooks to the budget takes minutes each)")
    p.add_argument("--gates-too", action=argparse.BooleanOptionalAction, default=None,
                   help="also train input-dependent on-policy gates and their L2C mask (default on in frontier)")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--prompts", default=None, help="with --model PIPELINE_DIR: prompts file (default: the shipped list)")
    p.add_argument("--pipe-kwargs", type=json_object, default=None,
                   help="with --model PIPELINE_DIR: more pipe(...) arguments as JSON; --image-size sets height and width")


def _run_pipeline_compare(a, folder: str):
    """compare/frontier on a diffusers pipeline folder (FLUX, SD3, Qwen-Image, Wan, HunyuanVideo)."""
    from .eval.pipeline_compare import HOOKS, PipelineCompareConfig, run_pipeline_compare
    from .eval.pipeline_report import format_pipeline_table
    from .integrations.diffusers.fit import prompt_labels, read_prompts
    if a.ckpt or a.random_init or a.num_classes or a.gates_dir or a.gates_too:
        raise ValueError(f"{folder} is a diffusers pipeline with its own weights; --ckpt, --random-init, "
                         f"--num-classes, --gates-dir and --gates-too do not apply")
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    hooks = tuple(HOOKS) if "all" in a.diffusers_hooks else tuple(h for h in a.diffusers_hooks if h in HOOKS)
    pipe, kwargs, prompts = open_pipeline_args(a)
    prompts = read_prompts(a.prompts) if a.prompts else prompts
    labels = prompt_labels(folder, prompts)  # FD/KID and class accuracy where every prompt names a class
    cfg = PipelineCompareConfig(out_dir=a.out, settings=a.settings, n_samples=a.samples, eval_seed=a.eval_seed,
                                calib_images=a.train_calib, correction_images=a.train_calib,
                                hook_images=a.calib_images, hooks=hooks, timing_rounds=a.timing_rounds,
                                schedule_candidates=a.schedule_candidates, fd=bool(a.fd and labels is not None),
                                n_ref=a.ref)
    result = run_pipeline_compare(pipe.to(a.device), cfg, prompts, kwargs, prompt_labels=labels)
    print(format_pipeline_table(result))
    print(f"PSNR: {result['psnr_definition']}. FLOPs: {result['flops']}. Time: {result['time']}. Written to "
          f"{cfg.out_dir}: results.json, quality-vs-flops.png, quality-vs-time-b*.png")


def _dit_hooks(names: tuple) -> list:
    from .rivals.diffusers_hooks import DIFFUSERS_HOOKS
    if "all" in names:
        return list(DIFFUSERS_HOOKS)
    unknown = [n for n in names if n not in DIFFUSERS_HOOKS]
    if unknown:
        raise ValueError(f"{', '.join(unknown)} does not attach to a DiT here; choose from {', '.join(DIFFUSERS_HOOKS)}")
    return list(names)


def _run_compare(a, model_name, ckpt, random_init=False, image_size=None, num_classes=None):
    check_output(a.out, "results.json", "laziness-heatmap.png", "quality-vs-macs.png")
    from .eval.compare import CompareConfig, format_table, run_compare
    from .loading import SampleConfig, build_lazy_model
    if a.samples < 2 or a.ref < 2:
        raise ValueError("--samples and --ref must be at least 2")
    if min(a.calib_images, a.timing_rounds, a.timing_images, a.iters, a.train_batch, a.schedule_candidates) < 1:
        raise ValueError("--calib-images, --timing-rounds, --timing-images, --iters, --train-batch and "
                         "--schedule-candidates must be positive")
    if a.train_calib < 2:
        raise ValueError("--train-calib must be at least 2")
    if a.eval_seed < 100_000:
        raise ValueError("--eval-seed must be >= 100000, clear of the seeds gate training and calibration use")
    from .integrations.diffusers.fit import is_pipeline
    if is_pipeline(model_name):
        return _run_pipeline_compare(a, model_name)
    if a.prompts is not None or a.pipe_kwargs is not None:
        raise ValueError("--prompts and --pipe-kwargs apply to a diffusers pipeline folder (--model PIPELINE_DIR)")
    cfg = CompareConfig(out_dir=a.out, model=model_name, checkpoint=ckpt, settings=a.settings, n_samples=a.samples,
                        n_ref=a.ref, fd=a.fd, cfg_scale=a.cfg_scale, seed=a.seed, eval_seed=a.eval_seed, train_iters=a.iters,
                        train_batch=a.train_batch, reuse=a.reuse, gates_dir=a.gates_dir,
                        calib_images=a.calib_images, calib_rounds=a.calib_rounds, timing_images=a.timing_images,
                        timing_rounds=a.timing_rounds, warmup_images=a.warmup_images,
                        gates_too=a.command == "frontier" if a.gates_too is None else a.gates_too,
                        train_calib=a.train_calib, only=a.only or None,
                        diffusers_hooks=_dit_hooks(a.diffusers_hooks),
                        schedule_candidates=a.schedule_candidates, threads=a.threads)
    model = build_lazy_model(SampleConfig(model=model_name, checkpoint=ckpt, random_init=random_init,
                                          image_size=image_size, num_classes=num_classes))
    result = run_compare(cfg, model)
    print(format_table(result))
    print(f"PSNR: {result['psnr_definition']}. MACs: {result['macs_convention']}. time: median ratio to full "
          f"compute over interleaved rounds. Written to {cfg.out_dir}: results.json, grid-*.png, "
          f"laziness-heatmap.png, quality-vs-macs.png")


def _demo(sub):
    p = sub.add_parser("demo", help="the whole method on both shipped models, the Fashion-MNIST DiT and the "
                                    "FLUX pipeline Flux-FMNIST, offline, in minutes")
    _compare_args(p, "demo")
    p.add_argument("--flux-settings", type=lambda t: [] if t.strip().lower() == "none" else _settings(t),
                   default=[(28, 0.5)], help="steps:target pairs of the Flux-FMNIST part, written to OUT/flux-fmnist "
                                             "(default 28:0.5; 'none' skips it)")
    p.set_defaults(func=_run_demo)


def _run_demo(a):
    """DiT-FMNIST with DDIM, then Flux-FMNIST through its FluxPipeline (flow matching, true CFG)."""
    import os
    flux = argparse.Namespace(**vars(a))
    flux.__dict__.update(model="Flux-FMNIST", settings=a.flux_settings, out=os.path.join(a.out, "flux-fmnist"),
                         ckpt=None, random_init=False, num_classes=None, image_size=None, device="cpu",
                         gates_dir=None, gates_too=None)
    import importlib.util
    missing = [m for m in ("diffusers", "transformers") if importlib.util.find_spec(m) is None]
    if a.flux_settings and missing:
        print(f"lazydit demo: the Flux-FMNIST part is skipped: {' and '.join(missing)} not installed "
              f"(pip install 'lazydit[diffusers]')", file=sys.stderr)
    elif a.flux_settings:
        check_output(flux.out, "results.json", "quality-vs-flops.png")
    _run_compare(a, "DiT-FMNIST", None)
    if a.flux_settings and not missing:
        print("\nFlux-FMNIST (FluxPipeline, flow matching, true CFG 3 against the empty prompt):")
        _run_compare(flux, "Flux-FMNIST", None)


def _compare(sub):
    p = sub.add_parser("compare", help="learned gates against every rival on one harness (small, quick)")
    add_model_args(p)
    _compare_args(p, "compare")
    p.set_defaults(func=lambda a: _run_compare(a, a.model, a.ckpt, a.random_init, a.image_size, a.num_classes))


def _frontier(sub):
    p = sub.add_parser("frontier", help="compare with 256 images per method, 500-iteration gates and 95%% intervals")
    add_model_args(p)
    _compare_args(p, "frontier")
    p.set_defaults(func=lambda a: _run_compare(a, a.model, a.ckpt, a.random_init, a.image_size, a.num_classes))


def commands():
    from .cli_deploy import DEPLOY_COMMANDS
    from .cli_eval import add_analyze, add_bench, add_inception, add_macs, add_sample_many
    from .cli_import import add_import_gates
    return [_pretrain, _sample, _train_gates, _demo, _compare, _frontier, add_macs, add_bench, add_sample_many,
            add_inception, add_analyze, *DEPLOY_COMMANDS, add_import_gates]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lazydit", description="Learned lazy sampling for Diffusion Transformers")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=DeferredParser)
    for add in commands():
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ValueError as e:
        print(f"lazydit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # out of space; lazydit.io's DiskFullError names the artefact, not its temp file
        from .io import NO_SPACE
        if e.errno not in NO_SPACE:
            raise
        from tqdm import tqdm
        for bar in list(getattr(tqdm, "_instances", ())):  # end the bar the write cut short: the error comes last
            bar.close()
        where = f" writing {e.filename}" if e.filename else ""
        print(f"lazydit {args.command}: error: {e.strerror.lower()}{where}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
