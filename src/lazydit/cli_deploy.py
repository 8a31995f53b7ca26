"""`lazydit freeze`, `lazydit export` and `lazydit bench-deploy`: the deployment path."""
from __future__ import annotations

import argparse
import os

from .cli_args import add_model_args, int_list, out_dir, out_file, positive_int
from .io import check_output, check_output_file


def add_freeze(sub):
    p = sub.add_parser("freeze", help="turn a gate file into a static schedule file (no gate scores at sampling)")
    p.add_argument("gates", help="gate file from `lazydit train-gates`")
    p.add_argument("--out", type=out_file, required=True, help="schedule file to write (.safetensors)")
    add_model_args(p)
    p.add_argument("--calib-images", type=positive_int, default=32,
                   help="input-dependent gates: images whose decisions are pooled (majority per cell)")
    p.add_argument("--calib-seed", type=int, default=2_000_000, help="calibration image i uses this seed + i")
    p.add_argument("--cfg-scale", type=float, default=None, help="default: the scale the gates were trained with")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise of the deployed sampler")
    p.add_argument("--guide-all-channels", action="store_true", help="CFG on all eps channels, not DiT's first 3")

    def run(a):
        check_output_file(a.out)
        from .export.freeze import FreezeConfig, freeze
        from .loading import SampleConfig, build_lazy_model
        cfg = FreezeConfig(gates=a.gates, out=a.out, calib_images=a.calib_images, calib_seed=a.calib_seed,
                           cfg_scale=a.cfg_scale, eta=a.eta, guide_all_channels=a.guide_all_channels)
        model_fn = lambda: build_lazy_model(SampleConfig(model=a.model, checkpoint=a.ckpt, random_init=a.random_init,  # noqa: E731
                                                         image_size=a.image_size, num_classes=a.num_classes,
                                                         device=a.device))
        s = freeze(cfg, model_fn)
        print(f"schedule written to {a.out}: {s['steps']} steps, lazy ratio {s['lazy_ratio']:.3f}, operator "
              f"{s['reuse']}{' + correction' if s['correction'] else ''}; from {s['method']}")
    p.set_defaults(func=run)


def add_export(sub):
    p = sub.add_parser("export", help="export a schedule file and its model as an onnxruntime bundle")
    p.add_argument("--schedule", required=True, help="schedule file from `lazydit freeze`")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", type=out_dir, required=True, help="bundle folder (graphs + manifest.json)")
    add_model_args(p)
    p.set_defaults(model=None)
    p.add_argument("--opset", type=positive_int, default=17)

    def run(a):
        # The bundle is built beside --out and renamed into place: the folder above --out must take it.
        check_output(os.path.dirname(os.path.normpath(a.out)), os.path.basename(os.path.normpath(a.out)) + "/")
        from .export.onnx_export import ExportConfig, export_onnx
        from .core.lazy.schedulefile import read_schedule
        from .loading import SampleConfig, build_lazy_model
        if a.device != "cpu":
            raise ValueError("export traces the model on the CPU; leave --device out")
        ctrl, meta = read_schedule(a.schedule)  # first: a bad file fails before the model loads
        model = build_lazy_model(SampleConfig(model=a.model or meta["arch"], checkpoint=a.ckpt,
                                              random_init=a.random_init, image_size=a.image_size,
                                              num_classes=a.num_classes, device="cpu"))
        for key, value in {"arch": model.arch_name, "depth": model.config.depth,
                           "hidden_size": model.config.hidden_size}.items():
            if meta[key] != value:
                raise ValueError(f"schedule file {a.schedule} is for {key}={meta[key]}, but the model has {key}={value}")
        man = export_onnx(model, ctrl, meta, ExportConfig(schedule=a.schedule, out_dir=a.out, opset=a.opset))
        n = 2 + sum(v is not None for b in man["graphs"]["blocks"] for m in b.values() for v in m.values())
        print(f"bundle written to {a.out}: {n} graphs + manifest.json; torch vs onnxruntime max abs diff "
              f"{man['export']['check_max_abs_diff']:.2g} (one full-compute evaluation)")
    p.set_defaults(func=run)


def _sizes(text: str) -> list[int]:
    return int_list(text, "batch sizes", "1,8", minimum=1)


def add_bench_deploy(sub):
    p = sub.add_parser("bench-deploy", help="time onnxruntime, torch eager and torch.compile frozen sampling")
    add_model_args(p)
    p.add_argument("--schedule", default=None, help="schedule file (default: --lazy-ratio of whole steps, spread)")
    p.add_argument("--lazy-ratio", type=float, default=0.5)
    p.add_argument("--reuse", choices=["copy", "taylor1", "taylor2"], default="taylor1")
    p.add_argument("--steps", type=positive_int, default=50)
    p.add_argument("--cfg-scale", type=float, default=3.0)
    p.add_argument("--batch-sizes", type=_sizes, default=[1, 8], help="comma-separated, e.g. 1,8")
    p.add_argument("--threads", type=positive_int, default=1, help="intra-op threads of torch and onnxruntime")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (its first round compiles C++)")
    p.add_argument("--out", type=out_dir, default="out/bench-deploy")

    def run(a):
        check_output(a.out, "bench-deploy.json", "bench-deploy.md")
        from .export.bench import DeployBenchConfig, run_deploy_bench, write_report
        if a.device != "cpu":
            raise ValueError("bench-deploy measures the CPU paths (onnxruntime's CPU provider); leave --device out")
        c = DeployBenchConfig(model=a.model, checkpoint=a.ckpt, random_init=a.random_init, image_size=a.image_size,
                              num_classes=a.num_classes, schedule=a.schedule, lazy_ratio=a.lazy_ratio, reuse=a.reuse,
                              steps=a.steps, cfg_scale=a.cfg_scale, batch_sizes=a.batch_sizes, threads=a.threads,
                              warmup=a.warmup, repeats=a.repeats, compile=not a.no_compile, out_dir=a.out)
        path = write_report(run_deploy_bench(c), a.out)
        with open(path) as f:
            print(f.read())
    p.set_defaults(func=run)


DEPLOY_COMMANDS = [add_freeze, add_export, add_bench_deploy]
