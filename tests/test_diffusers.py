"""diffusers support: DiT <-> diffusers conversion, lazy gates on DiT and PixArt transformers,
and sampling through lazydit's loop and through a diffusers scheduler."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from conftest import tiny_dit  # noqa: E402
from test_large_dit import check_lazy_exact, check_soft_training, randomize, steps_inputs  # noqa: E402
from lazydit.integrations.diffusers import (DiffusersDiT, build_diffusers_dit, diffusers_to_dit,  # noqa: E402
                                            dit_config_from_diffusers, dit_to_diffusers, sample_dit)
from lazydit.core.lazy import apply_lazy, get_controller  # noqa: E402
from lazydit.core.models.dit import DiT  # noqa: E402
from lazydit.pipeline import generate  # noqa: E402

torch.set_num_threads(1)
X, T, Y = torch.randn(3, 4, 8, 8), torch.tensor([0, 421, 999]), torch.tensor([0, 7, 10])  # 10: null class


def _out(transformer, x=X, t=T, y=Y):
    with torch.no_grad():
        return transformer(x, timestep=t, class_labels=y).sample


def test_dit_to_diffusers_gives_the_same_outputs():
    dit = tiny_dit()
    hf = build_diffusers_dit(dit.config).eval()
    hf.load_state_dict(dit_to_diffusers(dit.state_dict(), dit.config))
    with torch.no_grad():
        assert (_out(hf) - dit(X, T, Y)).abs().max() <= 1e-5


def test_diffusers_to_dit_gives_the_same_outputs():
    hf = randomize(build_diffusers_dit(tiny_dit().config))
    sd = hf.state_dict()
    for k in [k for k in sd if ".norm1.emb." in k]:  # one embedder shared by all blocks, as in DiT
        sd[k] = sd[k.replace(f".{k.split('.')[1]}.", ".0.", 1)]
    hf.load_state_dict(sd)
    cfg = dit_config_from_diffusers(hf.config)
    dit = DiT(cfg).eval()
    dit.load_state_dict(diffusers_to_dit(sd, cfg))
    with torch.no_grad():
        assert (_out(hf) - dit(X, T, Y)).abs().max() <= 1e-5
    assert dit_to_diffusers(dit.state_dict(), cfg).keys() == sd.keys()


def test_conversion_errors():
    dit = tiny_dit()
    sd = dit.state_dict()
    with pytest.raises(ValueError, match="not a DiT state dict"):
        dit_to_diffusers({k: v for k, v in sd.items() if k != "blocks.0.attn.qkv.bias"}, dit.config)
    hf_sd = dit_to_diffusers(sd, dit.config)
    hf_sd["transformer_blocks.2.norm1.emb.timestep_embedder.linear_1.bias"] += 1
    with pytest.raises(ValueError, match="single timestep/class embedder"):
        diffusers_to_dit(hf_sd, dit.config)
    from dataclasses import replace
    with pytest.raises(ValueError, match="MLP ratio"):
        build_diffusers_dit(replace(dit.config, mlp_ratio=2.0))


def _pixart():
    pix = diffusers.PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                             out_channels=8, num_layers=2, cross_attention_dim=16, sample_size=8,
                                             patch_size=2, norm_eps=1e-6)
    enc = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(0))  # text tokens

    def call(x, t):
        return pix(x, encoder_hidden_states=enc, timestep=t, added_cond_kwargs={}, return_dict=False)[0]
    return randomize(pix), call


def test_lazy_diffusers_dit_exact_and_forced_skips():
    hf = randomize(build_diffusers_dit(tiny_dit().config))
    xs, ts = steps_inputs(4, (3, 4, 8, 8))
    check_lazy_exact(hf, lambda x, t: hf(x, timestep=t, class_labels=Y).sample, xs, ts)


def test_lazy_pixart_exact_and_forced_skips():
    pix, call = _pixart()
    xs, ts = steps_inputs(4, (3, 4, 8, 8))
    check_lazy_exact(pix, call, xs, ts)


def test_soft_mode_trains_gates_through_diffusers():
    hf = randomize(build_diffusers_dit(tiny_dit().config))
    xs, ts = steps_inputs(2, (2, 4, 8, 8))
    check_soft_training(hf, lambda x, t: hf(x, timestep=t, class_labels=Y[:2]).sample, xs[0], ts)
    pix, call = _pixart()
    xs, ts = steps_inputs(2, (3, 4, 8, 8))
    check_soft_training(pix, call, xs[0], ts)


def test_lazydit_pipeline_drives_a_diffusers_dit():
    dit = tiny_dit()
    hf = build_diffusers_dit(dit.config).eval()
    hf.load_state_dict(dit_to_diffusers(dit.state_dict(), dit.config))
    wrapped = DiffusersDiT(hf)
    ref = generate(dit, [1, 2], [0, 1], steps=4, cfg_scale=2.0).images
    apply_lazy(wrapped, 4).force(torch.zeros(4, 3, 2, dtype=torch.bool))
    out = generate(wrapped, [1, 2], [0, 1], steps=4, cfg_scale=2.0)
    assert (out.images - ref).abs().max() <= 1e-5 and out.stats.steps_run == 4


def test_scheduler_loop_steps_the_controller():
    hf = randomize(build_diffusers_dit(tiny_dit().config))
    scheduler = diffusers.DDIMScheduler()
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = sample_dit(hf, scheduler, [1, 2], latents, num_inference_steps=5, guidance_scale=3.0)
    ctrl = apply_lazy(hf, 5)
    same = sample_dit(hf, scheduler, [1, 2], latents, num_inference_steps=5, guidance_scale=3.0)
    assert (same - ref).abs().max() <= 1e-5
    mask = torch.zeros(5, 3, 2, dtype=torch.bool)
    mask[2:4] = True
    ctrl.force(mask)
    lazy = sample_dit(DiffusersDiT(hf), scheduler, [1, 2], latents, num_inference_steps=5, guidance_scale=3.0)
    st = get_controller(hf).stats()
    assert st.steps_run == 5 and st.ratio() == pytest.approx(2 / 5)
    assert (lazy - ref).abs().max() > 1e-4  # the skips took effect
    with pytest.raises(ValueError, match="gates are for 5 steps"):
        sample_dit(hf, scheduler, [1], latents[:1], num_inference_steps=4)


def test_diffusers_taylorseer_hook_equals_our_taylor1_on_its_schedule():
    """The rival is configured right: diffusers' own hook, first order, gives our taylor1 forecast
    on the schedule its rule implies, and resets between generations."""
    import torch
    from conftest import tiny_dit
    from lazydit.rivals.diffusers_rivals import TaylorSeerDiT, taylorseer_skips
    from lazydit.core.lazy import LazyConfig, apply_lazy, remove_lazy
    from lazydit.pipeline import generate
    m = tiny_dit()
    full = generate(m, [1, 2], [3, 4], steps=8, cfg_scale=2.0).images
    hooked = TaylorSeerDiT(m, warmup=3, interval=2, order=1, first_timestep=999)
    a = generate(hooked, [1, 2], [3, 4], steps=8, cfg_scale=2.0).images
    assert torch.equal(generate(hooked, [1, 2], [3, 4], steps=8, cfg_scale=2.0).images, a)
    ctrl = apply_lazy(m, 8, LazyConfig(num_steps=8, reuse="taylor1"))
    ctrl.force(taylorseer_skips(8, 3, 3, 2))
    ours = generate(m, [1, 2], [3, 4], steps=8, cfg_scale=2.0).images
    remove_lazy(m)
    assert (a - ours).abs().max() <= 1e-4
    assert (a - full).abs().max() > 1e-3  # it really skipped


# ---- friction of the diffusers path (issue 11) ----------------------------------------------------
def test_gate_files_carry_one_arch_name_however_the_dit_is_wrapped(tmp_path):
    from lazydit.integrations.diffusers import transformer_arch_name
    from lazydit.core.lazy import load_gates, save_gates
    from lazydit.core.models import build_model, embedded_config
    from lazydit.train.gates import GateTrainConfig, train_gates
    # The shipped model converted to diffusers is still DiT-FMNIST, so compare --gates-dir takes its gates.
    fm = build_diffusers_dit(embedded_config())
    assert DiffusersDiT(fm).arch_name == transformer_arch_name(fm) == build_model("DiT-FMNIST").arch_name == "DiT-FMNIST"
    hf = randomize(build_diffusers_dit(tiny_dit().config))
    cfg = GateTrainConfig(num_steps=4, iters=2, batch_size=2, cfg_scale=2.0, rollout_every=2, lr=1e-3,
                          out_dir=str(tmp_path / "g"), mode="onpolicy", target_lazy=0.4, calibrate=False)
    ctrl, _ = train_gates(DiffusersDiT(hf), cfg, progress=False)
    path = str(tmp_path / "g.safetensors")
    save_gates(ctrl, path)
    dims = dict(depth=3, hidden_size=32, num_steps=4)
    for arch in (transformer_arch_name(hf), type(tiny_dit()).__name__):  # the transformer, lazydit's DiT
        assert arch == "DiT"
        assert torch.equal(load_gates(path, arch=arch, **dims).attn, ctrl.attn)
    ctrl.meta["arch"] = "diffusers-DiTTransformer2DModel"  # the label older versions wrote
    save_gates(ctrl, path)
    for arch in ("DiTTransformer2DModel", "DiT", "DiT-FMNIST"):
        load_gates(path, arch=arch, **dims)
    for arch in ("PixArtTransformer2DModel", "Large-DiT-S/2"):
        with pytest.raises(ValueError, match="is for arch=diffusers-DiTTransformer2DModel"):
            load_gates(path, arch=arch, **dims)


def test_gates_twice_and_training_a_gated_transformer_are_refused(tmp_path):
    from lazydit.core.lazy import remove_lazy
    from lazydit.train.gates import GateTrainConfig, train_gates
    hf = randomize(build_diffusers_dit(tiny_dit().config))
    apply_lazy(hf, 4)
    cfg = GateTrainConfig(num_steps=4, iters=2, batch_size=2, cfg_scale=2.0, out_dir=str(tmp_path / "g"))
    with pytest.raises(ValueError, match="already has lazy gates .attached to it or to a DiffusersDiT"):
        train_gates(DiffusersDiT(hf), cfg, progress=False)
    with pytest.raises(ValueError, match="already has lazy gates"):
        apply_lazy(hf, 4)
    remove_lazy(hf)
    wrapped = DiffusersDiT(hf)
    apply_lazy(wrapped, 4)
    with pytest.raises(ValueError, match="already has lazy gates"):
        apply_lazy(hf, 4)
    remove_lazy(wrapped)  # removal through the owner still works
    apply_lazy(hf, 4)


def test_chunking_after_gating_is_refused():
    hf = randomize(build_diffusers_dit(tiny_dit().config))
    ctrl = apply_lazy(hf, 2)
    for b in hf.transformer_blocks:
        b.set_chunk_feed_forward(4, 1)  # ff would be called per slice of tokens, each overwriting the cache
    ctrl.set_step(0)
    with pytest.raises(ValueError, match="chunking was enabled after the lazy gates"):
        _out(hf)
    latents = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="chunking was enabled after the lazy gates"):
        sample_dit(hf, diffusers.DDIMScheduler(), [1], latents, num_inference_steps=2)


def test_bf16_transformer_with_fp32_latents():
    hf = randomize(build_diffusers_dit(tiny_dit().config))
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ctrl = apply_lazy(hf, 4)
    ctrl.force(torch.tensor([0, 1, 0, 1]).bool()[:, None, None].expand(4, 3, 2))
    ref = sample_dit(hf, diffusers.DDIMScheduler(), [1], latents, num_inference_steps=4, guidance_scale=2.0)
    hf.to(torch.bfloat16)
    out = sample_dit(hf, diffusers.DDIMScheduler(), [1], latents, num_inference_steps=4, guidance_scale=2.0)
    assert out.dtype == torch.float32 and ctrl.stats().ratio() == 0.5
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
    assert cos > 0.97  # bf16 rounding (amplified by a random model), not garbage


def test_ddim_stride_trap_is_refused():
    """diffusers' DDIMScheduler steps by 1000 // N, whatever its list says: with "linspace"
    spacing at 3 steps it lists 999, 500, 0 but steps 999 -> 666. Our loop must not inherit that."""
    hf = randomize(build_diffusers_dit(tiny_dit().config))
    latents = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="steps by 333, not to its next listed timestep"):
        sample_dit(hf, diffusers.DDIMScheduler(timestep_spacing="linspace"), [1], latents, num_inference_steps=3)
    sample_dit(hf, diffusers.DDIMScheduler(), [1], latents, num_inference_steps=3)  # "leading": 666, 333, 0
