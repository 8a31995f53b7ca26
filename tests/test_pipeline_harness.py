"""The pipeline harness's parts that decide who is compared with whom: a rival's placement search,
its FLOPs budget, the fewer-steps rival at matched time, and the verdicts at matched FLOPs and time."""
import json

import pytest
import torch

from lazydit.core.lazy import patterns
from lazydit.eval.pipeline_report import matched_time_steps, verdicts
from lazydit.rivals.placement import search_placement, spread_evenly, whole_step_placements


@pytest.mark.parametrize("n, budget, share", [(28, 0.52, 0.9), (50, 0.45, 0.6)])
def test_whole_step_rivals_never_get_fewer_flops_and_get_as_many_skips_as_allowed(n, budget, share):
    """`share`: the part of a step's FLOPs in the gated sites; where it is small (heavy embedders),
    a skipped step saves much less than 1/N and the rival may skip many more steps."""
    def _site_flops(mask):
        return 1 - share * float(mask[:, 0, 0].float().mean())
    cands = whole_step_placements(n, 3, budget, _site_flops, count=12)
    assert 1 < len(cands) <= 12
    skips = {int(m[:, 0, 0].sum()) for _, m in cands}
    assert len(skips) == 1
    k = skips.pop()
    assert _site_flops(cands[0][1]) >= budget
    assert 1 - share * (k + 1) / n < budget  # one more skipped step would fall under the budget
    assert all(not bool(m[0].any()) for _, m in cands)  # step 0 always computes
    assert len({name for name, _ in cands}) == len(cands)


def test_placement_search_screens_then_scores_the_shortlist_on_all_images():
    calls = []

    def score(cand, k):
        calls.append((cand, k))
        return -abs(cand - 3) + (0.1 * k if cand == 3 else 0)
    best, cand, scores = search_placement([(f"c{i}", i) for i in range(8)], score, images=8)
    assert (best, cand) == ("c3", 3)
    assert len(scores["screen"]) == 8 and all(k == 2 for _, k in calls[:8])
    assert len(scores["selection"]) == 3 and all(k == 8 for _, k in calls[8:])
    with pytest.raises(ValueError, match="no placement"):
        search_placement([], score, images=8)
    assert spread_evenly(list(range(10)), 3) == [0, 4, 9] or spread_evenly(list(range(10)), 3) == [0, 5, 9]
    assert spread_evenly([1, 2], 5) == [1, 2]


def _row(method, flops, psnr, t1, t16, per_image, **extra):
    return {"method": method, "steps": 28, "target": 0.5, "flops_vs_full": flops, "psnr": psnr,
            "psnr_pooled": psnr - 0.5, "time_b1": t1, "time_b16": t16, "_per_image": torch.tensor(per_image),
            **extra}


def test_verdicts_match_flops_and_time_separately():
    rows = [_row("full", 1.0, 100.0, 1.0, 1.0, [100.0, 100.0, 100.0], reference=True),
            _row("lazy", 0.52, 40.0, 0.90, 0.60, [40.0, 41.0, 39.0]),
            _row("FORA", 0.54, 35.0, 0.55, 0.55, [35.0, 36.0, 34.0]),
            _row("steps-15", 0.536, 30.0, 0.54, 0.54, [30.0, 31.0, 29.0]),
            _row("cheap", 0.40, 45.0, 0.40, 0.40, [45.0, 46.0, 44.0]),  # fewer FLOPs: never a matched-FLOPs rival
            _row("steps-25", 0.893, 50.0, 0.89, 0.89, [50.0, 51.0, 49.0], matched_time=True)]
    out = {v["match"]: v for v in verdicts(rows, 200, (1, 16))}
    assert out["flops"]["best_rival"] == "FORA" and out["flops"]["wins"]
    assert out["flops"]["gain_db"] == pytest.approx(5.0)
    # batch 1: the default is slow, so DDIM-25 at its time is a rival, and it wins
    assert out["time b1"]["best_rival"] == "steps-25" and not out["time b1"]["wins"]
    # batch 16: only rivals no slower than the default's 0.60 (+ slack)
    assert out["time b16"]["best_rival"] == "cheap" and not out["time b16"]["wins"]


def test_matched_time_steps_adds_the_fewer_steps_rival_at_the_defaults_time():
    rows = [_row("lazy", 0.52, 40.0, 0.90, 0.61, [40.0]), _row("steps-15", 0.536, 30.0, 0.5, 0.5, [30.0])]
    assert matched_time_steps(rows, 28) == [{"steps": 25}, {"steps": 17}]
    rows.append(_row("steps-17", 0.61, 30.0, 0.6, 0.6, [30.0]))
    assert matched_time_steps(rows, 28) == [{"steps": 25}]


def test_an_unreachable_lazy_ratio_is_refused_before_anything_is_written(tmp_path, capsys):
    from lazydit.cli import main
    pytest.importorskip("diffusers")
    out = tmp_path / "cmp"
    assert main(["compare", "--model", "Flux-FMNIST", "--settings", "6:0.3", "--out", str(out)]) == 2
    assert "no skip schedule of 6 steps" in capsys.readouterr().err
    assert not out.exists()


def test_prompt_labels_name_the_class_of_every_shipped_prompt():
    from lazydit.integrations.diffusers.fit import prompt_labels
    from lazydit.integrations.diffusers.flux_fmnist_text import DEFAULT_PROMPTS
    assert prompt_labels("Flux-FMNIST", list(DEFAULT_PROMPTS)) == list(range(10))
    assert prompt_labels("Flux-FMNIST", ["a picture of a sneaker", "a trouser"]) == [7, 1]
    assert prompt_labels("Flux-FMNIST", ["a cat"]) is None
    assert prompt_labels("some/folder", list(DEFAULT_PROMPTS)) is None


def test_bench_times_a_pipeline_against_the_flops_it_spent(tmp_path):
    pytest.importorskip("diffusers")
    from lazydit.cli import main
    from tiny_pipelines import CALL_KWARGS, FAMILIES
    folder = tmp_path / "flux"
    FAMILIES["flux"](0).save_pretrained(folder)
    kw = {k: v for k, v in CALL_KWARGS["flux"].items() if k not in ("prompt", "height", "width")}
    out = tmp_path / "bench"
    assert 0 == main(["bench", "--model", str(folder), "--steps", "6", "--batch-size", "2", "--repeats", "1",
                      "--image-size", "16", "--pipe-kwargs", json.dumps(kw), "--out", str(out)])
    rep = json.loads((out / "bench.json").read_text())
    runs = {r["name"]: r for r in rep["runs"]}
    assert runs["full-6"]["macs_ratio"] == 1.0
    forced = runs["lazy-6 forced 50%"]
    assert 0.4 < forced["macs_ratio"] < 0.75  # the gated sites hold most, not all, of the FLOPs
    k = next(r for name, r in runs.items() if name.startswith("full-") and name != "full-6")
    assert k["macs_ratio"] >= forced["macs_ratio"] and all(r["median_s"] > 0 for r in runs.values())
    assert main(["bench", "--model", str(folder), "--cfg-scale", "4", "--out", str(tmp_path / "b2")]) == 2
    assert not (tmp_path / "b2").exists()


def test_taylorseercache_settings_are_bisected_to_the_budget():
    from lazydit.rivals.pipeline_hooks import _taylorseer_settings
    n, calls = 28, []

    def flops(o):  # computed steps: the warm-up, then every interval-th step
        calls.append(o)
        k = o["warmup"] + sum(1 for s in range(o["warmup"], n) if (s - o["warmup"]) % o["interval"] == 0)
        return k / n
    out = _taylorseer_settings(flops, n, 0.52)
    assert len(calls) < 4 * (n // 2) / 2  # far fewer measurements than the whole grid
    for interval in (2, 3, 4, 5):
        got = [(f, o["warmup"]) for f, o in out if o["interval"] == interval]
        grid = [(flops({"interval": interval, "warmup": w}), w) for w in range(1, n // 2 + 1)]
        ok = [g for g in grid if g[0] >= 0.52]
        assert got[0] == min(ok)  # the cheapest setting within the budget is found
        assert all(f >= 0.52 and f <= got[0][0] + 0.03 for f, _ in got)
