"""A fast smoke run of `lazydit demo` on the shipped model: every artefact is written."""
import json

import pytest

from lazydit.cli import main


def test_demo_smoke(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--settings", "6:0.5", "--samples", "4", "--ref", "8", "--iters", "2",
                 "--train-batch", "2", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    for name in ("results.json", "laziness-heatmap.png", "quality-vs-macs.png", "grid-DDIM-6.png"):
        assert (out / name).exists(), name
    rows = json.loads((out / "results.json").read_text())["rows"]
    methods = [r["method"] for r in rows]
    assert methods[0] == "DDIM-6" and any(m.startswith("lazy-6") for m in methods)
    assert any(m.startswith("static-6") for m in methods) and any(m.startswith("L2C-6") for m in methods)
    lazy = next(r for r in rows if r["method"].startswith("lazy"))
    assert lazy["macs_vs_full"] < 1.0 and "FD-EffNetLite0" in lazy and "class_acc" in lazy
    assert "| method | steps |" in text


def test_demo_rejects_bad_settings(capsys):
    with pytest.raises(SystemExit) as e:  # argparse's own usage error, exit status 2
        main(["demo", "--settings", "1:0.5"])
    assert e.value.code == 2 and "steps >= 2" in capsys.readouterr().err
