"""The methods of one frontier setting (N steps, lazy target R), each a plain description that
`configure` turns into a model state. All share one model, so each run starts by removing
whatever the previous one attached.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..core.lazy import LazyConfig, apply_lazy, patterns, remove_lazy
from ..core.lazy.policies import make_policy
from ..metrics.macs import lazy_macs
from ..pipeline import generate
from ..train.threshold_search import search_increasing
from .baselines import static_from_decisions
from .placement import most_skips, search_placement, spread_placements, warmup_interval_settings

# The static rivals whose placement is searched: (name, operator, plot legend)
STATIC_RIVALS = (("FORA", "copy", "static copy"), ("TaylorSeer1", "taylor1", "static forecast"),
                 ("TaylorSeer2", "taylor2", "static forecast"))
EVERY = (2, 3, 4)  # warm-up-then-every-n intervals, as in the default's candidates (`train.placement_search`)


DEFAULT = "lazy (default)"                # the default policy's row, fitted on the harness's seed
OTHER_SEED = "lazy (other fitting seed)"  # the same policy fitted on another seed: its spread, not a rival


@dataclass
class Method:
    name: str
    group: int                    # the full-compute step count it is compared against
    steps: int                    # steps it samples with (DDIM-k: k)
    kind: str                     # full | gates | mask | policy
    reuse: str = "copy"
    mask: torch.Tensor | None = None
    policy: str | None = None
    threshold: float | None = None
    ctrl: object = None           # a trained LazyController (kind "gates")
    family: str = ""              # plot legend
    extra: dict = field(default_factory=dict)


def configure(model, m: Method):
    """Leave `model` sampling as method `m` does; returns the module to sample with (the model
    itself, or for diffusers' hooks a converted copy)."""
    remove_lazy(model)
    if m.kind == "full":
        return model
    if m.kind == "gates":
        apply_lazy(model, m.steps, controller=m.ctrl)
        return model
    if m.kind == "diffusers":  # m.extra names the hook and holds its settings
        from .diffusers_rivals import HookedDiT
        return HookedDiT(model, m.extra["hook"], m.extra, m.steps)
    ctrl = apply_lazy(model, m.steps, LazyConfig(num_steps=m.steps, reuse=m.reuse))
    if m.kind == "mask":
        ctrl.force(m.mask)
    elif m.kind == "policy":
        ctrl.set_policy(make_policy(m.policy, m.threshold))
    else:
        raise ValueError(f"unknown method kind {m.kind!r}")
    return model


def diffusers_methods(n: int, ratio: float) -> list[Method]:
    """diffusers' threshold hooks (SeaCache, FirstBlockCache, MagCache) and FasterCache (empty
    without diffusers), still to be fitted to the MACs on calibration seeds by
    `diffusers_calibration.fit_hook`; their names are known before, so that `compare --only` can
    pick them without fitting the others. TaylorSeerCache's placement is searched like the static
    rivals' (`searched_taylorseer_methods`)."""
    from .diffusers_hooks import THRESHOLD_HOOKS
    from .diffusers_rivals import diffusers_available
    if not diffusers_available():
        return []
    return [Method(f"diffusers-{hook}-{n}@{ratio:.0%}", n, n, "diffusers", family="diffusers hook", extra={"hook": hook})
            for hook in (*THRESHOLD_HOOKS, "FasterCache")]


def l2c_method(n: int, skips: torch.Tensor, ratio: float, reuse: str) -> Method:
    return Method(f"L2C-{n}@{ratio:.0%}", n, n, "mask", reuse, static_from_decisions(skips, ratio), family="L2C")


def ddim_method(group: int, macs: float, per_step: float, matched_to: str | None = None) -> Method:
    """DDIM-k with the fewest steps whose MACs are at least `macs` (never fewer than the default's);
    matched_to: the lazy row it is matched to (`compare._verdicts`)."""
    k = min(group, max(1, math.ceil(macs / per_step - 1e-9)))
    return Method(f"DDIM-{k}", group, k, "full", family="DDIM", extra={"matched_to": matched_to} if matched_to else {})


def whole_step_macs(n: int, skips: int, mm) -> float:
    """MACs, relative to full compute, of n steps with `skips` whole steps skipped and nothing else
    spent (no gate scores, no correction): every static rival's, wherever the skips sit."""
    mask = patterns.target_fraction(n, mm.depth, skips / n)
    return lazy_macs(mask[..., None], mm, gates=False) / (n * mm.forward)


def static_placements(n: int, mm, budget: float, count: int) -> list:
    """FORA's and TaylorSeer's candidate placements at a MACs budget (relative to full compute), as
    [(name, (N, L, 2) mask)]: the most skipped steps whose MACs stay >= budget, evenly spread, after
    a warm-up then spread (at most `count` of those, as the pipeline harness), and warm-up W then
    every n-th step for n in EVERY and each W that skips exactly as many."""
    k = most_skips(n, budget, lambda s: whole_step_macs(n, s, mm))
    out = spread_placements(n, mm.depth, k, count)
    for w, every in warmup_interval_settings(n, k, lambda w, e: int(patterns.warmup_every(n, 1, w, e)[:, 0, 0].sum()),
                                             EVERY):
        mask = patterns.warmup_every(n, mm.depth, w, every)
        if not any(torch.equal(mask, m) for _, m in out):
            out.append((f"warmup{w}-every{every}" if w else f"every{every}", mask))
    return out


def taylorseer_settings(n: int, mm, budget: float) -> list:
    """diffusers' TaylorSeerCache's candidate (warm-up, interval) pairs at a MACs budget: the most
    skipped steps its own rule can skip with MACs >= budget, every interval in EVERY and warm-up >= 1
    (it cannot forecast before it has computed once) that skips exactly that many."""
    from .diffusers_rivals import taylorseer_skips
    k = most_skips(n, budget, lambda s: whole_step_macs(n, s, mm))
    while True:  # its rule cannot reach every count at every interval: take the most it can reach
        found = warmup_interval_settings(n, k, lambda w, i: int(taylorseer_skips(n, 1, w, i)[:, 0, 0].sum()),
                                         EVERY, min_warmup=1)
        if found or k == 0:
            return found
        k -= 1


def _placement_extra(best: str, scores: dict, skips: int, matched_to: str) -> dict:
    return {"placement": best, "placement_psnr": scores["selection"], "placement_screen_psnr": scores["screen"],
            "skipped_steps": skips, "matched_to": matched_to}


def searched_static_methods(n: int, mm, budget: float, count: int, score, images: int, matched_to: str,
                            wanted=lambda stem: True) -> list[Method]:
    """FORA, TaylorSeer1 and TaylorSeer2 (those `wanted(name)`), each at the placement of
    `static_placements` that scores best by `score(method, k)` on k of `images` selection images
    (`rivals.placement.search_placement`: the default's effort). Named <rival>-N-<placement>."""
    cands = static_placements(n, mm, budget, count)
    out = []
    for stem, op, family in STATIC_RIVALS:
        if not wanted(f"{stem}-{n}-"):
            continue
        best, mask, scores = search_placement(
            cands, lambda mask, k, op=op: score(Method(stem, n, n, "mask", op, mask), k), images, desc=stem)
        skips = int(mask[:, 0, 0].sum())
        out.append(Method(f"{stem}-{n}-{best}", n, n, "mask", op, mask, family=family,
                          extra=_placement_extra(best, scores, skips, matched_to)))
    return out


def searched_taylorseer_methods(n: int, mm, budget: float, score, images: int, matched_to: str,
                                wanted=lambda stem: True) -> list[Method]:
    """diffusers' TaylorSeerCache, orders 1 and 2 (those `wanted(name)`), each at the warm-up and
    interval of `taylorseer_settings` that score best, searched as `searched_static_methods`.
    Empty without diffusers."""
    from .diffusers_rivals import diffusers_available, taylorseer_skips
    if not diffusers_available():
        return []
    named = [(f"w{w}-i{i}", {"warmup": w, "interval": i}) for w, i in taylorseer_settings(n, mm, budget)]
    out = []
    for order in (1, 2):
        stem = f"diffusers-TaylorSeerCache{order}-{n}-"
        if not wanted(stem):
            continue

        def method(opts, name=stem[:-1], order=order):
            return Method(name, n, n, "diffusers", family="diffusers hook",
                          extra={"hook": "TaylorSeerCache", **opts, "order": order})
        best, opts, scores = search_placement(named, lambda o, k: score(method(o), k), images, desc=stem[:-1])
        skips = int(taylorseer_skips(n, 1, opts["warmup"], opts["interval"])[:, 0, 0].sum())
        m = method(opts, f"{stem}{best}")
        m.extra.update(_placement_extra(best, scores, skips, matched_to))
        out.append(m)
    return out


def calibrate_policy(model, n: int, policy: str, reuse: str, target: float, labels, seeds, cfg_scale: float,
                     rounds: int = 10) -> tuple[float, float]:
    """Bisect the policy's threshold (in log space) on calibration seeds so that it skips
    `target` of module calls. Returns (threshold, achieved ratio); a larger threshold skips more."""
    def skipped(thr: float) -> float:
        configure(model, Method("calib", n, n, "policy", reuse, policy=policy, threshold=thr))
        return generate(model, labels, seeds, steps=n, cfg_scale=cfg_scale).stats.ratio()
    try:
        return bisect_threshold(skipped, target, rounds)
    finally:
        remove_lazy(model)


def bisect_threshold(measure, target: float, rounds: int = 10, lo: float = 1e-5, hi: float = 10.0,
                     tol: float = 0.01) -> tuple[float, float]:
    """A threshold in [lo, hi], searched in log space, at which `measure(threshold)`, which grows
    with the threshold (a larger one skips more), comes within `tol` of `target`. Returns
    (threshold, achieved) of the closest try."""
    a, b = math.log(lo), math.log(hi)
    x, got = search_increasing(lambda x: measure(math.exp(x)), target, a, b, (a + b) / 2, (b - a) / 4, rounds, tol)
    return math.exp(x), got
