"""One decider at a time: the controller's config and state change only through its methods."""
import dataclasses

import pytest
import torch

from lazydit.core.lazy import LazyConfig, LazyController, apply_lazy, patterns
from lazydit.core.lazy.correction import CorrectionFit, InputCorrection
from lazydit.core.lazy.deciders import Gates, SkipSchedule
from lazydit.core.lazy.policies import make_policy
from lazydit.pipeline import generate

LABELS, SEEDS = [1, 2], [10, 11]


def test_the_controller_holds_one_decider_and_the_last_call_wins():
    ctrl = LazyController(LazyConfig(num_steps=4), depth=3, dim=32)
    assert isinstance(ctrl.decider, Gates) and ctrl.forced is None and ctrl.policy is None
    ctrl.force(patterns.every_nth(4, 3, 2))
    assert isinstance(ctrl.decider, SkipSchedule) and ctrl.forced.shape == (4, 3, 2)
    policy = make_policy("teacache", 0.3)
    ctrl.set_policy(policy)
    assert ctrl.decider is policy and ctrl.policy is policy and ctrl.forced is None
    ctrl.force(None)
    assert isinstance(ctrl.decider, Gates)
    with pytest.raises(ValueError, match="must be a lazydit decider"):
        ctrl.set_policy(object())


def test_config_and_state_are_read_only_outside_the_methods():
    mine = LazyConfig(num_steps=4)
    ctrl = LazyController(mine, depth=3, dim=32)
    for name, value in (("config", mine), ("mode", "full"), ("fitted", None), ("correction", None)):
        with pytest.raises(AttributeError):
            setattr(ctrl, name, value)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctrl.config.reuse = "taylor1"
    ctrl.set_config(reuse="taylor2", max_skip_run=2, threshold_attn=0.3)
    assert (ctrl.config.reuse, ctrl.config.max_skip_run, ctrl.config.threshold_attn) == ("taylor2", 2, 0.3)
    assert mine == LazyConfig(num_steps=4)  # the caller's config is replaced, never changed
    for bad, message in (({"threshold_ffn": 2.0}, "probability"), ({"reuse": "magic"}, "unknown reuse"),
                         ({"max_skip_run": 0}, "max_skip_run"), ({"num_steps": 8}, "gates are for 4 steps"),
                         ({"thresholds": 0.5}, "no field thresholds")):
        with pytest.raises(ValueError, match=message):
            ctrl.set_config(**bad)
    with pytest.raises(ValueError, match="unknown mode"):
        ctrl.set_mode("lazy")


def test_thresholds_set_through_the_config_reach_the_gates(model):
    ctrl = apply_lazy(model, 4)  # zero gates: s = 0.5, everything computes at threshold 0.5
    assert generate(model, LABELS, SEEDS, steps=4, cfg_scale=1.0).stats.ratio() == 0.0
    ctrl.set_config(threshold_attn=0.9)
    stats = generate(model, LABELS, SEEDS, steps=4, cfg_scale=1.0).stats
    assert stats.ratio("attn") == pytest.approx(0.75) and stats.ratio("ffn") == 0.0


def test_the_skip_cap_wraps_every_decider(model):
    """Schedule, gates and a policy that would skip every step after the first: with a cap of 1
    each computes every other step."""
    ctrl = apply_lazy(model, 6, LazyConfig(num_steps=6, max_skip_run=1))
    alternate = [False, True, False, True, False, True]
    ctrl.force(torch.ones(6, 3, 2, dtype=torch.bool))
    assert generate(model, LABELS, SEEDS, steps=6, cfg_scale=1.0).stats.skips[:, 1, 0, 0].tolist() == alternate
    ctrl.force(None)
    ctrl.set_config(threshold_attn=1.0, threshold_ffn=1.0)  # no score reaches 1: the gates skip everything
    assert generate(model, LABELS, SEEDS, steps=6, cfg_scale=1.0).stats.skips[:, 1, 0, 0].tolist() == alternate
    ctrl.set_policy(make_policy("teacache", 1e9))
    assert generate(model, LABELS, SEEDS, steps=6, cfg_scale=1.0).stats.skips[:, 1, 0, 0].tolist() == alternate


def test_fitted_weights_and_correction_are_checked_when_set():
    ctrl = LazyController(LazyConfig(num_steps=4, reuse="fit2"), depth=3, dim=32)
    ctrl.set_fitted(torch.zeros(4, 3, 2, 3))
    with pytest.raises(ValueError, match="do not fit the operator 'fit2', which needs"):
        ctrl.set_fitted(torch.zeros(4, 3, 2, 2))
    with pytest.raises(ValueError, match="infinite reuse weights"):
        ctrl.set_fitted(torch.full((4, 3, 2, 3), float("inf")))
    with pytest.raises(ValueError, match="does not fit a model of depth 3"):
        ctrl.set_correction(InputCorrection(torch.zeros(2, 2, 32, 1), torch.zeros(2, 2, 1, 32)))
    ctrl.set_correction(InputCorrection(torch.zeros(3, 2, 32, 1), torch.zeros(3, 2, 1, 32)))
    ctrl.set_config(reuse="fit3")
    assert ctrl.fitted is None and ctrl.correction is not None  # a new operator drops the old one's weights
    ctrl.set_config(reuse="copy")
    with pytest.raises(ValueError, match="no weights to fit"):
        with ctrl.fit_reuse():
            pass


def test_fitting_ends_with_its_block_even_on_an_error(model):
    ctrl = apply_lazy(model, 4, LazyConfig(num_steps=4, reuse="fit1"))
    ctrl.force(patterns.every_nth(4, 3, 2))
    stats = CorrectionFit(3, 32, num_steps=4)
    with pytest.raises(RuntimeError, match="interrupted"):
        with ctrl.fit_reuse(stats):
            generate(model, LABELS, SEEDS, steps=4, cfg_scale=1.0)
            raise RuntimeError("interrupted")
    assert torch.isfinite(ctrl.fitted).any() and stats.gram.abs().sum() > 0
    fitted, gram = ctrl.fitted.clone(), stats.gram.clone()
    generate(model, LABELS, SEEDS, steps=4, cfg_scale=1.0)
    assert torch.equal(ctrl.fitted.nan_to_num(7.0), fitted.nan_to_num(7.0))  # neither fitting
    assert torch.equal(stats.gram, gram)  # nor collecting any more
