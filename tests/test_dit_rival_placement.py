"""The DiT harness's rivals against a searched default: each static rival's placement is searched
(the best-scoring candidate wins) and never spends fewer MACs than the default (issue 22)."""
import pytest
import torch

from lazydit.core.models import embedded_config
from lazydit.eval.compare import _verdicts
from lazydit.metrics.macs import lazy_macs, module_macs
from lazydit.rivals.diffusers_rivals import taylorseer_skips
from lazydit.rivals.methods import (ddim_method, searched_static_methods, static_placements, taylorseer_settings,
                                    whole_step_macs)

MM = module_macs(embedded_config(), "linear")
# (steps, the default's measured MACs relative to full compute): a fitted default spends about
# +0.02 on its input correction, so its budget falls between whole-step counts
SETTINGS = [(20, 0.57), (50, 0.52), (50, 0.325), (6, 0.55), (20, 0.95)]


def _macs(mask):  # what `compare` measures for a forced mask: lazy_macs of its skips, no gates
    return lazy_macs(mask[..., None], MM, gates=False) / (mask.shape[0] * MM.forward)


@pytest.mark.parametrize("n, budget", SETTINGS)
def test_static_rivals_never_spend_fewer_macs_than_the_default_and_skip_as_much_as_allowed(n, budget):
    cands = static_placements(n, MM, budget, count=4)
    skips = {int(m[:, 0, 0].sum()) for _, m in cands}
    assert len(skips) == 1, "every candidate must skip as many steps: same MACs"
    k = skips.pop()
    for name, mask in cands:
        assert _macs(mask) >= budget, name
        assert not bool(mask[0].any()), name  # step 0 always computes
        assert bool((mask == mask[:, :1, :1]).all()), name  # whole steps
    assert whole_step_macs(n, k + 1, MM) < budget  # one more skipped step would fall under
    names = [name for name, _ in cands]
    assert len(set(names)) == len(names) and names[0] == f"spread-{k}"
    if 0 < k < n // 2:
        assert any("every" in name for name in names)  # TaylorSeer's warm-up then every-n is a candidate


@pytest.mark.parametrize("n, budget", SETTINGS)
def test_taylorseercache_settings_never_spend_fewer_macs_than_the_default(n, budget):
    settings = taylorseer_settings(n, MM, budget)
    assert settings and all(w >= 1 and i in (2, 3, 4) for w, i in settings)
    counts = {int(taylorseer_skips(n, 1, w, i)[:, 0, 0].sum()) for w, i in settings}
    assert len(counts) == 1
    k = counts.pop()
    for w, i in settings:
        assert _macs(taylorseer_skips(n, MM.depth, w, i)) >= budget, (w, i)
    if whole_step_macs(n, k + 1, MM) >= budget:  # one more would still be allowed: its rule cannot reach it
        assert not any(int(taylorseer_skips(n, 1, w, i)[:, 0, 0].sum()) == k + 1
                       for i in (2, 3, 4) for w in range(1, n + 1))


@pytest.mark.parametrize("n, budget", SETTINGS)
def test_ddim_k_never_spends_fewer_macs_than_the_default(n, budget):
    per_step = 2 * MM.forward
    macs = budget * n * per_step
    m = ddim_method(n, macs, per_step, "lazy-x")
    assert m.steps * per_step >= macs and (m.steps - 1) * per_step < macs
    assert m.extra["matched_to"] == "lazy-x" and m.name == f"DDIM-{m.steps}"


def test_search_picks_the_best_scoring_placement_for_each_rival_and_names_it():
    n, budget = 20, 0.57
    cands = dict(static_placements(n, MM, budget, count=4))
    favourite = {"copy": "warmup3-every2", "taylor1": "warmup8-spread-8", "taylor2": "spread-8"}
    assert set(favourite.values()) <= set(cands), sorted(cands)
    calls = []

    def score(m, k):  # a fake selection PSNR: each operator prefers its own placement
        calls.append(k)
        name = next(name for name, mask in cands.items() if torch.equal(mask, m.mask))
        return 30.0 + (10.0 if name == favourite[m.reuse] else -float(m.mask[:, 0, 0].nonzero()[0]))
    methods = searched_static_methods(n, MM, budget, 4, score, images=8, matched_to="lazy-20@50%")
    assert [m.name for m in methods] == [f"FORA-20-{favourite['copy']}", f"TaylorSeer1-20-{favourite['taylor1']}",
                                         f"TaylorSeer2-20-{favourite['taylor2']}"]
    for m in methods:
        assert torch.equal(m.mask, cands[m.extra["placement"]]) and m.extra["matched_to"] == "lazy-20@50%"
        assert m.extra["placement_psnr"][m.extra["placement"]] == 40.0 and len(m.extra["placement_psnr"]) == 3
        assert _macs(m.mask) >= budget and m.kind == "mask"
    assert calls.count(2) == 3 * len(cands) and calls.count(8) == 3 * 3  # screened on a quarter, 3 on all
    only = searched_static_methods(n, MM, budget, 4, score, images=8, matched_to="x",
                                   wanted=lambda stem: stem.startswith("TaylorSeer2"))
    assert [m.name for m in only] == [f"TaylorSeer2-20-{favourite['taylor2']}"]


def test_verdict_at_matched_macs_takes_rivals_matched_from_above_and_only_those_of_this_row():
    row = lambda m, macs, psnr, **kw: {"method": m, "group": 20, "steps": 20, "family": "f", "macs_vs_full": macs,
                                      "psnr": psnr, "psnr_ci95": [psnr - 1, psnr + 1]} | kw
    table = [row("lazy-20@50%", 0.57, 40.0, family="lazy (default)"),
             row("FORA-20-spread-8", 0.61, 38.0, matched_to="lazy-20@50%"),  # one whole step above: matched
             row("TaylorSeer2-20-spread-9", 0.55, 45.0, matched_to="lazy-20@50%"),  # fewer MACs: never
             row("FORA-20-spread-4", 0.62, 44.0, matched_to="lazy-20@30%"),  # another row's rival, 0.05 away
             row("TeaCache-20@50%", 0.55, 37.0)]  # bisected to the ratio: within 0.03 as before
    per_image = [torch.full((4,), r["psnr"]) for r in table]
    (v,) = _verdicts(table, per_image, 50)
    assert v["best_rival"] == "FORA-20-spread-8" and v["psnr_gain"] == 2.0


def test_other_fitting_seeds_are_the_default_s_spread_not_its_rivals():
    """A second fit of the default scores better than every rival: it must not become the best
    rival, and its own gain is measured against the first fit's best rivals."""
    row = lambda m, fam, psnr, **kw: {"method": m, "group": 20, "steps": 20, "family": fam, "macs_vs_full": 0.55,
                                      "psnr": psnr, "psnr_ci95": [psnr - 1, psnr + 1], "psnr_pooled": psnr} | kw
    table = [row("lazy-20@50%", "lazy (default)", 40.0),
             row("lazy-20@50%/seed1", "lazy (other fitting seed)", 43.0, fit_seed=1, of="lazy-20@50%"),
             row("lazy-20@50%/seed2", "lazy (other fitting seed)", 37.0, fit_seed=2, of="lazy-20@50%"),
             row("FORA-20-spread-9", "static copy", 38.0)]
    per_image = [torch.full((4,), r["psnr"]) for r in table]
    (v,) = _verdicts(table, per_image, 50)
    assert v["best_rival"] == "FORA-20-spread-9" and v["psnr_gain"] == 2.0
    assert [(f["seed"], f["psnr_gain"], f["wins"]) for f in v["fit_seeds"]] == [(1, 5.0, True), (2, -1.0, False)]
    assert v["gain_range_over_fits"] == [-1.0, 5.0] and v["wins"] and not v["wins_every_fit"]
