"""Reuse operators: forecast arithmetic by hand, per-row histories, and that training replays
exactly the values sampling returns."""
import pytest
import torch

from lazydit.core.diffusion.samplers import ddim_step
from lazydit.core.diffusion.noise_schedule import NoiseSchedule
from lazydit.core.lazy import LazyConfig, LazyController, apply_lazy, load_gates, patterns, remove_lazy, save_gates
from lazydit.core.lazy.reuse import lagrange_weights
from lazydit.pipeline import cfg_model_fn
from lazydit.train.rollout import caches_for, rollout

# Row 0 computes at steps 0, 1, 3; row 1 at steps 0, 2. Everything else skips.
SKIP = torch.tensor([[False, False], [False, True], [True, False], [False, True], [True, True]])


def _drive(reuse: str):
    """Run one module through 5 steps; the module returns distinct random values per step."""
    ctrl = LazyController(LazyConfig(num_steps=5, reuse=reuse), depth=1, dim=3)
    mask = torch.zeros(5, 1, 2, 2, dtype=torch.bool)
    mask[:, 0, 0] = SKIP
    ctrl.force(mask)
    ctrl.reset()
    g = torch.Generator().manual_seed(0)
    y = torch.randn(5, 2, 4, 3, generator=g)  # y[k] = what the module would compute at step k
    outs = []
    for k in range(5):
        ctrl.set_step(k)
        rows = []

        def fn(z, k=k, rows=rows):
            rows.append(z[:, 0, 0].long().tolist())  # which rows were actually computed
            return y[k][z[:, 0, 0].long()]
        z = torch.arange(2.0).view(2, 1, 1).expand(2, 4, 3).clone()  # z carries the row index
        outs.append(ctrl.lazy_forward(0, "attn", fn, z))
    return y, torch.stack(outs)


def test_taylor1_matches_hand_computation_per_row():
    y, out = _drive("taylor1")
    r0, r1 = y[:, 0], y[:, 1]
    assert torch.allclose(out[2, 0], 2 * r0[1] - r0[0], atol=1e-6)           # from steps 1, 0
    assert torch.allclose(out[4, 0], 1.5 * r0[3] - 0.5 * r0[1], atol=1e-6)   # from steps 3, 1
    assert torch.allclose(out[1, 1], r1[0], atol=1e-6)                       # one point: a copy
    assert torch.allclose(out[3, 1], 1.5 * r1[2] - 0.5 * r1[0], atol=1e-6)   # from steps 2, 0
    assert torch.allclose(out[4, 1], 2 * r1[2] - r1[0], atol=1e-6)
    for k, row in ((0, 0), (1, 0), (3, 0), (0, 1), (2, 1)):                   # computed: exact
        assert torch.equal(out[k, row], y[k, row])


def test_taylor2_and_copy_match_hand_computation():
    y, out = _drive("taylor2")
    r0 = y[:, 0]
    # Lagrange through steps 3, 1, 0 evaluated at 4: weights 2, -2, 1.
    assert torch.allclose(out[4, 0], 2 * r0[3] - 2 * r0[1] + r0[0], atol=1e-5)
    assert torch.allclose(out[2, 0], 2 * r0[1] - r0[0], atol=1e-6)  # two points: order 1
    y, out = _drive("copy")
    assert torch.equal(out[4, 0], y[3, 0]) and torch.equal(out[4, 1], y[2, 1])


def test_lagrange_weights_reproduce_polynomials():
    steps = torch.tensor([[7.0], [4.0], [2.0]])
    for n, poly in ((2, lambda k: 3 - 2 * k), (3, lambda k: 1 + k - 0.5 * k * k)):
        w = lagrange_weights(steps, torch.tensor([n]), 9.0)[:, 0]
        vals = torch.tensor([poly(7.0), poly(4.0), poly(2.0)])
        assert abs(float((w * vals).sum()) - poly(9.0)) < 1e-4
        assert float(w[n:].abs().sum()) == 0.0


def test_unknown_operator_is_refused():
    with pytest.raises(ValueError, match="unknown reuse operator"):
        LazyConfig(num_steps=4, reuse="taylor7")


def test_operator_survives_the_gate_file(model, tmp_path):
    ctrl = apply_lazy(model, 6, LazyConfig(num_steps=6, reuse="taylor2"))
    save_gates(ctrl, str(tmp_path / "g.safetensors"), extra={"arch": "DiT"})
    back = load_gates(str(tmp_path / "g.safetensors"), arch="DiT", depth=3, hidden_size=32, num_steps=6)
    assert back.config.reuse == "taylor2"


@pytest.mark.parametrize("reuse", ["copy", "taylor1", "taylor2"])
def test_replayed_reuse_values_reproduce_sampling(model, reuse):
    """What a rollout records as reuse values is exactly what the skipped modules returned, so
    training mixes against the operator that sampling serves."""
    n = 6
    sched = NoiseSchedule.respaced(n)
    ctrl = apply_lazy(model, n, LazyConfig(num_steps=n, reuse=reuse))
    mask = torch.zeros(n, 3, 2, dtype=torch.bool)
    mask[[2, 4, 5]] = True   # computes at 0, 1, 3: forecasts from two or three points
    mask[4, 1, 1] = False    # one module computes amid skips: its history moves alone
    ctrl.force(mask)
    labels = torch.tensor([1, 5])
    ro = rollout(model, ctrl, sched, labels, [3, 4], cfg_scale=2.0)
    fn = cfg_model_fn(model, labels, 2.0)
    images = torch.arange(2)
    for k in (2, 4, 5):
        ctrl.reset()
        ctrl.prime(caches_for(ro, torch.full_like(images, k), images, True))
        ctrl.set_step(k)
        with torch.no_grad():
            out = fn(ro.xs[k], sched.model_timesteps(n - 1 - k, 2))
        x_next = ddim_step(sched, out, ro.xs[k], n - 1 - k)
        nxt = ro.xs[k + 1] if k + 1 < n else ro.final
        assert (x_next - nxt).abs().max() <= 1e-5, f"step {k}"


def test_a_rollout_keeps_only_the_drawn_pairs_with_the_same_values(model):
    """Training draws one (step, image) per image and iteration: a rollout that keeps only those
    pairs returns, for them, exactly the rows a rollout keeping everything returns (image 1's
    step-4 rows must not come from image 0), and refuses a pair it did not keep."""
    n = 6
    sched = NoiseSchedule.respaced(n)
    ctrl = apply_lazy(model, n, LazyConfig(num_steps=n, reuse="taylor1"))
    ctrl.force(patterns.every_nth(n, 3, 2))
    labels = torch.tensor([1, 5])
    full = rollout(model, ctrl, sched, labels, [3, 4], cfg_scale=2.0)
    some = rollout(model, ctrl, sched, labels, [3, 4], cfg_scale=2.0, keep=[(4, 1), (2, 0), (4, 0)])
    assert some.caches.shape[0] == 3 and full.caches.shape[0] == 2 * (n - 1)
    steps, images = torch.tensor([4, 2]), torch.tensor([1, 0])
    a, b = caches_for(some, steps, images, True), caches_for(full, steps, images, True)
    for key in b:
        assert torch.equal(a[key], b[key])
    assert not torch.equal(b[(0, "attn")][0], b[(0, "attn")][1])  # the two rows differ
    with pytest.raises(ValueError, match="kept no reuse values"):
        caches_for(some, torch.tensor([3]), torch.tensor([0]), True)


def test_fitted_weights_recover_a_known_combination_and_are_applied():
    from lazydit.core.lazy.reuse import History, fit_weights
    g = torch.Generator().manual_seed(1)
    vals = torch.randn(3, 4, 5, 6, generator=g)
    hist = History(vals, torch.tensor([[5.0] * 4, [3.0] * 4, [1.0] * 4]), torch.full((4,), 3))
    target = 0.7 * vals[0] + 0.5 * vals[1] - 0.2 * vals[2]
    w = fit_weights(hist, target, 7.0, ridge=1e-9)
    assert torch.allclose(w, torch.tensor([0.7, 0.5, -0.2]), atol=1e-4)
    assert torch.allclose(hist.forecast(7.0, w), target, atol=1e-4)
    # Unfitted (NaN) weights fall back to Lagrange; short histories always use Lagrange.
    assert torch.allclose(hist.forecast(7.0, torch.full((3,), float("nan"))), hist.forecast(7.0))
    short = History(vals, hist.steps, torch.tensor([3, 2, 1, 3]))
    out = short.forecast(7.0, w)
    assert torch.allclose(out[2], vals[0, 2]) and torch.allclose(out[1], 2 * vals[0, 1] - vals[1, 1], atol=1e-5)
    assert torch.allclose(out[0], target[0], atol=1e-4)


def test_placement_mode_writes_a_skip_schedule_that_samples_identically(model, tmp_path):
    from lazydit.pipeline import generate
    from lazydit.train.gates import GateTrainConfig, train_gates
    cfg = GateTrainConfig(num_steps=8, target_lazy=0.5, cfg_scale=2.0, calib_images=4, schedule_candidates=3,
                          out_dir=str(tmp_path / "s"))
    assert cfg.train_mode == "placement" and cfg.reuse_operator == "fit2"
    ctrl, summary = train_gates(model, cfg, progress=False)
    assert abs(summary["achieved"]["lazy_ratio"] - 0.5) <= 0.07
    assert ctrl.fitted is not None and torch.isfinite(ctrl.fitted).any()
    ref = generate(model, [1, 2], [1_000_000, 1_000_001], steps=8, cfg_scale=2.0)
    from lazydit.core.lazy import remove_lazy
    remove_lazy(model)
    back = load_gates(str(tmp_path / "s" / "gates.safetensors"), arch="DiT", depth=3, hidden_size=32, num_steps=8)
    assert back.config.reuse == "fit2" and torch.equal(back.forced, ctrl.forced)
    apply_lazy(model, 8, controller=back)
    out = generate(model, [1, 2], [1_000_000, 1_000_001], steps=8, cfg_scale=2.0)
    assert torch.equal(out.images, ref.images)
    back.set_fitted(None)  # the fitted weights matter: Lagrange gives different images
    assert not torch.equal(generate(model, [1, 2], [1_000_000, 1_000_001], steps=8, cfg_scale=2.0).images, ref.images)


def test_fit_operators_need_a_skip_schedule():
    from lazydit.train.gates import GateTrainConfig
    with pytest.raises(ValueError, match="static skip schedule"):
        GateTrainConfig(num_steps=8, mode="onpolicy", reuse="fit2").validate()
    with pytest.raises(ValueError, match="target-lazy"):
        GateTrainConfig(num_steps=8, mode="placement").validate()


@pytest.mark.parametrize("kw", [dict(threshold_attn=float("nan")), dict(threshold_ffn=1.5),
                                dict(max_skip_run=-1), dict(max_skip_run=0), dict(max_skip_run=2.5)])
def test_lazy_config_refuses_values_that_would_silently_change_decisions(kw):
    with pytest.raises(ValueError):
        LazyConfig(num_steps=4, **kw)


def test_shared_history_forecasts_and_materialises_like_the_per_row_one():
    """A batch that computes together keeps its steps as Python numbers: its forecast, and the
    per-row steps and counts built when rows part, equal those of the per-row history."""
    from lazydit.core.lazy.reuse import History
    g = torch.Generator().manual_seed(3)
    ys = torch.randn(5, 2, 4, 3, generator=g)
    shared = History.start(ys[0], 0.0, 3)
    for k, y in zip((1.0, 3.0, 4.0, 6.0), ys[1:]):
        shared = shared.push(y, k)
    per_row = History(shared.values.clone(), shared.steps.clone(), shared.count.clone(), None, shared.head)
    assert shared.count.tolist() == [4, 4]
    assert sorted(shared.steps[:, 0].tolist()) == [1.0, 3.0, 4.0, 6.0]  # the oldest (0) left the ring
    for fitted in (None, [0.5, 0.25, 0.5, -0.25], torch.tensor([0.5, 0.25, 0.5, -0.25])):
        assert torch.allclose(shared.forecast(7.0, fitted), per_row.forecast(7.0, fitted), atol=1e-5)
    # Taylor-2 from the three newest (steps 6, 4, 3) by hand.
    three = History.start(ys[0], 3.0, 2).push(ys[1], 4.0).push(ys[2], 6.0)
    w6, w4, w3 = (7 - 4) * (7 - 3) / ((6 - 4) * (6 - 3)), (7 - 6) * (7 - 3) / ((4 - 6) * (4 - 3)), \
        (7 - 6) * (7 - 4) / ((3 - 6) * (3 - 4))
    assert torch.allclose(three.forecast(7.0), w6 * ys[2] + w4 * ys[1] + w3 * ys[0], atol=1e-5)
    # Rows parting: row 1 computes alone at step 7; row 0 keeps its forecast from the shared points.
    parted = shared.push(ys[0][1:], 7.0, torch.tensor([1]))
    assert parted.shared is None and parted.count.tolist() == [4, 4]
    assert torch.allclose(parted.forecast(8.0)[0], per_row.forecast(8.0)[0], atol=1e-5)


def test_new_fitted_weights_replace_the_ones_a_generation_already_used(model):
    """The controller reads each cell's fitted weights once and keeps them as floats: weights set
    afterwards must still be the ones sampling uses (a stale copy would be a silent wrong result)."""
    from lazydit.pipeline import generate
    n = 6
    mask = patterns.every_nth(n, model.config.depth, 2)
    ctrl = apply_lazy(model, n, LazyConfig(num_steps=n, reuse="fit2"))
    ctrl.force(mask)
    w = torch.full((n, model.config.depth, 2, 3), float("nan"))
    w[..., 0], w[..., 1], w[..., 2] = 2.0, -1.0, 0.0  # what Lagrange would give for even spacing
    ctrl.set_fitted(w)
    first = generate(model, [1, 2], [0, 1], steps=n, cfg_scale=2.0).images
    w = w.clone()
    w[..., 0], w[..., 1], w[..., 2] = 0.5, 0.5, 0.0
    ctrl.set_fitted(w)
    second = generate(model, [1, 2], [0, 1], steps=n, cfg_scale=2.0).images
    remove_lazy(model)
    fresh = apply_lazy(model, n, LazyConfig(num_steps=n, reuse="fit2"))
    fresh.force(mask)
    fresh.set_fitted(w)
    assert torch.equal(second, generate(model, [1, 2], [0, 1], steps=n, cfg_scale=2.0).images)
    assert not torch.allclose(first, second)
