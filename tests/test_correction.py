"""Input correction of fitted forecasts: the least squares, the arithmetic inside the controller,
the gate file and the MACs it costs."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from lazydit.lazy import LazyConfig, LazyController, apply_lazy, load_gates, remove_lazy, save_gates
from lazydit.lazy.correction import CorrectionFit, InputCorrection
from lazydit.pipeline import generate


def test_solve_recovers_a_known_low_rank_map():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(6, 2, generator=g), torch.randn(2, 6, generator=g)
    dz = torch.randn(3, 50, 6, generator=g)
    fit = CorrectionFit(depth=2, dim=6)
    fit.add(1, 0, dz, dz @ u @ v)
    corr = fit.solve(rank=2, ridge=1e-9)
    assert torch.allclose(corr.apply(1, 0, dz), dz @ u @ v, atol=1e-4)
    assert corr.apply(0, 1, dz).abs().max() == 0  # a module that never skipped gets no correction
    assert not torch.allclose(fit.solve(rank=1, ridge=1e-9).apply(1, 0, dz), dz @ u @ v, atol=1e-2)


def test_controller_adds_the_correction_of_the_input_surprise():
    """Steps 0, 1 compute, step 2 skips: out = Lagrange forecast of y + (z2 - zhat2) U V, where
    zhat2 extrapolates the inputs of steps 0 and 1."""
    ctrl = LazyController(LazyConfig(num_steps=3, reuse="fit1"), depth=1, dim=3)
    mask = torch.zeros(3, 1, 2, dtype=torch.bool)
    mask[2] = True
    ctrl.force(mask)
    g = torch.Generator().manual_seed(0)
    ctrl.correction = InputCorrection(torch.randn(1, 2, 3, 2, generator=g), torch.randn(1, 2, 2, 3, generator=g))
    y, z = torch.randn(3, 2, 4, 3, generator=g), torch.randn(3, 2, 4, 3, generator=g)
    ctrl.reset()
    for k in range(3):
        ctrl.set_step(k)
        out = ctrl.lazy_forward(0, "ffn", lambda _, k=k: y[k], z[k])
    forecast = 2 * y[1] - y[0]
    surprise = z[2] - (2 * z[1] - z[0])
    u, v = ctrl.correction.u[0, 1], ctrl.correction.v[0, 1]
    assert torch.allclose(out, forecast + surprise @ u @ v, atol=1e-5)


def _schedule(model, tmp_path, ranks=(4,)):
    from lazydit.train.gates import GateTrainConfig, train_gates
    cfg = GateTrainConfig(num_steps=8, target_lazy=0.5, cfg_scale=2.0, calib_images=4, schedule_candidates=2,
                          correction_ranks=ranks, out_dir=str(tmp_path / "s"))
    return train_gates(model, cfg, progress=False)


def test_schedule_search_reports_the_correction_and_the_file_keeps_it(model, tmp_path):
    ctrl, summary = _schedule(model, tmp_path)
    assert set(summary["correction_psnr"]) == {0, 4}
    assert summary["correction_rank"] == (4 if summary["correction_psnr"][4] > summary["correction_psnr"][0] else 0)
    # Whatever the search kept, a correction in the controller must survive the file bit for bit.
    g = torch.Generator().manual_seed(3)
    ctrl.correction = InputCorrection(0.1 * torch.randn(3, 2, 32, 2, generator=g), torch.randn(3, 2, 2, 32, generator=g))
    ref = generate(model, [1, 2], [1_000_000, 1_000_001], steps=8, cfg_scale=2.0).images
    save_gates(ctrl, str(tmp_path / "c.safetensors"))
    remove_lazy(model)
    back = load_gates(str(tmp_path / "c.safetensors"), arch="DiT", depth=3, hidden_size=32, num_steps=8)
    assert torch.equal(back.correction.u, ctrl.correction.u)
    apply_lazy(model, 8, controller=back)
    assert torch.equal(generate(model, [1, 2], [1_000_000, 1_000_001], steps=8, cfg_scale=2.0).images, ref)
    back.correction = None
    assert not torch.equal(generate(model, [1, 2], [1_000_000, 1_000_001], steps=8, cfg_scale=2.0).images, ref)


@pytest.mark.parametrize("change", ["nan", "orphan", "shape"])
def test_gate_file_with_a_bad_correction_is_refused(model, tmp_path, change):
    ctrl, _ = _schedule(model, tmp_path, ranks=())
    ctrl.correction = InputCorrection(torch.zeros(3, 2, 32, 2), torch.zeros(3, 2, 2, 32))
    path = str(tmp_path / "c.safetensors")
    save_gates(ctrl, path)
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    t = load_file(path)
    if change == "nan":
        t["correction_u"][0, 0, 0, 0] = float("nan")
    elif change == "orphan":
        del t["reuse_weights"]
    else:
        t["correction_u"], t["correction_v"] = torch.zeros(3, 2, 16, 2), torch.zeros(3, 2, 2, 16)
    save_file(t, path, metadata=meta)
    with pytest.raises(ValueError, match=path):
        load_gates(path, arch="DiT", depth=3, hidden_size=32, num_steps=8)


def test_correction_costs_two_r_d_per_token_of_every_skipped_call():
    from lazydit.eval.macs import counted_macs, module_macs
    from lazydit.models.dit import DiTConfig
    mm = module_macs(DiTConfig(depth=2, hidden_size=32, num_heads=2, patch_size=4, input_size=16, in_channels=1,
                               num_classes=3))
    base = counted_macs(mm, steps=4, rows=2, computed_attn=10, computed_ffn=12, gates=False)
    skipped = 2 * 4 * 2 * 2 - 22
    with_corr = counted_macs(mm, steps=4, rows=2, computed_attn=10, computed_ffn=12, gates=False, correction_rank=3)
    assert with_corr - base == pytest.approx(skipped * 2 * 3 * 16 * 32 / 2)
