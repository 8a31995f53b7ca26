"""Fitting diffusers' input-dependent hooks to a MACs target, on calibration seeds only.

- SeaCache, FirstBlockCache, MagCache: the threshold is bisected in log space (`bisect_threshold`, as
  for lazydit's own training-free policies) until the MACs measured by `HookedDiT` match the target.
  MagCache first measures its magnitude ratios in its calibration mode on the same seeds.
- FasterCache has no threshold: each of `FASTERCACHE_SETTINGS` is measured and the closest kept.
  Its schedule does not depend on the images, so one calibration image measures it.
A hook that cannot come within 0.03 of the target keeps its closest try, marked `reached: False`;
its row in the table shows the MACs it really spends.
"""
from __future__ import annotations

from ..metrics.macs import lazy_macs, module_macs
from ..pipeline import generate
from .diffusers_hooks import FASTERCACHE_SETTINGS, MAGCACHE_CALIBRATE, THRESHOLD_HOOKS, magcache_ratios
from .diffusers_rivals import HookedDiT
from .methods import Method, bisect_threshold

MATCH = 0.03  # MACs ratios within this count as matched, as in compare's verdicts


def hook_macs_ratio(model, hook: str, opts: dict, n: int, labels, seeds, cfg_scale: float) -> tuple[float, HookedDiT]:
    """MACs of `hook` with `opts` over `n` steps, measured on (labels, seeds), as a fraction of full compute."""
    net = HookedDiT(model, hook, opts, n)
    generate(net, labels, seeds, steps=n, cfg_scale=cfg_scale)
    mm = module_macs(model.config, "linear")
    return lazy_macs(net.measured_skips(), mm, gates=False) / (n * mm.forward), net


def fit_hook(model, m: Method, target_macs: float, labels, seeds, cfg_scale: float, rounds: int = 10) -> Method:
    """`m` (from `diffusers_methods`) with its hook's settings fitted so that its MACs, as a fraction
    of full compute, come closest to `target_macs`; methods with nothing to fit come back unchanged."""
    hook = m.extra.get("hook")
    if m.kind != "diffusers" or hook not in (*THRESHOLD_HOOKS, "FasterCache"):
        return m
    n = m.steps

    def ratio(opts: dict, lab=labels, sd=seeds) -> float:
        return hook_macs_ratio(model, hook, opts, n, lab, sd, cfg_scale)[0]

    if hook == "FasterCache":
        tried = [(ratio(s, labels[:1], seeds[:1]), s) for s in FASTERCACHE_SETTINGS]
        got, opts = min(tried, key=lambda rs: abs(rs[0] - target_macs))
    else:
        base = {}
        if hook == "MagCache":
            _, net = hook_macs_ratio(model, hook, {"mag_ratios": MAGCACHE_CALIBRATE}, n, labels, seeds, cfg_scale)
            base["mag_ratios"] = magcache_ratios(net.transformer)
        # bisect_threshold wants a measure that grows with the threshold: the fraction saved
        thr, saved = bisect_threshold(lambda thr: 1 - ratio({**base, "threshold": thr}), 1 - target_macs, rounds)
        got, opts = 1 - saved, {**base, "threshold": thr}
    extra = {**m.extra, **opts, "calib_macs": got, "reached": abs(got - target_macs) <= MATCH}
    return Method(m.name, m.group, m.steps, m.kind, m.reuse, family=m.family, extra=extra)
