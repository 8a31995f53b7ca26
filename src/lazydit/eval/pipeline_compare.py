"""The harness of `lazydit compare`, on a diffusers pipeline of today's families (FLUX, SD3,
Qwen-Image, Wan, HunyuanVideo): same prompts, same seeds, one table per (steps N, lazy target R).

Rows, each scored by PSNR against the pipeline at full compute with N steps (the "full" row):
- lazy: the default policy fitted through the pipeline (`train.diffusers_gates`);
- FORA (copy) and TaylorSeer (order-2 forecast) on whole-step skips, with as many skipped steps as
  keep their FLOPs at least the lazy row's, the placement (even spread or a warm-up) searched on
  the default's selection images with its effort (`rivals.placement`);
- the pipeline with fewer steps at the lazy row's FLOPs, and again at its measured time;
- diffusers' own hooks where they attach (`rivals.pipeline_hooks`): FirstBlockCache, MagCache and
  SeaCache fitted to the lazy row's FLOPs, TaylorSeerCache on the modules lazydit gates (warm-up and
  interval searched as FORA's placement), FasterCache and PyramidAttentionBroadcast in their
  default-like settings. A hook that fails on this family is reported as such, not dropped.

FLOPs are measured (`metrics.pipeline_flops`): what each method really called. Time is measured at
a batch of 1 and of 16 (`pipeline_report`). Evaluation seeds start at 3,000,000 (clear of every
study script), hook calibration at 50,000; the policy search fits and selects on 30,000+ and 40,000+.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from ..io import write_json
from ..core.lazy import LazyConfig, patterns
from ..metrics import bootstrap_ci, image_psnr
from ..metrics.pipeline_flops import generation_flops
from ..rivals.pipeline_hooks import HOOKS, attached, fit_hook, hook_attacher, measured_flops
from ..rivals.placement import search_placement, spread_evenly, whole_step_placements
from .seeds import EVAL_SEED
from .pipeline_report import matched_time_steps, plot_pipeline, time_methods, verdicts



@dataclass
class PipelineCompareConfig:
    out_dir: str = "out/compare-pipeline"
    settings: list = field(default_factory=lambda: [(28, 0.5)])  # (steps, lazy target)
    n_samples: int = 16             # evaluation images per method
    eval_seed: int = EVAL_SEED      # image i: seed eval_seed + i, prompt i % len(prompts)
    calib_images: int = 8           # the policy search's fitting + selection images
    correction_images: int = 8
    schedule_candidates: int = 12   # placements the policy search tries, and each rival's search
    hook_images: int = 2            # images that set each hook's threshold
    hooks: tuple = HOOKS            # diffusers' hooks run as rivals where they attach
    timing_rounds: int = 3          # interleaved timed rounds after a warm-up
    timing_batches: tuple = (1, 16)  # images per timed pipe(...) run: latency, then throughput
    fd: bool = False                # FD/KID and class accuracy (a class-prompted pipeline: Flux-FMNIST)
    n_ref: int = 500                # real test images for FD/KID
    bootstrap: int = 2000


def run_pipeline_compare(pipe, cfg: PipelineCompareConfig, prompts: list[str], call_kwargs: dict,
                         prompt_labels: list[int] | None = None, progress: bool = True) -> dict:
    """prompt_labels: the Fashion-MNIST class each prompt names, for FD/KID and class accuracy."""
    from ..integrations.diffusers.fit import pipeline_sampler
    if cfg.fd and prompt_labels is None:
        raise ValueError("FD/KID and class accuracy need the class each prompt names (the shipped Flux-FMNIST)")
    from ..train.placement_search import check_reachable
    for n, target in cfg.settings:  # before anything is written
        check_reachable(n, target)
    os.makedirs(cfg.out_dir, exist_ok=True)
    quality = _quality_scorer(cfg, prompts, prompt_labels) if cfg.fd else None
    rows = []
    for n, target in cfg.settings:
        sample = pipeline_sampler(pipe, prompts, n, call_kwargs)
        seeds = [cfg.eval_seed + i for i in range(cfg.n_samples)]
        ref = sample(seeds)
        full = generation_flops(pipe.transformer, lambda: sample(seeds[:1]))
        runs = _methods(pipe, cfg, prompts, call_kwargs, n, target, full, progress)
        rows.append(_row("full", n, target, 1.0, ref, ref, cfg, quality, {"reference": True}))
        for name, run in tqdm(runs.items(), desc=f"N={n} R={target}: sample", disable=not progress, leave=False):
            if "error" in run:
                rows.append({"method": name, "steps": n, "target": target, "not_applicable": run["error"]})
                continue
            images = pipeline_sampler(pipe, prompts, run["steps"], call_kwargs)(seeds) if run["apply"] is None \
                else attached(pipe, run["apply"], lambda: sample(seeds))
            rows.append(_row(name, n, target, run["flops"], images, ref, cfg, quality, run.get("extra", {})))
        group = [r for r in rows if r["steps"] == n and r["target"] == target and "psnr" in r]
        time_methods(pipe, cfg, prompts, call_kwargs, n, runs, group)
        for extra in matched_time_steps(group, n):  # DDIM-k at the default's measured time, where it differs
            k = extra["steps"]
            runs[f"steps-{k}"] = {"apply": None, "steps": k, "flops": k / n}
            images = pipeline_sampler(pipe, prompts, k, call_kwargs)(seeds)
            rows.append(_row(f"steps-{k}", n, target, k / n, images, ref, cfg, quality, {"matched_time": True}))
            time_methods(pipe, cfg, prompts, call_kwargs, n, runs, [rows[-1]])
        result = _result(pipe, cfg, prompts, call_kwargs, rows)
        write_json(os.path.join(cfg.out_dir, "results.json"), result)  # each setting as it is done
    plot_pipeline(result["rows"], cfg.out_dir, cfg.fd, cfg.timing_batches)
    return result


def _result(pipe, cfg, prompts, call_kwargs, rows) -> dict:
    return {"config": asdict(cfg), "rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
            "verdicts": verdicts(rows, cfg.bootstrap, cfg.timing_batches), "family": type(pipe.transformer).__name__,
            "prompts": prompts, "call_kwargs": call_kwargs,
            "psnr_definition": "per-image PSNR against full compute at N steps, images in [0, 1], capped at 100 dB; "
                               "psnr_pooled: PSNR of the pooled MSE",
            "flops": "measured with torch's FLOP counter per module, times the calls each method made",
            "time": "seconds of pipe(...) per batch relative to full compute, median over interleaved rounds "
                    "after a warm-up, [min, max] over the rounds"}


def _quality_scorer(cfg, prompts, prompt_labels):
    """images -> FD/KID (EfficientNet-Lite0 features, against the shipped test batch) and class accuracy."""
    from ..data import load_reference
    from ..metrics.quality import class_accuracy, effnet_features, fd_kid
    real_f = effnet_features(load_reference(cfg.n_ref)[0])
    labels = torch.tensor([prompt_labels[i % len(prompts)] for i in range(cfg.n_samples)])

    def score(images):
        return {**fd_kid(real_f, images), "class_acc": class_accuracy(images, labels)}
    return score


def _row(name, n, target, flops, images, ref, cfg, quality, extra) -> dict:
    p = image_psnr(images, ref)
    mse = float(((images.clamp(-1, 1) - ref.clamp(-1, 1)) / 2).pow(2).mean())
    row = {"method": name, "steps": n, "target": target, "flops_vs_full": flops,
           "psnr": float(p.mean()), "psnr_ci95": list(bootstrap_ci(p, cfg.bootstrap)),
           "psnr_pooled": 10 * math.log10(1 / mse) if mse > 0 else float("inf"), "_per_image": p, **extra}
    if quality is not None:
        row.update(quality(images))
    return row


def _selection(pipe, prompts, call_kwargs, n, cfg):
    """select(named candidates, attach(candidate), name) -> (best name, candidate, scores): a rival's
    placement searched on the default policy's selection images (seeds 40,000+, as many as it used),
    scored by mean PSNR against full compute."""
    from ..integrations.diffusers.fit import pipeline_sampler
    sample = pipeline_sampler(pipe, prompts, n, call_kwargs)
    seeds = [40_000 + j for j in range(max(1, cfg.calib_images // 2))]
    ref = sample(seeds)

    def select(named, attach, desc):
        def score(cand, k):
            return float(image_psnr(attached(pipe, attach(cand), lambda: sample(seeds[:k])), ref[:k]).mean())
        best, cand, scores = search_placement(named, score, len(seeds), desc=desc)
        return best, cand, scores["selection"]
    return select


def _lazy_apply(pipe, mask=None, reuse="copy", gates=None):
    from ..integrations.diffusers.pipeline import apply_lazy_to_pipeline, remove_lazy_from_pipeline

    def apply():
        if gates is not None:
            apply_lazy_to_pipeline(pipe, gates)
        else:
            n = mask.shape[0]
            apply_lazy_to_pipeline(pipe, num_inference_steps=n, config=LazyConfig(num_steps=n, reuse=reuse)).force(mask)
        return lambda: remove_lazy_from_pipeline(pipe)
    return apply


def _methods(pipe, cfg, prompts, call_kwargs, n, target, full, progress) -> dict:
    """name -> {"apply": attach function or None (plain pipeline), "flops": ratio, ...} or {"error": why}."""
    from ..integrations.diffusers.fit import pipeline_sampler
    from ..core.lazy.apply import lazy_targets, site_layout
    from ..train.diffusers_gates import fit_pipeline
    from ..train.gates import GateTrainConfig
    one = pipeline_sampler(pipe, prompts, n, call_kwargs)
    probe = [cfg.eval_seed]  # FLOPs depend on what is called, not on the image
    tcfg = GateTrainConfig(num_steps=n, target_lazy=target, calib_images=cfg.calib_images,
                           correction_images=cfg.correction_images, schedule_candidates=cfg.schedule_candidates,
                           out_dir=os.path.join(cfg.out_dir, f"gates-{n}-{target}"))
    tcfg.validate()
    _, summary = fit_pipeline(pipe, tcfg, prompts, call_kwargs, progress=progress)
    from ..integrations.diffusers.pipeline import remove_lazy_from_pipeline
    remove_lazy_from_pipeline(pipe)
    gates = os.path.join(tcfg.out_dir, "gates.safetensors")
    out = {"lazy": {"apply": _lazy_apply(pipe, gates=gates), "extra": {"schedule": summary["schedule"],
                                                                       "reuse": summary["reuse"]}}}
    lazy_flops = measured_flops(pipe, full, out["lazy"]["apply"], lambda: one(probe))
    out["lazy"]["flops"] = lazy_flops
    depth = site_layout(lazy_targets(pipe.transformer)[0])[2]
    select = _selection(pipe, prompts, call_kwargs, n, cfg)
    for name, reuse in (("FORA", "copy"), ("TaylorSeer2", "taylor2")):
        masks = whole_step_placements(n, depth, lazy_flops, lambda m: measured_flops(
            pipe, full, _lazy_apply(pipe, m, reuse), lambda: one(probe)), cfg.schedule_candidates)
        best, mask, scores = select(masks, lambda m, reuse=reuse: _lazy_apply(pipe, m, reuse), name)
        out[name] = {"apply": _lazy_apply(pipe, mask, reuse), "extra": {"placement": best, "placement_psnr": scores}}
        out[name]["flops"] = measured_flops(pipe, full, out[name]["apply"], lambda: one(probe))
    k = max(1, min(n, math.ceil(n * lazy_flops - 1e-9)))  # never fewer FLOPs than the lazy row
    out[f"steps-{k}"] = {"apply": None, "steps": k, "flops": k / n}
    if cfg.hooks:
        calib = [50_000 + i for i in range(cfg.hook_images)]

        def choose(settings):  # TaylorSeerCache's warm-up and interval, searched as the default's placement
            named = [(f"w{o['warmup']}-i{o['interval']}", o) for o in spread_evenly(settings, cfg.schedule_candidates)]
            return select(named, lambda o: hook_attacher(pipe, "TaylorSeerCache", o), "TaylorSeerCache")[1]
        for hook in cfg.hooks:
            try:
                out[hook] = fit_hook(pipe, hook, full, lambda: one(probe), lambda: one(calib), lazy_flops, n, choose)
            except (ValueError, RuntimeError, AttributeError, KeyError, TypeError, IndexError, AssertionError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                out[hook] = {"error": f"{type(e).__name__}: {first[:160]}"}
    return out
