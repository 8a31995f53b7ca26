"""The harness of `lazydit compare`, on a diffusers pipeline of today's families (FLUX, SD3,
Qwen-Image, Wan, HunyuanVideo): same prompts, same seeds, one table per (steps N, lazy target R).

Rows, each scored by PSNR against the pipeline at full compute with N steps:
  lazy (the default policy fitted through the pipeline, `train.diffusers_gates`) | FORA (copy) and
  TaylorSeer (order-2 forecast) on whole-step skips spread evenly at R | the pipeline with fewer
  steps at the lazy row's FLOPs | diffusers' own hooks where they attach: FirstBlockCache and
  MagCache and SeaCache (thresholds bisected, then the cheapest setting with at least the lazy
  row's FLOPs; SeaCache only skips where diffusers has an adapter, Wan),
  TaylorSeerCache on the modules lazydit gates (the grid of warm-ups and intervals), FasterCache
  and PyramidAttentionBroadcast in their default-like settings. A hook that fails on this family
  (no cache context, a doubled batch it does not expect) is reported as such, not dropped silently.

FLOPs are measured (`pipeline_costs`): what each method really called. Evaluation seeds start at
2,000,000, hook calibration at 50,000; the policy search fits and selects on 30,000+ and 40,000+.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch

from ..io import write_json
from ..core.lazy import LazyConfig, patterns
from ..metrics import bootstrap_ci, image_psnr
from ..rivals.methods import bisect_threshold
from .pipeline_costs import generation_flops

HOOKS = ("FirstBlockCache", "MagCache", "SeaCache", "TaylorSeerCache", "FasterCache", "PyramidAttentionBroadcast")


@dataclass
class PipelineCompareConfig:
    out_dir: str = "out/compare-pipeline"
    settings: list = field(default_factory=lambda: [(28, 0.5)])  # (steps, lazy target)
    n_samples: int = 16             # evaluation images per method
    eval_seed: int = 2_000_000      # image i: seed eval_seed + i, prompt i % len(prompts)
    calib_images: int = 8           # the policy search's fitting + selection images
    correction_images: int = 8
    schedule_candidates: int = 12   # placements the policy search tries
    hook_images: int = 2            # images that set each hook's threshold
    hooks: tuple = HOOKS            # diffusers' hooks run as rivals where they attach
    timing_rounds: int = 3          # interleaved timed rounds after a warm-up, one image per method
    bootstrap: int = 2000


def run_pipeline_compare(pipe, cfg: PipelineCompareConfig, prompts: list[str], call_kwargs: dict,
                         progress: bool = True) -> dict:
    from ..integrations.diffusers.fit import pipeline_sampler
    os.makedirs(cfg.out_dir, exist_ok=True)
    rows = []
    for n, target in cfg.settings:
        sample = pipeline_sampler(pipe, prompts, n, call_kwargs)
        seeds = [cfg.eval_seed + i for i in range(cfg.n_samples)]
        ref = sample(seeds)
        full = generation_flops(pipe.transformer, lambda: sample(seeds[:1]))
        runs = _methods(pipe, cfg, prompts, call_kwargs, n, target, full, progress)
        for name, run in runs.items():
            if "error" in run:
                rows.append({"method": name, "steps": n, "target": target, "not_applicable": run["error"]})
                continue
            images = pipeline_sampler(pipe, prompts, run.get("steps", n), call_kwargs)(seeds) if run["apply"] is None \
                else _with(pipe, run["apply"], lambda: sample(seeds))
            p = image_psnr(images, ref)
            mse = float(((images.clamp(-1, 1) - ref.clamp(-1, 1)) / 2).pow(2).mean())
            rows.append({"method": name, "steps": n, "target": target, "flops_vs_full": run["flops"],
                         "psnr": float(p.mean()), "psnr_ci95": list(bootstrap_ci(p, cfg.bootstrap)),
                         "psnr_pooled": 10 * math.log10(1 / mse) if mse > 0 else float("inf"), "_per_image": p,
                         **run.get("extra", {})})
        _time(pipe, cfg, prompts, call_kwargs, n, runs, [r for r in rows if r["steps"] == n and "psnr" in r])
    result = {"config": asdict(cfg), "rows": [{k: v for k, v in r.items() if k != "_per_image"} for r in rows],
              "verdicts": _verdicts(rows, cfg.bootstrap), "family": type(pipe.transformer).__name__,
              "prompts": prompts, "call_kwargs": call_kwargs,
              "psnr_definition": "per-image PSNR against full compute at N steps, images in [0, 1], capped at 100 dB; "
                                 "psnr_pooled: PSNR of the pooled MSE",
              "flops": "measured with torch's FLOP counter per module, times the calls each method made"}
    write_json(os.path.join(cfg.out_dir, "results.json"), result)
    return result


def _with(pipe, apply, fn):
    """Run fn() with a method attached to the pipeline, and detach it whatever happens."""
    detach = apply()
    try:
        return fn()
    finally:
        detach()


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


def _measured(pipe, full: float, apply, run) -> float:
    """FLOPs of `run()` with a method attached, relative to full compute's `full`."""
    return _with(pipe, apply, lambda: generation_flops(pipe.transformer, run)) / full


def _methods(pipe, cfg, prompts, call_kwargs, n, target, full, progress) -> dict:
    """name -> {"apply": attach function or None (plain pipeline), "flops": ratio, ...} or {"error": why}."""
    from ..integrations.diffusers.fit import pipeline_sampler
    from ..core.lazy.apply import lazy_targets, site_layout
    from ..train.diffusers_gates import fit_pipeline
    from ..train.gates import GateTrainConfig
    one = pipeline_sampler(pipe, prompts, n, call_kwargs)
    probe = [cfg.eval_seed]  # FLOPs depend on what is called, not on the image
    tcfg = GateTrainConfig(num_steps=n, target_lazy=target, calib_images=cfg.calib_images,
                           correction_images=cfg.correction_images, schedule_candidates=cfg.schedule_candidates, out_dir=os.path.join(cfg.out_dir, f"gates-{n}-{target}"))
    tcfg.validate()
    _, summary = fit_pipeline(pipe, tcfg, prompts, call_kwargs, progress=progress)
    from ..integrations.diffusers.pipeline import remove_lazy_from_pipeline
    remove_lazy_from_pipeline(pipe)
    gates = os.path.join(tcfg.out_dir, "gates.safetensors")
    out = {"lazy": {"apply": _lazy_apply(pipe, gates=gates), "extra": {"schedule": summary["schedule"],
                                                                       "reuse": summary["reuse"]}}}
    depth = site_layout(lazy_targets(pipe.transformer)[0])[2]
    spread = patterns.target_fraction(n, depth, target)
    out["FORA"] = {"apply": _lazy_apply(pipe, spread, "copy")}
    out["TaylorSeer2"] = {"apply": _lazy_apply(pipe, spread, "taylor2")}
    for m in out.values():
        m["flops"] = _measured(pipe, full, m["apply"], lambda: one(probe))
    lazy_flops = out["lazy"]["flops"]
    k = max(1, min(n, math.ceil(n * lazy_flops)))  # never fewer FLOPs than the lazy row
    out[f"steps-{k}"] = {"apply": None, "steps": k, "flops": k / n}
    if cfg.hooks:
        calib = [50_000 + i for i in range(cfg.hook_images)]
        for hook in cfg.hooks:
            try:
                out[hook] = _fit_hook(pipe, hook, full, lambda: one(probe), lambda: one(calib), lazy_flops, n)
            except (ValueError, RuntimeError, AttributeError, KeyError, TypeError, IndexError, AssertionError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                out[hook] = {"error": f"{type(e).__name__}: {first[:160]}"}
    return out


def _hook_config(pipe, hook: str, opts: dict):
    import diffusers.hooks as dh
    if hook == "FirstBlockCache":
        return dh.FirstBlockCacheConfig(threshold=opts["threshold"])
    if hook == "SeaCache":  # its built-in adapters (Wan) read the latents; elsewhere it never skips
        return dh.SeaCacheConfig(threshold=opts["threshold"])
    if hook == "MagCache":
        if opts.get("calibrate"):
            return dh.MagCacheConfig(calibrate=True, num_inference_steps=opts["n"])
        return dh.MagCacheConfig(threshold=opts["threshold"], num_inference_steps=opts["n"],
                                 mag_ratios=torch.tensor(opts["ratios"]))
    if hook == "TaylorSeerCache":
        return dh.TaylorSeerCacheConfig(cache_interval=opts["interval"], disable_cache_before_step=opts["warmup"],
                                        max_order=2, taylor_factors_dtype=torch.float32,
                                        cache_identifiers=_site_patterns(pipe.transformer))
    if hook == "FasterCache":
        return dh.FasterCacheConfig(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 1000),
                                    current_timestep_callback=lambda: pipe.current_timestep,
                                    attention_weight_callback=lambda _: 0.5, is_guidance_distilled=opts["distilled"],
                                    tensor_format=opts["format"])
    if hook == "PyramidAttentionBroadcast":
        return dh.PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                  spatial_attention_timestep_skip_range=(-1, 1000),
                                                  current_timestep_callback=lambda: pipe.current_timestep)
    raise ValueError(f"unknown diffusers hook {hook!r}")


def _hook_apply(pipe, hook: str, opts: dict):
    """Attach through `enable_cache`, the public route: the raw apply_* functions leave the
    transformer's cached list of hooked submodules stale, and the pipeline's cache_context then
    never reaches the new hooks ("No cache context is set")."""
    tr = pipe.transformer
    if not hasattr(tr, "enable_cache"):
        raise ValueError(f"{type(tr).__name__} has no enable_cache (not a CacheMixin model in this diffusers)")

    def apply():
        import logging
        quiet = [logging.getLogger(f"diffusers.hooks.{m}") for m in ("faster_cache", "sea_cache")]
        levels = [log.level for log in quiet]
        for log in quiet:  # "purely experimental" on every attach, "fail-open" on every call: not news here
            log.setLevel(logging.ERROR)
        try:
            tr.enable_cache(_hook_config(pipe, hook, opts))
        finally:
            for log, level in zip(quiet, levels):
                log.setLevel(level)
        return tr.disable_cache
    return apply


def _site_patterns(transformer) -> list[str]:
    """Regexes naming exactly the modules lazydit gates, so TaylorSeerCache forecasts the same sites."""
    from ..core.lazy.apply import lazy_targets
    names = {id(m): n for n, m in transformer.named_modules()}
    return [f"^{names[id(m)].replace('.', '[.]')}$" for _, _, m in lazy_targets(transformer)[0]]


def _fit_hook(pipe, hook, full, probe, calib, lazy_flops: float, n: int) -> dict:
    """The hook's setting with the fewest FLOPs that are still at least the lazy row's."""
    def flops(opts):
        return _measured(pipe, full, _hook_apply(pipe, hook, opts), probe)
    if hook in ("FirstBlockCache", "MagCache", "SeaCache"):
        opts = {"n": n}
        if hook == "MagCache":
            opts["ratios"] = _mag_ratios(pipe, n, calib)
        # a larger threshold reuses more: 1 - FLOPs grows with it
        thr, _ = bisect_threshold(lambda t: 1 - flops({**opts, "threshold": t}), 1 - lazy_flops, rounds=8,
                                  lo=1e-3, hi=10.0)
        while flops({**opts, "threshold": thr}) < lazy_flops and thr > 1e-4:
            thr *= 0.8
        opts["threshold"] = thr
        if flops(opts) > 0.999:
            raise ValueError(f"{hook} skipped nothing on this family at any threshold")
    elif hook == "TaylorSeerCache":
        # warm-up >= 1: the hook cannot forecast before it has computed once
        grid = [{"interval": i, "warmup": w} for i in (2, 3, 4, 5) for w in range(1, n // 2 + 1)]
        scored = [(flops(o), o) for o in grid]
        ok = [(f, o) for f, o in scored if f >= lazy_flops - 1e-9]
        f, opts = min(ok, key=lambda x: x[0]) if ok else max(scored, key=lambda x: x[0])
    else:
        opts = {"distilled": getattr(pipe.transformer.config, "guidance_embeds", False) or
                type(pipe).__name__ in ("WanPipeline", "QwenImagePipeline"), "format": _tensor_format(pipe)}
    return {"apply": _hook_apply(pipe, hook, opts), "flops": flops(opts),
            "extra": {"setting": {k: v for k, v in opts.items() if k != "ratios"}}}


def _tensor_format(pipe) -> str:
    return "BCFHW" if "Wan" in type(pipe).__name__ or "Hunyuan" in type(pipe).__name__ else "BCHW"


def _mag_ratios(pipe, n: int, calib) -> list[float]:
    """MagCache's magnitude ratios, measured in its own calibration mode (they are model-dependent).
    The hook only prints and logs them at the end of a generation, so the log record is read."""
    import contextlib
    import io
    import logging

    found = []

    class Grab(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if msg.startswith("MagCache Calibration Results:"):
                found.append(msg.split(":", 1)[1])
    log = logging.getLogger("diffusers.hooks.mag_cache")
    handler, level, propagate = Grab(), log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # read here, not printed: its INFO lines would flood the user's console
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it also prints them
            _with(pipe, _hook_apply(pipe, "MagCache", {"calibrate": True, "n": n}), calib)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate
    if not found:
        raise ValueError("MagCache reported no calibration ratios")
    import json
    return [float(r) for r in json.loads(found[0])]


def _time(pipe, cfg, prompts, call_kwargs, n, runs, rows):
    """Seconds per image of each method, after a warm-up, in interleaved rounds; the ratio to full
    compute is taken within each round and its median reported."""
    from ..integrations.diffusers.fit import pipeline_sampler
    seed = [cfg.eval_seed]
    plain = {None: pipeline_sampler(pipe, prompts, n, call_kwargs)}

    def once(name):
        run = runs.get(name)
        t0 = time.perf_counter()
        if run is None:
            plain[None](seed)
        elif run["apply"] is None:
            pipeline_sampler(pipe, prompts, run["steps"], call_kwargs)(seed)
        else:
            _with(pipe, run["apply"], lambda: plain[None](seed))
        return time.perf_counter() - t0
    names = [None] + [r["method"] for r in rows]
    for name in names:  # warm-up
        once(name)
    ratios = {r["method"]: [] for r in rows}
    for _ in range(cfg.timing_rounds):
        base = once(None)
        for name in ratios:
            ratios[name].append(once(name) / base)
    for r in rows:
        v = sorted(ratios[r["method"]])
        r["time_ratio"] = v[len(v) // 2]
        r["time_ratio_range"] = [v[0], v[-1]]


def _verdicts(rows, resamples: int) -> list:
    """Per setting: the lazy row against the best rival with at least its FLOPs, paired bootstrap
    interval of the per-image PSNR difference."""
    out = []
    for n, target in sorted({(r["steps"], r["target"]) for r in rows}):
        group = [r for r in rows if r["steps"] == n and r["target"] == target and "psnr" in r]
        lazy = next((r for r in group if r["method"] == "lazy"), None)
        rivals = [r for r in group if r is not lazy and r["flops_vs_full"] >= lazy["flops_vs_full"] - 0.005] if lazy else []
        if not rivals:
            continue
        best = max(rivals, key=lambda r: r["psnr"])
        diff = lazy["_per_image"] - best["_per_image"]
        lo, hi = bootstrap_ci(diff, resamples)
        out.append({"steps": n, "target": target, "best_rival": best["method"], "gain_db": float(diff.mean()),
                    "gain_ci95": [lo, hi], "pooled_gain_db": lazy["psnr_pooled"] - best["psnr_pooled"]})
    return out


def format_pipeline_table(result: dict) -> str:
    lines = [f"{result['family']}: PSNR against full compute (mean per image [95% CI], pooled), FLOPs and time "
             f"as fractions of full compute",
             "| N | R | method | FLOPs | time | PSNR | pooled |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "not_applicable" in r:
            lines.append(f"| {r['steps']} | {r['target']} | {r['method']} | - | - | not applicable: "
                         f"{r['not_applicable']} | - |")
            continue
        lo, hi = r["psnr_ci95"]
        lines.append(f"| {r['steps']} | {r['target']} | {r['method']} | {r['flops_vs_full']:.3f} | "
                     f"{r.get('time_ratio', float('nan')):.2f} | {r['psnr']:.2f} [{lo:.2f}, {hi:.2f}] | "
                     f"{r['psnr_pooled']:.2f} |")
    for v in result["verdicts"]:
        lo, hi = v["gain_ci95"]
        lines.append(f"N={v['steps']} R={v['target']}: lazy vs {v['best_rival']} {v['gain_db']:+.2f} dB "
                     f"[{lo:+.2f}, {hi:+.2f}], pooled {v['pooled_gain_db']:+.2f} dB")
    return "\n".join(lines)
