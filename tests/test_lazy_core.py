"""The lazy mechanism: exactness against vanilla and explicit references, state, gate files."""
import pytest
import torch

from lazydit.core.diffusion.noise_schedule import NoiseSchedule
from lazydit.core.lazy import LazyConfig, apply_lazy, load_gates, patterns, remove_lazy, save_gates
from lazydit.core.models.dit import modulate
from lazydit.pipeline import generate

LABELS, SEEDS = [1, 2, 3], [10, 11, 12]


def test_compute_everywhere_equals_vanilla(model):
    ref = generate(model, LABELS, SEEDS, steps=6, cfg_scale=2.0).images
    ctrl = apply_lazy(model, 6)  # zero-init gates: s = 0.5 >= 0.5, everything computes
    out = generate(model, LABELS, SEEDS, steps=6, cfg_scale=2.0)
    assert (out.images - ref).abs().max() <= 1e-5
    assert out.stats.ratio() == 0.0
    ctrl.force(torch.zeros(6, 3, 2, dtype=torch.bool))
    assert (generate(model, LABELS, SEEDS, steps=6, cfg_scale=2.0).images - ref).abs().max() <= 1e-5


def _reference_step_outputs(model, xs, t, y, skip, caches):
    """DiT forward written out by hand, reusing caches[(l, kind)] where skip[l, m] is True."""
    x = model.x_embedder(xs) + model.pos_embed
    c = model.t_embedder(t) + model.y_embedder(y, False)
    for l, b in enumerate(model.blocks):
        sm, cm, gm, sf, cf, gf = b.adaLN_modulation(c).chunk(6, dim=1)
        a = caches[(l, "attn")] if skip[l, 0] else b.attn(modulate(b.norm1(x), sm, cm))
        caches[(l, "attn")] = a
        x = x + gm.unsqueeze(1) * a
        f = caches[(l, "ffn")] if skip[l, 1] else b.mlp(modulate(b.norm2(x), sf, cf))
        caches[(l, "ffn")] = f
        x = x + gf.unsqueeze(1) * f
    return model.unpatchify(model.final_layer(x, c))


def test_forced_skips_equal_explicit_cache_reuse(model):
    steps = 5
    mask = torch.zeros(steps, 3, 2, dtype=torch.bool)
    mask[1, 0, 0] = mask[2, :, 1] = mask[3] = mask[4, 2, 0] = True  # mixed layers, modules, runs
    sched = NoiseSchedule.respaced(steps)
    x0 = torch.randn(2, 4, 8, 8)
    y = torch.tensor([3, 7])
    caches, x, ref = {}, x0.clone(), []
    with torch.no_grad():
        for k in range(steps):
            t = sched.model_timesteps(steps - 1 - k, 2)
            ref.append(_reference_step_outputs(model, x, t, y, mask[k], caches))
            x = x + 0.1 * ref[-1][:, :4]  # any state update: the lazy run must follow the same path
    ctrl = apply_lazy(model, steps)
    ctrl.force(mask)
    ctrl.reset()
    x = x0.clone()
    with torch.no_grad():
        for k in range(steps):
            ctrl.set_step(k)
            out = model(x, sched.model_timesteps(steps - 1 - k, 2), y)
            assert (out - ref[k]).abs().max() <= 1e-5, f"step {k}"
            x = x + 0.1 * out[:, :4]
    assert ctrl.stats().skips[:, :, :, 0].eq(mask).all()


def test_mixed_per_sample_decisions_equal_running_alone(model):
    ctrl = apply_lazy(model, 8)
    with torch.no_grad():  # random gates give different decisions per sample
        ctrl.attn.normal_(0, 0.5)
        ctrl.ffn.normal_(0, 0.5)
    labels, seeds = [0, 4, 9, 2], [1, 2, 3, 4]
    batch = generate(model, labels, seeds, steps=8, cfg_scale=1.0)
    sk = batch.stats.skips[1:]  # (N-1, L, 2, B): step 0 always computes
    per_call = sk.float().mean(-1)
    assert ((per_call > 0) & (per_call < 1)).any(), "the test needs mixed decisions within a batch"
    for i in range(4):
        alone = generate(model, labels[i:i + 1], seeds[i:i + 1], steps=8, cfg_scale=1.0)
        # batched and single matmuls round differently: compare relative to the (large) values
        scale = batch.images[i].abs().max().clamp(min=1)
        assert (alone.images[0] - batch.images[i]).abs().max() <= 1e-5 * scale
        assert alone.stats.skips[..., 0].eq(batch.stats.skips[..., i]).all()


def test_only_computing_rows_reach_the_module(model):
    ctrl = apply_lazy(model, 4)
    mask = torch.zeros(4, 3, 2, 2, dtype=torch.bool)
    mask[1:, :, :, 0] = True  # row 0 always skips after step 0, row 1 never does
    mask[3, :, :, 1] = True   # at step 3 every row skips: the module must not be called at all
    ctrl.force(mask)
    seen = []
    hook = model.blocks[0].mlp.fc1.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    generate(model, [1, 2], [0, 1], steps=4, cfg_scale=1.0)
    hook.remove()
    assert seen == [2, 1, 1]


def test_two_generations_in_a_row_are_identical(model):
    ctrl = apply_lazy(model, 6)
    with torch.no_grad():
        ctrl.attn.normal_(0, 0.5)
    a = generate(model, LABELS, SEEDS, steps=6, cfg_scale=2.0)
    b = generate(model, LABELS, SEEDS, steps=6, cfg_scale=2.0)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.stats.skips, b.stats.skips)


def test_skip_cap_limits_consecutive_skips(model):
    ctrl = apply_lazy(model, 8, LazyConfig(num_steps=8, max_skip_run=2))
    ctrl.force(torch.ones(8, 3, 2, dtype=torch.bool))
    sk = generate(model, [1], [0], steps=8, cfg_scale=1.0).stats.skips[:, 0, 0, 0].tolist()
    assert sk == [False, True, True, False, True, True, False, True]


def test_patterns():
    m = patterns.every_nth(6, 2, 2)
    assert m[:, 0, 0].tolist() == [False, True, False, True, False, True]
    f = patterns.target_fraction(50, 4, 0.3)
    assert abs(f.float().mean().item() - 0.3) < 0.01 and not f[0].any()
    with pytest.raises(ValueError, match="pattern"):
        patterns.from_name("weird:3", 10, 2)


def test_remove_lazy_restores_model(model):
    ref = generate(model, LABELS, SEEDS, steps=4, cfg_scale=2.0).images
    keys = list(model.state_dict())
    apply_lazy(model, 4).force(patterns.every_nth(4, 3, 2))
    assert list(model.state_dict()) == keys  # gates never enter the model's state dict
    remove_lazy(model)
    assert torch.equal(generate(model, LABELS, SEEDS, steps=4, cfg_scale=2.0).images, ref)


def test_gate_file_round_trip_and_checks(model, tmp_path):
    ctrl = apply_lazy(model, 5, LazyConfig(num_steps=5, threshold_attn=0.4, max_skip_run=3))
    with torch.no_grad():
        ctrl.attn.normal_()
        ctrl.ffn.normal_()
    path = str(tmp_path / "g.safetensors")
    save_gates(ctrl, path, extra={"train_config": {"rho": 1e-3}})
    back = load_gates(path, arch="DiT", depth=3, hidden_size=32, num_steps=5)
    assert torch.equal(back.attn, ctrl.attn) and torch.equal(back.ffn, ctrl.ffn)
    assert back.config == ctrl.config and back.meta["train_config"] == {"rho": 1e-3}
    with pytest.raises(ValueError, match="5-step gates, but the sampler runs 20"):
        load_gates(path, arch="DiT", depth=3, hidden_size=32, num_steps=20)
    with pytest.raises(ValueError, match="depth=3, but the model has depth=28"):
        load_gates(path, arch="DiT", depth=28, hidden_size=32, num_steps=5)
    with pytest.raises(ValueError, match="arch=DiT, but the model has arch=DiT-XL/2"):
        load_gates(path, arch="DiT-XL/2", depth=3, hidden_size=32, num_steps=5)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        load_gates(path, arch="DiT", depth=3, hidden_size=32, num_steps=5)


def test_soft_mode_is_differentiable_in_the_gates(model):
    ctrl = apply_lazy(model, 3)
    sched = NoiseSchedule.respaced(3)
    x, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    ctrl.reset()
    ctrl.set_mode("full")
    with torch.no_grad():
        model(x, sched.model_timesteps(2, 2), y)
    ctrl.set_mode("soft")
    ctrl.set_step(1)
    out = model(x, sched.model_timesteps(1, 2), y)
    out.pow(2).mean().backward()
    assert ctrl.attn.grad[:, 1].abs().sum() > 0 and ctrl.ffn.grad[:, 1].abs().sum() > 0
    assert ctrl.attn.grad[:, 0].abs().sum() == 0  # only the gates of the trained step move


def test_deepcopy_of_a_lazy_model_is_its_own_model(model):
    import copy
    from lazydit.core.lazy import get_controller
    ctrl = apply_lazy(model, 6, LazyConfig(num_steps=6, reuse="taylor1"))
    ctrl.force(patterns.every_nth(6, 3, 2))
    ref = generate(model, [1, 2], [7, 8], steps=6, cfg_scale=2.0).images
    twin = copy.deepcopy(model)
    assert get_controller(twin) is not ctrl
    assert torch.equal(generate(twin, [1, 2], [7, 8], steps=6, cfg_scale=2.0).images, ref)
    with torch.no_grad():
        for p in twin.blocks[1].attn.parameters():
            p.mul_(0.5)  # the copy's attention must run the copy's weights
    assert not torch.equal(generate(twin, [1, 2], [7, 8], steps=6, cfg_scale=2.0).images, ref)
    assert torch.equal(generate(model, [1, 2], [7, 8], steps=6, cfg_scale=2.0).images, ref)
    assert get_controller(twin).stats().skips.shape[-1] == 4  # each controller counts its own model


def test_a_direct_call_after_generate_reuses_nothing(model):
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([500, 500]), torch.tensor([1, 2])
    with torch.no_grad():
        plain = model(x, t, y)
    ctrl = apply_lazy(model, 6, LazyConfig(num_steps=6))
    ctrl.force(patterns.every_nth(6, 3, 2))
    generate(model, [1, 2], [7, 8], steps=6, cfg_scale=2.0)
    assert ctrl.stats().ratio() > 0  # the finished generation's statistics stay readable
    with torch.no_grad():
        assert torch.equal(model(x, t, y), plain)
