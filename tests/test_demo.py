"""A fast smoke run of `lazydit demo` on the shipped model: every artefact is written."""
import json

import pytest

from lazydit.cli import main


# Sized down to the knobs' minimum where the property does not depend on size: 2 bisection
# rounds (6 by default) and 1 timed image (2) still run every calibration and timing path.
SMOKE = ["--settings", "6:0.5", "--samples", "4", "--ref", "8", "--iters", "2", "--train-batch", "2",
         "--calib-images", "2", "--calib-rounds", "2", "--timing-images", "1", "--train-calib", "4",
         "--schedule-candidates", "2"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One demo run as `make demo` runs it (FD off, its default), with --gates-too; shared by the
    smoke test and the --fd test, which reuses its trained default policy."""
    import contextlib
    import io
    out = tmp_path_factory.mktemp("demo") / "demo"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["demo", *SMOKE, "--gates-too", "--flux-settings", "6:0.5", "--out", str(out)])
    return code, buf.getvalue(), out


def test_demo_smoke(demo):
    code, text, out = demo
    assert code == 0, text
    for name in ("results.json", "laziness-heatmap.png", "quality-vs-macs.png", "grid-DDIM-6-g6.png"):
        assert (out / name).exists(), name
    rows = json.loads((out / "results.json").read_text())["rows"]
    methods = [r["method"] for r in rows]
    assert methods[0] == "DDIM-6" and any(m.startswith("lazy-6") for m in methods)
    for family in ("FORA-6", "TaylorSeer1-6", "TaylorSeer2-6", "TeaCache-6", "FBCache-6", "FcGated-6",
                   "diffusers-TaylorSeerCache1-6"):
        assert any(m.startswith(family) for m in methods), family
    assert not any("MagCache" in m or "SeaCache" in m for m in methods)  # the demo's hooks: TaylorSeerCache
    lazy = next(r for r in rows if r["method"].startswith("lazy"))
    assert lazy["macs_vs_full"] < 1.0
    assert lazy["time_b1"] > 0 and (out / "quality-vs-time-b1.png").exists()  # time is an axis too
    verdicts = json.loads((out / "results.json").read_text())["verdicts"]
    assert {v["match"] for v in verdicts} >= {"MACs", "time b1"} and all("wins" in v for v in verdicts)
    assert not any("FD-EffNetLite0" in r or "class_acc" in r for r in rows)  # the demo's default: no FD
    assert lazy["reuse"] in ("fit2", "fit3") and lazy["psnr_ci95"][0] <= lazy["psnr"] <= lazy["psnr_ci95"][1]
    l2c = next(r for r in rows if r["method"].startswith("L2C"))
    gates = next(r for r in rows if r["method"].startswith("gates-6"))
    assert gates["reuse"] == "taylor1" and l2c["family"] == "L2C"
    assert abs(l2c["macs_vs_full"] - gates["macs_vs_full"]) < 0.1
    assert "| method | vs |" in text


def test_demo_also_runs_the_flux_pipeline(demo):
    """The demo's second part: Flux-FMNIST through its FluxPipeline, the default policy against
    FORA, TaylorSeer, fewer steps and diffusers' TaylorSeerCache, timed at a batch of 1 and 16."""
    pytest.importorskip("diffusers")
    code, text, out = demo
    assert code == 0, text
    result = json.loads((out / "flux-fmnist" / "results.json").read_text())
    assert result["family"] == "FluxTransformer2DModel" and result["call_kwargs"]["true_cfg_scale"] == 3.0
    rows = {r["method"]: r for r in result["rows"]}
    assert {"full", "lazy", "FORA", "TaylorSeer2", "TaylorSeerCache"} <= set(rows)
    assert "MagCache" not in rows  # the demo's hooks: TaylorSeerCache only
    assert rows["lazy"]["flops_vs_full"] < 0.7 and "time_b1" in rows["lazy"]  # the smoke times 1 image
    assert (out / "flux-fmnist" / "quality-vs-time-b1.png").exists()
    assert "Flux-FMNIST (FluxPipeline" in text


def test_demo_fd_adds_fd_and_class_accuracy_to_every_row(demo, tmp_path, capsys):
    """--fd on the shipped model: every row gets FD/KID and class accuracy. The smoke run's default
    policy comes back through --gates-dir (nothing retrained) and --only keeps the rows few: FD's
    1280-d matrix square root costs about 2 s a row, whatever the image count."""
    import shutil
    _, _, smoke_out = demo
    gates_dir = tmp_path / "gates"
    gates_dir.mkdir()
    shutil.copy(smoke_out / "gates-6-0.5" / "gates.safetensors", gates_dir / "gates-6-0.5.safetensors")
    out = tmp_path / "fd"
    code = main(["demo", *SMOKE, "--fd", "--only", "FORA", "--gates-dir", str(gates_dir),
                 "--flux-settings", "none", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert not (out / "gates-6-0.5").exists()  # the gate file was loaded, not retrained
    rows = json.loads((out / "results.json").read_text())["rows"]
    timed = [r for r in rows if r.get("matched_time")]  # DDIM at the default's measured time, if another k
    assert all(r["family"] == "DDIM" and r["steps"] < 6 for r in timed)
    rows = [r for r in rows if not r.get("matched_time")]
    methods = [r["method"] for r in rows]  # DDIM-6, the default policy, FORA, DDIM at the lazy run's MACs
    assert len(rows) == 4 and methods[0] == "DDIM-6" and rows[3]["family"] == "DDIM", methods
    assert methods[1].startswith("lazy-6") and methods[2].startswith("FORA-6"), methods
    for r in rows:
        assert r["FD-EffNetLite0"] > 0 and r["n_fake"] == 4 and r["n_real"] == 8, r["method"]
        assert "class_acc" in r and "KID-EffNetLite0" in r, r["method"]
    lazy = rows[1]
    assert lazy["macs_vs_full"] < 1.0 and lazy["reuse"] in ("fit2", "fit3")
    assert (out / "quality-vs-macs.png").exists()


def test_demo_rejects_bad_settings(capsys):
    with pytest.raises(SystemExit) as e:  # argparse's own usage error, exit status 2
        main(["demo", "--settings", "1:0.5"])
    assert e.value.code == 2 and "steps >= 2" in capsys.readouterr().err


def test_psnr_and_interval_by_hand():
    import torch
    from lazydit.metrics import bootstrap_ci, image_psnr
    ref = torch.zeros(2, 1, 4, 4)
    x = ref.clone()
    x[0] += 0.2   # [0, 1] scale: error 0.1 everywhere -> 20 dB
    x[1, 0, 0, 0] = 2.0  # clamps to 1 -> [0, 1] error 0.5 on 1 of 16 pixels -> mse 1/64 -> 18.06 dB
    p = image_psnr(x, ref)
    assert torch.allclose(p, torch.tensor([20.0, 10 * torch.log10(torch.tensor(64.0))]), atol=1e-4)
    assert image_psnr(ref, ref).eq(100.0).all()  # exact matches are capped, not infinite
    lo, hi = bootstrap_ci(torch.tensor([1.0, 2.0, 3.0, 4.0]), 2000)
    assert 1.0 <= lo < 2.5 < hi <= 4.0
    assert bootstrap_ci(torch.full((5,), 7.0), 100) == (7.0, 7.0)


def test_verdict_picks_the_best_rival_at_matched_macs():
    import torch
    from lazydit.eval.compare import _verdicts
    row = lambda m, fam, macs, psnr, ci, steps=10: {"method": m, "group": 10, "steps": steps, "family": fam,
                                                    "macs_vs_full": macs, "psnr": psnr, "psnr_ci95": ci}
    table = [row("DDIM-10", "DDIM", 1.0, 100.0, [100, 100]), row("lazy-10@50%", "lazy (default)", 0.50, 40.0, [39, 41]),
             row("TS", "static", 0.51, 38.0, [37, 39.5]), row("far", "static", 0.60, 45.0, [44, 46]),
             row("DDIM-5", "DDIM", 0.50, 30.0, [29, 31], steps=5)]
    per_image = [torch.full((4,), 100.0), torch.tensor([40.0, 41, 39, 40]), torch.tensor([38.0, 39, 37, 38]),
                 torch.full((4,), 45.0), torch.full((4,), 30.0)]
    (v,) = _verdicts(table, per_image, 200)
    assert v["best_rival"] == "TS" and v["psnr_gain"] == 2.0 and v["gain_ci95_paired"] == [2.0, 2.0]
    assert v["intervals_overlap"]  # 39 < 39.5


def test_time_cells_state_the_range_over_rounds():
    from lazydit.eval.timing import time_cell
    assert time_cell({"time_b16": 0.7112, "time_b16_range": [0.532, 0.956]}, 16) == "0.71 (0.53-0.96)"
    assert time_cell({"time_b1": 0.95, "time_b1_range": [0.95, 0.95]}, 1) == "0.95"  # one round: no range
