"""Training-free rival policies: they decide what they claim to, and calibration finds the ratio."""
import pytest
import torch

from lazydit.core.lazy import LazyConfig, apply_lazy, get_controller, remove_lazy
from lazydit.core.lazy.policies import make_policy
from lazydit.pipeline import generate
from lazydit.rivals.methods import Method, calibrate_policy, configure

LABELS, SEEDS = [1, 2, 3], [10, 11, 12]


@pytest.mark.parametrize("name", ["teacache", "fbcache", "fcgated"])
def test_threshold_zero_computes_everything(model, name):
    ref = generate(model, LABELS, SEEDS, steps=8, cfg_scale=2.0).images
    ctrl = apply_lazy(model, 8, LazyConfig(num_steps=8, reuse="taylor1"))
    ctrl.set_policy(make_policy(name, 0.0))
    out = generate(model, LABELS, SEEDS, steps=8, cfg_scale=2.0)
    assert out.stats.ratio() == 0.0
    assert (out.images - ref).abs().max() <= 1e-5


def test_teacache_skips_whole_steps_and_resets_its_accumulator(model):
    ctrl = apply_lazy(model, 8, LazyConfig(num_steps=8))
    ctrl.set_policy(make_policy("teacache", 1e9))
    sk = generate(model, LABELS, SEEDS, steps=8, cfg_scale=2.0).stats.skips  # (N, L, 2, R)
    assert not sk[0].any() and sk[1:].all()
    # A moderate threshold: every decision covers the whole step, so all modules agree per row.
    ctrl.set_policy(make_policy("teacache", 0.3))
    sk = generate(model, LABELS, SEEDS, steps=8, cfg_scale=2.0).stats.skips
    assert (sk == sk[:, :1, :1]).all()
    assert ctrl.state.policy, "policy state lives in the controller's generation state"
    ctrl.reset()
    assert ctrl.state.policy == {}


@pytest.mark.parametrize("name", ["fbcache", "fcgated"])
def test_first_block_always_computes(model, name):
    ctrl = apply_lazy(model, 8, LazyConfig(num_steps=8, reuse="taylor1"))
    ctrl.set_policy(make_policy(name, 1e9))
    sk = generate(model, LABELS, SEEDS, steps=8, cfg_scale=2.0).stats.skips
    assert not sk[:, 0].any()
    assert sk[2:, 1:].all()  # step 1 may compute while fcgated has one anchor: from step 2 on all skip


def test_bad_policy_input_is_refused():
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("magic", 0.1)
    with pytest.raises(ValueError, match="threshold"):
        make_policy("teacache", float("nan"))


def test_calibration_reaches_the_target_ratio(model):
    thr, got = calibrate_policy(model, 10, "teacache", "taylor1", 0.5, [1, 2], [5, 6], 2.0, rounds=14)
    assert abs(got - 0.5) <= 0.1 and thr > 0
    assert get_controller(model) is None  # calibration leaves the model as it found it
    configure(model, Method("t", 10, 10, "policy", "taylor1", policy="teacache", threshold=thr))
    assert abs(generate(model, [1, 2], [5, 6], steps=10, cfg_scale=2.0).stats.ratio() - got) < 1e-9
    remove_lazy(model)


