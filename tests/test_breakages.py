"""Tests aimed at breakages the rest of the suite let through (issue 10, item 5): each one fails
if a specific piece of bookkeeping is off (rows, steps, indices, signs, weights, counts).
`scripts/mutation_check.py` applies those breakages and runs these tests against them."""
import pytest
import torch

from conftest import tiny_dit
from lazydit.core.diffusion.samplers import ddim_step
from lazydit.core.diffusion.noise_schedule import NoiseSchedule
from lazydit.core.lazy import LazyConfig, apply_lazy, load_gates, save_gates
from lazydit.pipeline import cfg_model_fn
from lazydit.train import gates as gates_mod
from lazydit.train.gates import GateTrainConfig, GateTrainer
from lazydit.train.rollout import caches_for, rollout


def _cfg(tmp_path, **kw):
    base = dict(num_steps=5, iters=4, batch_size=4, cfg_scale=2.0, rollout_every=2, lr=1e-3,
                step_weights="uniform", calibrate=False, out_dir=str(tmp_path / "g"))
    base.update(kw)
    return GateTrainConfig(**base)


# ---- replayed training caches -------------------------------------------------------------
def test_replayed_caches_are_the_sampler_s_own_rows_and_step():
    """Replaying (x_k, caches_for(k)) with the same gates reproduces the rollout's step k exactly:
    the conditional rows get the conditional caches and the caches are those of step k, not k-1."""
    model, n, scale = tiny_dit(), 6, 2.0
    ctrl = apply_lazy(model, n, LazyConfig(num_steps=n))
    with torch.no_grad():  # input-dependent decisions: some rows skip, others compute
        ctrl.attn.normal_(0, 0.3)
        ctrl.ffn.normal_(0, 0.3)
    sched = NoiseSchedule.respaced(n)
    labels = torch.tensor([1, 7, 3])
    ro = rollout(model, ctrl, sched, labels, [11, 12, 13], scale)
    assert ro.skips[1:].any() and not ro.skips[1:].all()
    fn = cfg_model_fn(model, labels, scale)
    images = torch.arange(3)
    for k in range(2, n - 1):
        steps = torch.full((3,), k)
        ctrl.reset()
        ctrl.prime(caches_for(ro, steps, images, cfg_rows=True))
        ctrl.set_step(k)
        ctrl.set_mode("hard")
        out = fn(ro.xs[k], sched.model_timesteps(n - 1 - k, 3, "cpu"))
        assert torch.allclose(ddim_step(sched, out, ro.xs[k], n - 1 - k), ro.xs[k + 1], atol=1e-5), f"step {k}"


# ---- the budget dual, the step gains and the automatic cap ---------------------------------
def test_budget_dual_raises_rho_below_target_and_lowers_it_above(tmp_path):
    """Calibration off, one iteration: no skips against a 50% target must raise rho; skipping
    everything against a 10% target must lower it."""
    t = GateTrainer(tiny_dit(), _cfg(tmp_path, mode="onpolicy", target_lazy=0.5))
    before = t.log_rho.clone()
    rec = t.step()  # zero gates: s = 0.5 everywhere, every module computes
    assert rec["lazy_est"] < 0.5 and (t.log_rho > before).all()
    t = GateTrainer(tiny_dit(), _cfg(tmp_path, mode="onpolicy", target_lazy=0.1, max_skip_run=10))
    t.ctrl.set_config(threshold_attn=1.0, threshold_ffn=1.0)  # every score is below: all skip
    before = t.log_rho.clone()
    rec = t.step()
    assert rec["lazy_est"] > 0.1 and (t.log_rho < before).all()


def test_onpolicy_loss_weights_each_image_by_its_step_gain(tmp_path):
    """Two identical runs whose step weights differ by a factor 3 report MSEs 3x apart, and the
    gain weights the run computes are not uniform."""
    mses = []
    for scale in (1.0, 3.0):
        t = GateTrainer(tiny_dit(), _cfg(tmp_path, mode="onpolicy"))
        t.weights = torch.linspace(0.5, 1.5, 5) * scale
        mses.append(t.step()["mse"])
    assert mses[0] > 0 and mses[1] == pytest.approx(3 * mses[0], rel=1e-4)
    t = GateTrainer(tiny_dit(), _cfg(tmp_path, mode="onpolicy", step_weights="gain"))
    assert t.weights[0] == 0 and t.weights[1:].mean() == pytest.approx(1.0) and t.weights[1:].std() > 0.01


@pytest.mark.parametrize("target, cap", [(0.5, 1), (0.6, 2), (0.75, 3)])
def test_budget_mode_sets_the_automatic_skip_cap(tmp_path, target, cap):
    t = GateTrainer(tiny_dit(), _cfg(tmp_path, mode="onpolicy", target_lazy=target))
    assert t.ctrl.config.max_skip_run == cap  # ceil(R / (1 - R))
    t = GateTrainer(tiny_dit(), _cfg(tmp_path, mode="onpolicy", target_lazy=target, max_skip_run=5))
    assert t.ctrl.config.max_skip_run == 5
    t = GateTrainer(tiny_dit(), _cfg(tmp_path, mode="onpolicy", target_lazy=target, auto_cap=False))
    assert t.ctrl.config.max_skip_run is None


# ---- paper mode ---------------------------------------------------------------------------
def test_paper_mode_starts_from_step_k_minus_1_and_steps_to_k(tmp_path):
    """Data-free paper mode, no guidance: the x it trains at step k is the full-compute
    trajectory's own x_k (one DDIM step from x_{k-1}), and the target is the full output there."""
    model = tiny_dit()
    t = GateTrainer(model, _cfg(tmp_path, mode="paper", cfg_scale=1.0, label_dropout=0.0))
    t._refresh_pool()
    steps = torch.tensor([1, 2, 3, 4])
    labels, drop = torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.bool)
    t.ctrl.reset()
    _, target, x = t._loss_paper(steps, labels, drop)
    assert torch.allclose(x, t.pool.xs[steps, torch.arange(4)], atol=1e-5)
    t.ctrl.reset()
    t.ctrl.set_mode("full")
    t.ctrl.set_step(steps)
    full = model(x, t._t(steps), t.pool.labels[:4])
    assert torch.allclose(target, full[:, :4], atol=1e-5)


def test_noise_objective_target_is_the_true_noise_of_x_k(tmp_path, monkeypatch):
    """With a perfect denoiser (its DDIM step keeps the noise: x_k = q_sample(x0, k, eps)) the
    noise objective's target is exactly eps."""
    seen = {}
    real_q_sample = gates_mod.q_sample

    def q_sample(sched, x0, idx, noise):
        seen.update(x0=x0, noise=noise)
        return real_q_sample(sched, x0, idx, noise)

    def perfect_ddim_step(sched, out, x, idx):  # from noise-schedule index idx to idx - 1
        return real_q_sample(sched, seen["x0"], idx - 1, seen["noise"])

    monkeypatch.setattr(gates_mod, "q_sample", q_sample)
    monkeypatch.setattr(gates_mod, "ddim_step", perfect_ddim_step)
    data = (torch.randn(6, 4, 8, 8).clamp(-1, 1), torch.randint(0, 10, (6,)))
    t = GateTrainer(tiny_dit(), _cfg(tmp_path, mode="paper", source="dataset", objective="noise"), dataset=data)
    steps = torch.tensor([1, 2, 3, 4])
    t.ctrl.reset()
    _, target, _ = t._loss_paper(steps, torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.bool))
    assert torch.allclose(target, seen["noise"], atol=1e-4)


# ---- MACs and compare -----------------------------------------------------------------------
def test_lazy_macs_counts_attention_and_ffn_skips_apart():
    from lazydit.metrics.macs import lazy_macs, module_macs
    model = tiny_dit()
    mm = module_macs(model.config, "linear")
    assert mm.attn != mm.ffn
    skips = torch.zeros(4, 3, 2, 2, dtype=torch.bool)
    skips[1:, :, 0] = True  # attention skipped at steps 1..3 in every layer, feed-forward never
    full = lazy_macs(torch.zeros_like(skips), mm, gates=False)
    assert full == 4 * mm.forward
    assert lazy_macs(skips, mm, gates=False) == full - 3 * 3 * mm.attn
    assert lazy_macs(skips.flip(2), mm, gates=False) == full - 3 * 3 * mm.ffn


def test_l2c_mask_is_the_gates_average_not_a_static_pattern():
    from lazydit.rivals.methods import l2c_method
    skips = torch.zeros(6, 3, 2, 4, dtype=torch.bool)
    skips[1:4, 2, 1] = True  # the gates skip only the last layer's feed-forward, steps 1-3
    skips[5, 0, 0, :3] = True  # and 3 of 4 rows skip layer 0's attention at step 5
    m = l2c_method(6, skips, 4 / 36, "copy")
    want = torch.zeros(6, 3, 2, dtype=torch.bool)
    want[1:4, 2, 1] = want[5, 0, 0] = True
    assert m.kind == "mask" and m.mask.equal(want)


def test_compare_timing_is_method_over_full_compute_after_warm_up(monkeypatch):
    """A fake clock where a generation costs its step count (and the warm-up round ten times
    more): DDIM-2 in the DDIM-4 group takes half the time of full compute."""
    from lazydit.eval import compare, timing
    from lazydit.rivals.methods import Method
    clock, rnd = [0.0], {"calls": 0}

    def fake_generate(net, labels, seeds, steps, cfg_scale):
        rnd["calls"] += 1
        clock[0] += steps * len(labels) * (10 if rnd["calls"] <= 2 else 1)  # the warm-up (2 methods) is slow

    monkeypatch.setattr(timing, "generate", fake_generate)
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    methods = [Method("DDIM-4", 4, 4, "full", family="DDIM"), Method("DDIM-2", 4, 2, "full", family="DDIM")]
    cfg = compare.CompareConfig(timing_images=2, timing_rounds=3)
    out = timing.time_methods(tiny_dit(), cfg, methods, 10, timing.timing_batches(cfg.timing_images))
    assert out["DDIM-4", 4]["time_ratio"] == 1.0 and out["DDIM-2", 4]["time_ratio"] == 0.5
    assert out["DDIM-2", 4]["time_b1"] == 0.5 and out["DDIM-2", 4]["time_b1_range"] == [0.5, 0.5]
    assert out["DDIM-2", 4]["sec_per_image"] == 2.0  # 2 steps x 2 images "seconds" for 2 images
    lazy = Method("lazy-4@50%", 4, 4, "gates", family="lazy (default)")
    extra = timing.matched_time_ddim(methods + [lazy], {("lazy-4@50%", 4): {"time_b1": 0.8, "time_b2": 0.55}},
                                     (1, 2))
    assert [m.steps for m in extra] == [3] and extra[0].extra["matched_time"]  # DDIM-2 exists already


# ---- gate files at sampling -----------------------------------------------------------------
def test_sampling_without_a_cap_flag_keeps_the_gate_file_s_cap(tmp_path):
    """`lazydit sample --gates F` without --max-skip-run passes max_skip_run=None: the trained cap
    in the file stays; an explicit value replaces it."""
    model = tiny_dit()
    ctrl = apply_lazy(model, 4, LazyConfig(num_steps=4, max_skip_run=2))
    path = str(tmp_path / "g.safetensors")
    save_gates(ctrl, path)
    kw = dict(arch=getattr(model, "arch_name", "DiT"), depth=3, hidden_size=32, num_steps=4)
    assert load_gates(path, **kw, overrides={"max_skip_run": None}).config.max_skip_run == 2
    assert load_gates(path, **kw, overrides={"max_skip_run": 3}).config.max_skip_run == 3
    assert load_gates(path, **kw).config.max_skip_run == 2
