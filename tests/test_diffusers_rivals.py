"""diffusers' own cache hooks as rivals: what they skip is measured right, each generation starts
afresh, and fitting lands on a MACs target. A tiny random DiT, 8 steps."""
import math

import pytest
import torch

pytest.importorskip("diffusers")

from conftest import tiny_dit  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from lazydit.metrics.macs import module_macs  # noqa: E402
from lazydit.pipeline import generate  # noqa: E402
from lazydit.rivals.diffusers_calibration import fit_hook, hook_macs_ratio  # noqa: E402
from lazydit.rivals.diffusers_hooks import DIFFUSERS_HOOKS, FASTERCACHE_SETTINGS, MAGCACHE_CALIBRATE, magcache_ratios  # noqa: E402
from lazydit.rivals.diffusers_rivals import HookedDiT  # noqa: E402
from lazydit.rivals.methods import bisect_threshold, diffusers_methods  # noqa: E402

N, LABELS, SEEDS, CFG = 8, [1, 2], [3, 4], 2.0
CALIB = ([5], [7])        # calibration labels and seeds, disjoint from SEEDS
NEVER = (-1, -1)          # a FasterCache timestep window no timestep falls in
pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid")  # FasterCache's own call


@pytest.fixture(scope="module")
def model():
    return tiny_dit()


@pytest.fixture(scope="module")
def full(model):
    return generate(model, LABELS, SEEDS, steps=N, cfg_scale=CFG).images


@pytest.fixture(scope="module")
def mag_ratios(model):
    _, net = hook_macs_ratio(model, "MagCache", {"mag_ratios": MAGCACHE_CALIBRATE}, N, *CALIB, CFG)
    return magcache_ratios(net.transformer)


def settings(hook: str, skip: bool, mag_ratios) -> dict:
    """Settings that skip nothing (skip=False) or something, on this tiny model."""
    if hook == "TaylorSeerCache":
        return {"warmup": N if not skip else 2, "interval": 2, "order": 1}
    if hook == "FasterCache":
        return FASTERCACHE_SETTINGS[1] if skip else {**FASTERCACHE_SETTINGS[1], "attn_window": NEVER, "uncond_window": NEVER}
    return {"threshold": 10.0 if skip else 0.0, **({"mag_ratios": mag_ratios} if hook == "MagCache" else {})}


@pytest.mark.parametrize("hook", DIFFUSERS_HOOKS)
def test_skipping_nothing_is_full_compute(model, full, mag_ratios, hook):
    net = HookedDiT(model, hook, settings(hook, False, mag_ratios), N)
    out = generate(net, LABELS, SEEDS, steps=N, cfg_scale=CFG).images
    assert not net.measured_skips().any()
    assert (out - full).abs().max() <= 1e-5


def computed_calls(flops: dict, layer: int, leaves: tuple, per_call: int) -> float:
    """Row-calls of one module, from the matmul FLOPs that really ran in its Linear leaves."""
    prefix = f"HookedDiT.transformer.transformer_blocks.{layer}."
    return sum(sum(v.values()) for k, v in flops.items() if k.startswith(prefix) and k.endswith(leaves)) / per_call


@pytest.mark.parametrize("hook", DIFFUSERS_HOOKS)
def test_counted_skips_are_what_really_ran(model, full, mag_ratios, hook):
    """The skips from the leaf counters agree with an independent count: the FLOPs torch saw."""
    net = HookedDiT(model, hook, settings(hook, True, mag_ratios), N)
    with FlopCounterMode(display=False) as counter:
        out = generate(net, LABELS, SEEDS, steps=N, cfg_scale=CFG).images
    skips = net.measured_skips()  # (N, L, 2, 2B)
    assert tuple(skips.shape) == (N, 3, 2, 2 * len(LABELS)) and skips.any()
    assert (out - full).abs().max() > 1e-3  # the skips took effect
    mm, flops = module_macs(model.config), counter.get_flop_counts()
    for layer in range(3):
        attn = computed_calls(flops, layer, (".to_q", ".to_k", ".to_v", ".to_out.0"), 2 * mm.attn)
        ffn = computed_calls(flops, layer, (".net.0.proj", ".net.2"), 2 * mm.ffn)
        assert attn == int((~skips[:, layer, 0]).sum()) and ffn == int((~skips[:, layer, 1]).sum())


@pytest.mark.parametrize("hook", DIFFUSERS_HOOKS)
def test_each_generation_starts_afresh(model, mag_ratios, hook):
    net = HookedDiT(model, hook, settings(hook, True, mag_ratios), N)
    first = generate(net, LABELS, SEEDS, steps=N, cfg_scale=CFG).images
    generate(net, [7, 8], [9, 10], steps=N, cfg_scale=CFG)  # other images in between
    again = generate(net, LABELS, SEEDS, steps=N, cfg_scale=CFG).images
    assert torch.equal(first, again)
    skips = net.measured_skips().chunk(3, dim=-1)  # one block of rows per generation
    assert torch.equal(skips[0], skips[2])


def test_bisection_lands_near_its_target():
    measure = lambda thr: min(1.0, max(0.0, (math.log10(thr) + 5) / 6))  # grows from 1e-5 to 10
    thr, got = bisect_threshold(measure, 0.37, rounds=12)
    assert abs(got - 0.37) < 0.01 and got == measure(thr)
    thr, got = bisect_threshold(measure, 1.5, rounds=6)  # out of reach: the closest try comes back
    assert got > 0.98 and thr > 1


@pytest.mark.parametrize("hook, target", [("FirstBlockCache", 0.695), ("MagCache", 0.657)])
def test_threshold_hooks_are_fitted_to_the_macs_on_calibration_seeds(model, hook, target):
    """Targets these hooks reach on this model (each a MACs ratio one threshold gives). SeaCache is
    fitted by the same code as FirstBlockCache; MagCache also calibrates its ratios first."""
    m = next(m for m in diffusers_methods(N, 0.3) if m.extra["hook"] == hook)
    fitted = fit_hook(model, m, target, *CALIB, CFG, rounds=10)
    assert fitted.extra["reached"] and abs(fitted.extra["calib_macs"] - target) <= 0.03
    measured, _ = hook_macs_ratio(model, hook, fitted.extra, N, *CALIB, CFG)
    assert measured == pytest.approx(fitted.extra["calib_macs"])
    if hook == "MagCache":  # its ratios come from its own calibration mode, one per step
        assert len(fitted.extra["mag_ratios"]) == N and fitted.extra["mag_ratios"][0] == 1.0


def test_fastercache_takes_the_closest_setting_and_says_when_it_misses(model):
    m = next(m for m in diffusers_methods(N, 0.3) if m.extra["hook"] == "FasterCache")
    target, _ = hook_macs_ratio(model, "FasterCache", FASTERCACHE_SETTINGS[2], N, *CALIB, CFG)
    fitted = fit_hook(model, m, target, *CALIB, CFG)
    assert fitted.extra["attn_every"] == FASTERCACHE_SETTINGS[2]["attn_every"] and fitted.extra["reached"]
    missed = fit_hook(model, m, 0.05, *CALIB, CFG)  # far beyond any setting
    assert not missed.extra["reached"] and missed.extra["calib_macs"] > 0.3


def test_hook_rivals_are_named_before_fitting():
    """`compare --only` picks rivals by name prefix before any is fitted."""
    names = [m.name for m in diffusers_methods(50, 0.5)]
    for hook in DIFFUSERS_HOOKS[1:]:  # TaylorSeerCache is named by its searched placement
        assert any(n.startswith(f"diffusers-{hook}") for n in names), hook
