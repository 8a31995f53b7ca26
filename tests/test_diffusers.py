"""diffusers support: DiT <-> diffusers conversion, lazy gates on DiT and PixArt transformers,
and sampling through lazydit's loop and through a diffusers scheduler."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from conftest import tiny_dit  # noqa: E402
from test_large_dit import check_lazy_exact, check_soft_training, randomize, steps_inputs  # noqa: E402
from lazydit.integrations.diffusers import (DiffusersDiT, build_diffusers_dit, diffusers_to_dit,  # noqa: E402
                                            dit_config_from_diffusers, dit_to_diffusers, sample_dit)
from lazydit.lazy import apply_lazy, get_controller  # noqa: E402
from lazydit.models.dit import DiT  # noqa: E402
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
    sched = diffusers.DDIMScheduler()
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = sample_dit(hf, sched, [1, 2], latents, num_inference_steps=5, guidance_scale=3.0)
    ctrl = apply_lazy(hf, 5)
    same = sample_dit(hf, sched, [1, 2], latents, num_inference_steps=5, guidance_scale=3.0)
    assert (same - ref).abs().max() <= 1e-5
    mask = torch.zeros(5, 3, 2, dtype=torch.bool)
    mask[2:4] = True
    ctrl.force(mask)
    lazy = sample_dit(DiffusersDiT(hf), sched, [1, 2], latents, num_inference_steps=5, guidance_scale=3.0)
    st = get_controller(hf).stats()
    assert st.steps_run == 5 and st.ratio() == pytest.approx(2 / 5)
    assert (lazy - ref).abs().max() > 1e-4  # the skips took effect
    with pytest.raises(ValueError, match="gates are for 5 steps"):
        sample_dit(hf, sched, [1], latents[:1], num_inference_steps=4)


def test_diffusers_taylorseer_hook_equals_our_taylor1_on_its_schedule():
    """The rival is configured right: diffusers' own hook, first order, gives our taylor1 forecast
    on the schedule its rule implies, and resets between generations."""
    import torch
    from conftest import tiny_dit
    from lazydit.eval.diffusers_rivals import TaylorSeerDiT, taylorseer_skips
    from lazydit.lazy import LazyConfig, apply_lazy, remove_lazy
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
