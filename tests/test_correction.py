"""Input correction of fitted forecasts: the least squares, the arithmetic inside the controller,
the gate file and the MACs it costs."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from lazydit.core.lazy import LazyConfig, LazyController, apply_lazy, load_gates, remove_lazy, save_gates
from lazydit.core.lazy.correction import CorrectionFit, InputCorrection
from lazydit.pipeline import generate


def test_solve_recovers_a_known_low_rank_map():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(6, 2, generator=g), torch.randn(2, 6, generator=g)
    dz = torch.randn(3, 50, 6, generator=g)
    fit = CorrectionFit(depth=2, dim=6)
    fit.add(0, 1, 0, dz, dz @ u @ v)
    corr = fit.solve(rank=2, ridge=1e-9)
    assert torch.allclose(corr.apply(0, 1, 0, dz), dz @ u @ v, atol=1e-4)
    assert corr.apply(0, 0, 1, dz).abs().max() == 0  # a module that never skipped gets no correction
    assert not torch.allclose(fit.solve(rank=1, ridge=1e-9).apply(0, 1, 0, dz), dz @ u @ v, atol=1e-2)


def test_step_groups_keep_each_steps_map_and_coarsen_exactly():
    """Steps 0-1 and 2-3 answer their input surprise with different maps: per-step statistics
    recover each step's own, their coarsening to 2 groups equals fitting 2 groups directly, and a
    shared map (1 group) cannot fit both."""
    g = torch.Generator().manual_seed(1)
    maps = [torch.randn(5, 5, generator=g) for _ in range(2)]
    per_step, two = CorrectionFit(1, 5, num_steps=4, groups=4), CorrectionFit(1, 5, num_steps=4, groups=2)
    dzs = [torch.randn(2, 30, 5, generator=g) for _ in range(4)]
    for k, dz in enumerate(dzs):
        per_step.add(k, 0, 1, dz, dz @ maps[k // 2])
        two.add(k, 0, 1, dz, dz @ maps[k // 2])
    coarse = per_step.coarsened(2)
    assert torch.equal(coarse.gram, two.gram) and torch.equal(coarse.cross, two.cross)
    for corr in (per_step.solve(5, ridge=1e-9), coarse.solve(5, ridge=1e-9)):
        for k, dz in enumerate(dzs):
            assert torch.allclose(corr.apply(k, 0, 1, dz), dz @ maps[k // 2], atol=1e-4)
    shared = per_step.coarsened(1).solve(5, ridge=1e-9)
    assert not torch.allclose(shared.apply(0, 0, 1, dzs[0]), dzs[0] @ maps[0], atol=1e-2)
    assert CorrectionFit.max_groups(28, 1152, 50) == 1 and CorrectionFit.max_groups(6, 128, 50) == 50


def test_controller_adds_the_correction_of_the_input_surprise():
    """Steps 0, 1 compute, step 2 skips: out = Lagrange forecast of y + (z2 - zhat2) U V, where
    zhat2 extrapolates the inputs of steps 0 and 1."""
    ctrl = LazyController(LazyConfig(num_steps=3, reuse="fit1"), depth=1, dim=3)
    mask = torch.zeros(3, 1, 2, dtype=torch.bool)
    mask[2] = True
    ctrl.force(mask)
    g = torch.Generator().manual_seed(0)
    # one map per step: step 2 must use its own
    ctrl.set_correction(InputCorrection(torch.randn(3, 1, 2, 3, 2, generator=g), torch.randn(3, 1, 2, 2, 3, generator=g), 3))
    y, z = torch.randn(3, 2, 4, 3, generator=g), torch.randn(3, 2, 4, 3, generator=g)
    ctrl.reset()
    for k in range(3):
        ctrl.set_step(k)
        out = ctrl.lazy_forward(0, "ffn", lambda _, k=k: y[k], z[k])
    forecast = 2 * y[1] - y[0]
    surprise = z[2] - (2 * z[1] - z[0])
    u, v = ctrl.correction.u[2, 0, 1], ctrl.correction.v[2, 0, 1]
    assert torch.allclose(out, forecast + surprise @ u @ v, atol=1e-5)


def _placement_search(model, tmp_path, ranks=(4,)):
    from lazydit.train.gates import GateTrainConfig, train_gates
    cfg = GateTrainConfig(num_steps=8, target_lazy=0.5, cfg_scale=2.0, calib_images=4, schedule_candidates=2,
                          correction_ranks=ranks, correction_images=4, correction_passes=2,
                          out_dir=str(tmp_path / "s"))
    return train_gates(model, cfg, progress=False)


def test_placement_search_reports_the_correction_and_the_file_keeps_it(model, tmp_path):
    ctrl, summary = _placement_search(model, tmp_path)
    scores = summary["correction_psnr"]
    # per step (8 steps) and shared, rank 4; then at most one refit of the better along its trajectory
    assert {"none", "G8r4", "G1r4"} <= set(scores) and len(scores) <= 4
    best = max(scores, key=scores.get)
    assert (summary["correction_groups"], summary["correction_rank"]) == \
        ((0, 0) if best == "none" else (int(best[1:best.index("r")]), 4))
    refit = [k for k in scores if "+" in k]
    assert all(k == max(("G8r4", "G1r4"), key=scores.get) + "+1" for k in refit)
    # Whatever the search kept, a correction in the controller must survive the file bit for bit.
    g = torch.Generator().manual_seed(3)
    ctrl.set_correction(InputCorrection(0.1 * torch.randn(3, 2, 32, 2, generator=g), torch.randn(3, 2, 2, 32, generator=g)))
    ref = generate(model, [1, 2], [1_000_000, 1_000_001], steps=8, cfg_scale=2.0).images
    save_gates(ctrl, str(tmp_path / "c.safetensors"))
    remove_lazy(model)
    back = load_gates(str(tmp_path / "c.safetensors"), arch="DiT", depth=3, hidden_size=32, num_steps=8)
    assert torch.equal(back.correction.u, ctrl.correction.u)
    apply_lazy(model, 8, controller=back)
    assert torch.equal(generate(model, [1, 2], [1_000_000, 1_000_001], steps=8, cfg_scale=2.0).images, ref)
    back.set_correction(None)
    assert not torch.equal(generate(model, [1, 2], [1_000_000, 1_000_001], steps=8, cfg_scale=2.0).images, ref)


@pytest.mark.parametrize("change", ["nan", "orphan", "shape"])
def test_gate_file_with_a_bad_correction_is_refused(model, tmp_path, change):
    ctrl, _ = _placement_search(model, tmp_path, ranks=())
    ctrl.set_correction(InputCorrection(torch.zeros(3, 2, 32, 2), torch.zeros(3, 2, 2, 32)))
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
    from lazydit.metrics.macs import counted_macs, module_macs
    from lazydit.core.models.dit import DiTConfig
    mm = module_macs(DiTConfig(depth=2, hidden_size=32, num_heads=2, patch_size=4, input_size=16, in_channels=1,
                               num_classes=3))
    base = counted_macs(mm, steps=4, rows=2, computed_attn=10, computed_ffn=12, gates=False)
    skipped = 2 * 4 * 2 * 2 - 22
    with_corr = counted_macs(mm, steps=4, rows=2, computed_attn=10, computed_ffn=12, gates=False, correction_rank=3)
    assert with_corr - base == pytest.approx(skipped * 2 * 3 * 16 * 32 / 2)
