"""DiT zoo layout, noise-schedule respacing, samplers, seeding and CFG conventions."""
import numpy as np
import torch

from conftest import tiny_dit
from lazydit.core.diffusion.samplers import ddim_step, sample_loop
from lazydit.core.diffusion.noise_schedule import NoiseSchedule, linear_betas, space_timesteps
from lazydit.core.models import build_model, load_model
from lazydit.pipeline import cfg_model_fn, generate


def official_xl2_shapes():
    """The key -> shape table of facebookresearch/DiT's DiT-XL-2-256x256.pt, written out by hand."""
    D, sh = 1152, {}
    sh["pos_embed"] = (1, 256, D)
    sh["x_embedder.proj.weight"], sh["x_embedder.proj.bias"] = (D, 4, 2, 2), (D,)
    sh["t_embedder.mlp.0.weight"], sh["t_embedder.mlp.0.bias"] = (D, 256), (D,)
    sh["t_embedder.mlp.2.weight"], sh["t_embedder.mlp.2.bias"] = (D, D), (D,)
    sh["y_embedder.embedding_table.weight"] = (1001, D)
    for i in range(28):
        b = f"blocks.{i}."
        sh[b + "attn.qkv.weight"], sh[b + "attn.qkv.bias"] = (3 * D, D), (3 * D,)
        sh[b + "attn.proj.weight"], sh[b + "attn.proj.bias"] = (D, D), (D,)
        sh[b + "mlp.fc1.weight"], sh[b + "mlp.fc1.bias"] = (4 * D, D), (4 * D,)
        sh[b + "mlp.fc2.weight"], sh[b + "mlp.fc2.bias"] = (D, 4 * D), (D,)
        sh[b + "adaLN_modulation.1.weight"], sh[b + "adaLN_modulation.1.bias"] = (6 * D, D), (6 * D,)
    sh["final_layer.linear.weight"], sh["final_layer.linear.bias"] = (32, D), (32,)
    sh["final_layer.adaLN_modulation.1.weight"] = (2 * D, D)
    sh["final_layer.adaLN_modulation.1.bias"] = (2 * D,)
    return sh


def test_dit_xl2_state_dict_matches_official_layout():
    with torch.device("meta"):
        model = build_model("DiT-XL/2")
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == official_xl2_shapes()
    assert sum(p.numel() for p in model.parameters()) == 675_129_632  # as the DiT paper reports


def test_zoo_sizes():
    for name, (depth, width) in {"DiT-S/8": (12, 384), "DiT-B/4": (12, 768), "DiT-L/2": (24, 1024)}.items():
        with torch.device("meta"):
            m = build_model(name)
        assert len(m.blocks) == depth and m.config.hidden_size == width


def test_respacing_matches_dit_create_diffusion():
    steps = space_timesteps(1000, "50")
    assert len(steps) == 50 and steps[:4] == [0, 20, 41, 61] and steps[-1] == 999
    s = NoiseSchedule.respaced(50)
    base = np.cumprod(1 - linear_betas())
    # the spaced process keeps exactly the kept timesteps' alpha-bars
    np.testing.assert_allclose(s.alphas_cumprod, base[s.timestep_map], rtol=1e-12)
    assert NoiseSchedule.respaced(1000).timestep_map.tolist() == list(range(1000))


def test_ddim_eta0_is_the_closed_form():
    s = NoiseSchedule.respaced(10)
    x, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    i = 5
    ab, abp = float(s.alphas_cumprod[i]), float(s.alphas_cumprod_prev[i])
    x0 = (x - (1 - ab) ** 0.5 * eps) / ab ** 0.5
    want = abp ** 0.5 * x0 + (1 - abp) ** 0.5 * eps
    assert torch.allclose(ddim_step(s, eps, x, i), want, atol=1e-5)


def test_ddpm_runs_with_learned_and_fixed_sigma():
    for learn_sigma in (True, False):
        m = tiny_dit(learn_sigma=learn_sigma)
        g = generate(m, [1, 2], [0, 1], steps=5, cfg_scale=1.5, method="ddpm")
        assert torch.isfinite(g.images).all()


def test_seeded_noise_is_batch_independent():
    m = tiny_dit()
    for method in ("ddim", "ddpm"):
        both = generate(m, [3, 5], [7, 8], steps=4, cfg_scale=2.0, method=method).images
        one = generate(m, [5], [8], steps=4, cfg_scale=2.0, method=method).images
        assert torch.allclose(both[1], one[0], atol=1e-4 * both.abs().max().item())


def test_cfg_follows_dit_convention():
    m = tiny_dit()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([500, 500]), torch.tensor([1, 2])
    with torch.no_grad():
        cond, uncond = m(x, t, y), m(x, t, torch.tensor([10, 10]))
        out3 = cfg_model_fn(m, y, 4.0)(x, t)
        outall = cfg_model_fn(m, y, 4.0, guide_channels=None)(x, t)
    guided = uncond + 4.0 * (cond - uncond)
    assert torch.allclose(out3[:, :3], guided[:, :3], atol=1e-4)
    assert torch.allclose(out3[:, 3:], cond[:, 3:], atol=1e-5)  # 4th eps channel and sigma: unguided
    assert torch.allclose(outall[:, :4], guided[:, :4], atol=1e-4)
    assert torch.allclose(outall[:, 4:], cond[:, 4:], atol=1e-5)


def test_sample_loop_calls_on_step_in_order():
    seen = []
    s = NoiseSchedule.respaced(4)
    sample_loop(lambda x, t: torch.zeros_like(x), s, torch.randn(1, 1, 4, 4), on_step=lambda k, x: seen.append(k))
    assert seen == [0, 1, 2, 3]


def test_embedded_model_loads_its_shipped_weights():
    from safetensors.torch import load_file
    from lazydit.core.models import _asset
    shipped = load_file(_asset("fmnist_dit.safetensors"))
    for m in (load_model("DiT-FMNIST"), load_model("DiT-FMNIST", None, input_size=None, num_classes=None)):
        assert m.config.depth >= 8 and m.config.in_channels == 1
        assert all(torch.equal(v, shipped[k]) for k, v in m.state_dict().items())
