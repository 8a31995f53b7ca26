"""diffusers' own cache hooks as rivals on a pipeline of today's families (FLUX, SD3, Qwen-Image,
Wan, HunyuanVideo): how each is configured, attached and fitted to a FLOPs budget.

Threshold hooks (FirstBlockCache, MagCache, SeaCache) are bisected to the cheapest setting with at
least the budget's FLOPs; TaylorSeerCache searches its warm-up and interval on the same sites lazydit
gates; FasterCache and PyramidAttentionBroadcast run in their default-like settings.
"""
from __future__ import annotations

import torch

from ..metrics.pipeline_flops import generation_flops
from .methods import bisect_threshold

HOOKS = ("FirstBlockCache", "MagCache", "SeaCache", "TaylorSeerCache", "FasterCache", "PyramidAttentionBroadcast")


def attached(pipe, apply, fn):
    """Run fn() with a method attached to the pipeline, and detach it whatever happens."""
    detach = apply()
    try:
        return fn()
    finally:
        detach()


def measured_flops(pipe, full: float, apply, run) -> float:
    """FLOPs of `run()` with a method attached, relative to full compute's `full`."""
    return attached(pipe, apply, lambda: generation_flops(pipe.transformer, run)) / full


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


def hook_attacher(pipe, hook: str, opts: dict):
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


def fit_hook(pipe, hook, full, probe, calib, lazy_flops: float, n: int, choose=None) -> dict:
    """The hook's setting with the fewest FLOPs that are still at least the lazy row's.

    choose(settings) -> setting: where a hook has several placements within 0.03 of those FLOPs
    (TaylorSeerCache's warm-up and interval), picks among them (a search on selection images);
    without it, the cheapest wins."""
    def flops(opts):
        return measured_flops(pipe, full, hook_attacher(pipe, hook, opts), probe)
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
        scored = _taylorseer_settings(flops, n, lazy_flops)
        ok = sorted([(f, o) for f, o in scored if f >= lazy_flops - 1e-9], key=lambda x: x[0])
        if not ok:  # no setting spends that much: the most expensive one
            opts = max(scored, key=lambda x: x[0])[1]
        else:
            near = [o for f, o in ok if f <= ok[0][0] + 0.03]
            opts = choose(near) if choose is not None and len(near) > 1 else ok[0][1]
    else:
        opts = {"distilled": getattr(pipe.transformer.config, "guidance_embeds", False) or
                type(pipe).__name__ in ("WanPipeline", "QwenImagePipeline"), "format": _tensor_format(pipe)}
    return {"apply": hook_attacher(pipe, hook, opts), "flops": flops(opts),
            "extra": {"setting": {k: v for k, v in opts.items() if k != "ratios"}}}


def _taylorseer_settings(flops, n: int, budget: float) -> list:
    """[(FLOPs, setting)] of TaylorSeerCache's warm-ups and intervals around `budget`: per interval,
    the smallest warm-up with at least the budget's FLOPs (bisected: FLOPs grow with the warm-up)
    and the next ones while within 0.03 of it, so the grid costs a few measurements, not n/2."""
    out = []
    for interval in (2, 3, 4, 5):
        memo = {}

        def f(w):
            if w not in memo:
                memo[w] = flops({"interval": interval, "warmup": w})
            return memo[w]
        lo, hi = 1, n // 2  # warm-up >= 1: the hook cannot forecast before it has computed once
        if f(hi) < budget - 1e-9:
            out.append((f(hi), {"interval": interval, "warmup": hi}))
            continue
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if f(mid) < budget - 1e-9 else (lo, mid)
        w = lo
        while w <= n // 2 and f(w) <= f(lo) + 0.03:
            out.append((f(w), {"interval": interval, "warmup": w}))
            w += 1
    return out


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
            attached(pipe, hook_attacher(pipe, "MagCache", {"calibrate": True, "n": n}), calib)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate
    if not found:
        raise ValueError("MagCache reported no calibration ratios")
    import json
    return [float(r) for r in json.loads(found[0])]


