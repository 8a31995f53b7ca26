"""`lazydit` evaluation subcommands: macs, bench, sample-many, inception, analyze.

Each builds its config dataclass and calls `lazydit.eval`; cli.py lists them in `commands()`.
"""
from __future__ import annotations

import os

from .cli_args import (add_model_args, add_sampling_args, device_arg, json_object, labels_arg, open_pipeline_args,
                       out_dir, out_file, positive_int, seed_arg)
from .io import check_output, check_output_file


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None


def _sample_config(a, **kw):
    from .loading import SampleConfig
    return SampleConfig(model=a.model, checkpoint=a.ckpt, random_init=a.random_init, image_size=a.image_size,
                        num_classes=a.num_classes, device=a.device, **kw)


def add_macs(sub):
    p = sub.add_parser("macs", help="MACs per module and per generation, thop ('linear') and with attention matmuls")
    p.add_argument("--model", default="DiT-XL/2", help="zoo name (default DiT-XL/2)")
    p.add_argument("--image-size", type=positive_int, default=256,
                   help="image side in PIXELS: latent models see it /8 through the VAE (DiT-FMNIST: 28)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--lazy-ratio", type=float, default=None, help="also the ideal MACs at this uniform lazy ratio")
    p.add_argument("--no-gate-cost", action="store_true", help="lazy figure without the gates (a forced pattern)")
    p.add_argument("--json", type=out_file, default=None, help="also write the numbers to this JSON file")

    def run(a):
        check_output_file(a.json)
        from .io import write_json
        from .metrics.macs import MacsConfig, format_report, macs_report
        rep = macs_report(MacsConfig(model=a.model, image_size=a.image_size, steps=a.steps, lazy_ratio=a.lazy_ratio,
                                     gates=not a.no_gate_cost))
        print(format_report(rep))
        if a.json:
            write_json(a.json, rep)
    p.set_defaults(func=run)


def add_bench(sub):
    p = sub.add_parser("bench", help="latency of DDIM-N, DDIM-k at matched MACs and lazy-N, against ideal MACs")
    add_model_args(p)
    p.add_argument("--batch-size", type=int, default=8, help="images per generation; CFG doubles the rows")
    p.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance of a DiT (default 1.5); "
                   "a pipeline keeps its own call's guidance (--pipe-kwargs)")
    p.add_argument("--steps", type=int, default=None, help="N (default 50; a pipeline: 28)")
    p.add_argument("--lazy-ratios", type=_floats, default=[0.5], help="forced static lazy ratios, comma-separated")
    p.add_argument("--gates", default=None, help="also time this learned gate file")
    p.add_argument("--no-ddim-match", action="store_true", help="skip the DDIM-k runs at the lazy runs' MACs")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--warmup", type=int, default=1, help="unrecorded rounds first")
    p.add_argument("--repeats", type=int, default=5, help="recorded rounds (each runs every configuration)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--out", type=out_dir, default="out/bench")
    p.add_argument("--pipe-kwargs", type=json_object, default=None,
                   help="with --model PIPELINE: more pipe(...) arguments as JSON; --image-size sets height and width")

    def run(a):
        check_output(a.out, "bench.json", "bench.md")
        from .eval.bench_report import markdown_table, write_bench
        from .integrations.diffusers.fit import is_pipeline
        if is_pipeline(a.model):
            rep = _bench_pipeline(a)
        else:
            if a.pipe_kwargs is not None:
                raise ValueError("--pipe-kwargs applies to a diffusers pipeline (--model PIPELINE_DIR or Flux-FMNIST)")
            rep = _bench_dit(a)
        jpath, _ = write_bench(rep, a.out)
        print(markdown_table(rep) + f"\nwritten to {os.path.dirname(jpath)}")
    p.set_defaults(func=run)


def _bench_pipeline(a) -> dict:
    from .eval.pipeline_bench import PipelineBenchConfig, run_pipeline_bench
    if a.steps is not None and a.steps < 2:
        raise ValueError("lazy benchmarks need at least 2 steps")
    if a.ckpt or a.random_init or a.num_classes or a.cfg_scale is not None or a.dtype != "fp32":
        raise ValueError(f"{a.model} is a diffusers pipeline with its own weights and call: --ckpt, --random-init, "
                         f"--num-classes, --cfg-scale and --dtype do not apply (guidance goes in --pipe-kwargs)")
    pipe, kwargs, prompts = open_pipeline_args(a)
    cfg = PipelineBenchConfig(model=a.model, batch_size=a.batch_size, steps=a.steps or 28, lazy_ratios=a.lazy_ratios,
                              gates=a.gates, match_steps=not a.no_ddim_match, warmup=a.warmup, repeats=a.repeats,
                              threads=a.threads, seed=a.seed, call_kwargs=kwargs, image_size=a.image_size,
                              out_dir=a.out)
    return run_pipeline_bench(pipe.to(a.device), cfg, prompts)


def _bench_dit(a) -> dict:
    from .eval.bench import BenchConfig, run_bench
    cfg = BenchConfig(model=a.model, checkpoint=a.ckpt, random_init=a.random_init, image_size=a.image_size,
                      num_classes=a.num_classes, batch_size=a.batch_size,
                      cfg_scale=1.5 if a.cfg_scale is None else a.cfg_scale, steps=a.steps or 50,
                      lazy_ratios=a.lazy_ratios, gates=a.gates, match_ddim=not a.no_ddim_match, dtype=a.dtype,
                      device=a.device, warmup=a.warmup, repeats=a.repeats, threads=a.threads, seed=a.seed,
                      out_dir=a.out)
    return run_bench(cfg)


def add_sample_many(sub):
    p = sub.add_parser("sample-many", help="K images over uniform labels, sharded (torchrun) and resumable, "
                                           "merged into an ADM .npz")
    add_model_args(p)
    add_sampling_args(p, cfg_scale=1.5)  # 1.5: the paper's evaluation setting
    p.add_argument("--num-images", type=int, default=50_000)
    p.add_argument("--batch-size", type=int, default=32, help="images per generation and per shard file")
    p.add_argument("--seed", type=seed_arg, default=0, help="image i uses seed+i and label i %% num_classes")
    p.add_argument("--vae", default=None, help="local diffusers AutoencoderKL folder (latent models)")
    p.add_argument("--out", type=out_dir, default="out/samples")

    def run(a):
        check_output(a.out, "shards/", "sample_many_config.json", "samples.npz", "lazy_stats.json")
        from .eval.sample_many import SampleManyConfig, run_sample_many
        s = _sample_config(a, gates=a.gates, force_skip=a.force_skip, max_skip_run=a.max_skip_run, reuse=a.reuse,
                           steps=a.steps,
                           sampler=a.sampler, eta=a.eta, cfg_scale=a.cfg_scale,
                           guide_all_channels=a.guide_all_channels, labels=[], seed=a.seed)
        path = run_sample_many(SampleManyConfig(sample=s, num_images=a.num_images, batch_size=a.batch_size,
                                                vae=a.vae, out_dir=a.out))
        if path:
            print(f"{a.num_images} images written to {path}; lazy statistics in {os.path.join(a.out, 'lazy_stats.json')}")
    p.set_defaults(func=run)


def add_inception(sub):
    p = sub.add_parser("inception", help="FID, sFID, IS, precision/recall of an .npz against an ADM reference batch")
    p.add_argument("sample", help="sample batch .npz (arr_0 uint8 NHWC)")
    p.add_argument("--ref", required=True, help="ADM reference batch .npz, e.g. VIRTUAL_imagenet256_labeled.npz")
    p.add_argument("--weights", required=True,
                   help="local FID Inception weights: pt_inception-2015-12-05-6726825d.pth (pytorch-fid)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", type=device_arg, default="cpu")
    p.add_argument("--out", type=out_file, default=None, help="also write the metrics to this JSON file")

    def run(a):
        check_output_file(a.out)
        from .eval.inception import InceptionConfig, run_inception
        if a.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        res = run_inception(InceptionConfig(ref=a.ref, sample=a.sample, weights=a.weights, batch_size=a.batch_size,
                                            device=a.device, out=a.out))
        print(f"Inception Score: {res['inception_score']:.4f}\nFID: {res['fid']:.4f}\nsFID: {res['sfid']:.4f}\n"
              f"Precision: {res['precision']:.4f}\nRecall: {res['recall']:.4f}")
    p.set_defaults(func=run)


def add_analyze(sub):
    p = sub.add_parser("analyze", help="cosine similarity of module outputs between consecutive steps (paper Sec 3.2)")
    add_model_args(p)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--labels", type=labels_arg, default=list(range(8)), help="comma-separated class labels")
    p.add_argument("--seed", type=seed_arg, default=0, help="image i uses seed+i")
    p.add_argument("--out", type=out_dir, default="out/analyze")

    def run(a):
        check_output(a.out, "similarity.json", "similarity.png")
        from .eval.analyze import AnalyzeConfig, run_analyze
        from .loading import build_lazy_model
        model = build_lazy_model(_sample_config(a))
        c = AnalyzeConfig(steps=a.steps, cfg_scale=a.cfg_scale, labels=tuple(a.labels), seed=a.seed, out_dir=a.out)
        s = run_analyze(model, c, {"arch": a.model, "checkpoint": a.ckpt, "random_init": a.random_init})
        print(f"mean cosine similarity attn {s['attn']['mean']:.4f} (min {s['attn']['min']:.4f}), "
              f"ffn {s['ffn']['mean']:.4f} (min {s['ffn']['min']:.4f}); written to {a.out}")
    p.set_defaults(func=run)
