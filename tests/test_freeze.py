"""Frozen skip schedules: `lazydit freeze` of both gate kinds, the skip-schedule file and its validation,
and sampling from it without a single gate score."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import tiny_dit
from lazydit.cli import main
from lazydit.rivals.baselines import static_from_decisions
from lazydit.core.lazy import LazyConfig, LazyController, apply_lazy, load_gates, patterns, remove_lazy, save_gates
from lazydit.core.lazy.correction import InputCorrection
from lazydit.export.freeze import FreezeConfig, cap_runs, freeze
from lazydit.core.lazy.skip_schedule_file import load_skip_schedule, read_skip_schedule
from lazydit.pipeline import generate

N, L, D = 6, 3, 32


def schedule_gates(path, seed=0):
    """A placement-search gate file: static mask, fitted order-2 forecast and a rank-2 correction."""
    g = torch.Generator().manual_seed(seed)
    c = LazyController(LazyConfig(num_steps=N, reuse="fit2"), L, D, meta={"arch": "DiT"})
    c.force(patterns.target_fraction(N, L, 0.5))
    fitted = torch.randn(N, L, 2, 3, generator=g) * 0.1 + torch.tensor([2.0, -1.5, 0.5])
    fitted[3, 1, 0] = float("nan")  # NaN: that cell keeps the Lagrange weights
    c.set_fitted(fitted)
    c.set_correction(InputCorrection(torch.randn(L, 2, D, 2, generator=g) * 0.05,
                                     torch.randn(L, 2, 2, D, generator=g) * 0.05))
    save_gates(c, str(path), extra={"train_config": {"cfg_scale": 2.0}})
    return c


def dynamic_gates(path, cap=None):
    c = LazyController(LazyConfig(num_steps=N, reuse="taylor1", max_skip_run=cap), L, D, meta={"arch": "DiT"})
    with torch.no_grad():
        c.attn.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
        c.ffn.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
    save_gates(c, str(path))
    return c


def _sample(model, ctrl, seeds=(0, 1, 2)):
    apply_lazy(model, N, controller=ctrl)
    try:
        return generate(model, [1, 2, 3][:len(seeds)], list(seeds), steps=N, cfg_scale=2.0)
    finally:
        remove_lazy(model)


def test_frozen_placement_search_file_samples_exactly_as_the_gate_file_without_gate_scores(tmp_path, monkeypatch):
    model = tiny_dit()
    schedule_gates(tmp_path / "g.safetensors")
    summary = freeze(FreezeConfig(gates=str(tmp_path / "g.safetensors"), out=str(tmp_path / "s.safetensors")))
    assert summary["method"] == "the gate file's stored schedule" and summary["correction"]
    ctrl, meta = read_skip_schedule(str(tmp_path / "s.safetensors"))
    assert meta["sampler"].cfg_scale == 2.0 and meta["arch"] == "DiT"
    want = _sample(model, load_gates(str(tmp_path / "g.safetensors"), arch="DiT", depth=L, hidden_size=D, num_steps=N))
    monkeypatch.setattr(LazyController, "logit", lambda *a: pytest.fail("a gate score was computed"))
    got = _sample(model, load_skip_schedule(str(tmp_path / "s.safetensors"), arch="DiT", depth=L, hidden_size=D, num_steps=N))
    assert torch.equal(got.images, want.images)
    assert torch.equal(got.stats.skips[..., 0], ctrl.forced)


def test_input_dependent_gates_freeze_to_the_capped_majority_of_their_decisions(tmp_path):
    model = tiny_dit()
    gates = dynamic_gates(tmp_path / "g.safetensors", cap=1)
    cfg = FreezeConfig(gates=str(tmp_path / "g.safetensors"), out=str(tmp_path / "s.safetensors"), calib_images=3,
                       batch_size=2, calib_seed=5, cfg_scale=2.0)
    freeze(cfg, model_fn=lambda: model)
    ctrl, _ = read_skip_schedule(cfg.out)
    skips = torch.cat([_sample(model, gates, seeds=(5, 6)).stats.skips, _sample(model, gates, seeds=(7,)).stats.skips], -1)
    majority = static_from_decisions(skips)
    assert majority.any() and torch.equal(ctrl.forced, cap_runs(majority, 1))
    with pytest.raises(ValueError, match="needs the model"):
        freeze(FreezeConfig(gates=cfg.gates, out=str(tmp_path / "t.safetensors")))
    assert not (tmp_path / "t.safetensors").exists()


def test_cap_runs_breaks_long_runs_of_skips():
    mask = torch.tensor([0, 1, 1, 1, 1, 0, 1], dtype=torch.bool)[:, None, None].expand(7, 1, 2)
    assert cap_runs(mask, 2)[:, 0, 0].tolist() == [0, 1, 1, 0, 1, 0, 1]
    assert torch.equal(cap_runs(mask, None), mask)


@pytest.mark.parametrize("damage, message", [
    ("truncate", "truncated or not a safetensors file"),
    ("step0", "step 0 must compute"),
    ("gatefile", "is not a lazydit skip-schedule file"),
    ("infinite", "infinite reuse weights"),
])
def test_bad_skip_schedule_files_are_refused_in_one_line(tmp_path, damage, message):
    schedule_gates(tmp_path / "g.safetensors")
    path = tmp_path / "s.safetensors"
    freeze(FreezeConfig(gates=str(tmp_path / "g.safetensors"), out=str(path)))
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "gatefile":
        path = tmp_path / "g.safetensors"
    else:
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        t = load_file(str(path))
        if damage == "step0":
            t["schedule"][0, 0, 0] = 1
        else:
            t["reuse_weights"][2, 0, 0, 0] = float("inf")
        save_file(t, str(path), metadata=meta)
    with pytest.raises(ValueError, match=message) as e:
        read_skip_schedule(str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_cli_freeze_then_sample_with_the_skip_schedule(tmp_path, capsys):
    from lazydit.core.lazy.skip_schedule_file import SamplerSettings, save_skip_schedule
    c = LazyController(LazyConfig(num_steps=4, reuse="taylor1"), 8, 128, meta={"arch": "DiT-FMNIST"})
    c.force(patterns.every_nth(4, 8, 2))
    save_skip_schedule(c, str(tmp_path / "s.safetensors"), arch="DiT-FMNIST", sampler=SamplerSettings())
    assert main(["sample", "--skip-schedule", str(tmp_path / "s.safetensors"), "--steps", "4", "--labels", "1",
                 "--out", str(tmp_path / "o")]) == 0
    assert "lazy ratio 0.500" in capsys.readouterr().out
    # --schedule, the flag's spelling before the rename, still works.
    assert main(["sample", "--schedule", str(tmp_path / "s.safetensors"), "--steps", "5", "--labels", "1",
                 "--out", str(tmp_path / "p")]) == 2
    assert "4-step schedule, but the sampler runs 5" in capsys.readouterr().err and not (tmp_path / "p").exists()
    record = json.loads((tmp_path / "o" / "sample_config.json").read_text())["sample"]
    # Files keep the key they had before the flag was renamed: sample-many resumes compare it.
    assert record["schedule"] == str(tmp_path / "s.safetensors") and "skip_schedule" not in record
