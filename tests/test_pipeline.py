"""Lazy gates through the standard diffusers call: `apply_lazy_to_pipeline(pipe, gates)`, then `pipe(...)`,
for DiTPipeline and the PixArt pipelines (tiny random models built offline)."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from test_large_dit import randomize  # noqa: E402
from lazydit.integrations.diffusers import (apply_lazy_to_pipeline, build_diffusers_dit,  # noqa: E402
                                            remove_lazy_from_pipeline, sample_dit, scheduler_sample)
from lazydit.core.lazy import apply_lazy, remove_lazy, save_gates  # noqa: E402
from lazydit.core.models.dit import DiTConfig  # noqa: E402

torch.set_num_threads(1)
N = 5  # divides 1000: DDIMScheduler steps to its next listed timestep


def _vae():
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                                   up_block_types=("UpDecoderBlock2D",), layers_per_block=1, latent_channels=4,
                                   norm_num_groups=8, sample_size=8).eval()


def _dit_pipe():
    # DiTPipeline hard-codes the null class 1000, so the tiny DiT has ImageNet's 1000 classes.
    cfg = DiTConfig(depth=2, hidden_size=32, num_heads=2, patch_size=2, input_size=8, num_classes=1000)
    return diffusers.DiTPipeline(transformer=randomize(build_diffusers_dit(cfg)), vae=_vae(),
                                 scheduler=diffusers.DDIMScheduler())


def _random_gates(ctrl, seed=0, std=0.05):
    """Gates whose decisions differ between rows, steps and modules."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ctrl.attn.copy_(torch.randn(ctrl.attn.shape, generator=g) * std)
        ctrl.ffn.copy_(torch.randn(ctrl.ffn.shape, generator=g) * std)


def _dit_call(pipe, steps=N):
    return pipe(class_labels=[1, 2], num_inference_steps=steps, guidance_scale=3.0, output_type="pt",
                generator=torch.Generator().manual_seed(0)).images


def test_dit_pipe_call_equals_sample_dit_bit_for_bit():
    pipe = _dit_pipe()
    full = _dit_call(pipe)
    ctrl = apply_lazy_to_pipeline(pipe, num_inference_steps=N)
    _random_gates(ctrl)
    lazy = _dit_call(pipe)
    st = ctrl.stats()
    assert st.steps_run == N and 0.1 < st.ratio() < 0.9 and st.skips.shape[-1] == 4  # 2 images, CFG rows
    assert (lazy - full).abs().max() > 1e-4  # the skips took effect
    assert torch.equal(_dit_call(pipe), lazy)  # every call is a fresh generation (reset at the first timestep)
    # lazydit's own diffusers loop, same transformer, scheduler and noise: the same bits.
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out = sample_dit(pipe.transformer, pipe.scheduler, [1, 2], latents, N, guidance_scale=3.0)
    img = (pipe.vae.decode(1 / pipe.vae.config.scaling_factor * out).sample / 2 + 0.5).clamp(0, 1)
    assert torch.equal(img, lazy) and torch.equal(ctrl.stats().skips, st.skips)
    # After the last step the controller is finished: a direct call computes everything.
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([500, 500]), torch.tensor([1, 2])
    with torch.no_grad():
        direct = pipe.transformer(x, timestep=t, class_labels=y).sample
    assert remove_lazy_from_pipeline(pipe) is ctrl
    with torch.no_grad():
        assert torch.equal(pipe.transformer(x, timestep=t, class_labels=y).sample, direct)
    assert torch.equal(_dit_call(pipe), full)


def test_pipe_refuses_other_timesteps_than_the_gates(tmp_path):
    pipe = _dit_pipe()
    ctrl = apply_lazy_to_pipeline(pipe, num_inference_steps=N)
    _random_gates(ctrl)
    _dit_call(pipe)
    path = str(tmp_path / "g.safetensors")
    save_gates(ctrl, path)  # records the scheduler's timesteps and class
    remove_lazy_from_pipeline(pipe)
    assert apply_lazy_to_pipeline(pipe, path).meta["timesteps"] == [800, 600, 400, 200, 0]
    with pytest.raises(ValueError, match=f"gates are for {N} steps, but pipe.scheduler"):
        _dit_call(pipe, steps=4)
    pipe.scheduler = diffusers.DDIMScheduler(timestep_spacing="trailing")  # 999, 799, ...: other noise levels
    with pytest.raises(ValueError, match="gates were made for timesteps .800.*runs .999"):
        _dit_call(pipe)
    remove_lazy_from_pipeline(pipe)
    # A gate file of lazydit's own sampler (no recorded timesteps): its DiT respacing is expected.
    ctrl.meta.pop("timesteps")
    save_gates(ctrl, path)
    ctrl = apply_lazy_to_pipeline(pipe, path)
    pipe.scheduler = diffusers.DDIMScheduler(timestep_spacing="linspace")  # 999, 749, ...: DiT's respacing
    with pytest.warns(UserWarning, match="not to its next listed timestep"):
        _dit_call(pipe)
    pipe.scheduler = diffusers.DDIMScheduler()
    with pytest.raises(ValueError, match="timestep_spacing='linspace'"):
        _dit_call(pipe)
    pipe.scheduler = diffusers.EulerDiscreteScheduler(timestep_spacing="linspace")  # 999, 749.25, ...: accepted
    _dit_call(pipe)
    assert ctrl.stats().steps_run == N


def test_pipe_after_plain_apply_lazy_is_refused_not_silently_full():
    pipe = _dit_pipe()
    apply_lazy(pipe.transformer, N)
    with pytest.raises(ValueError, match="nothing advances them.*apply_lazy_to_pipeline"):
        _dit_call(pipe)
    remove_lazy(pipe.transformer)
    _dit_call(pipe)  # no gates: the guard stays silent


# ---- PixArt ------------------------------------------------------------------------------------
def _text_encoder():
    """A tiny random T5 encoder and a word-level tokenizer, both built offline."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = ["<pad>", "</s>", "<unk>", "a", "red", "cat", "blue", "dog", "blurry"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                     unk_token="<unk>")
    torch.manual_seed(0)
    enc = transformers.T5EncoderModel(transformers.T5Config(vocab_size=len(words), d_model=16, d_kv=8, d_ff=32,
                                                            num_layers=1, num_heads=2)).eval()
    return tokenizer, enc


@pytest.mark.parametrize("cls", ["PixArtAlphaPipeline", "PixArtSigmaPipeline"])
def test_pixart_pipe_call_is_lazy_and_cross_attention_computes(cls):
    tokenizer, enc = _text_encoder()
    pix = randomize(diffusers.PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=16, caption_channels=16, sample_size=8, patch_size=2))
    pipe = getattr(diffusers, cls)(tokenizer=tokenizer, text_encoder=enc, vae=_vae(), transformer=pix,
                                   scheduler=diffusers.DDIMScheduler())
    kw = dict(prompt=["a red cat", "a blue dog"], negative_prompt="blurry", num_inference_steps=N,
              guidance_scale=3.0, output_type="latent", use_resolution_binning=False, max_sequence_length=6,
              clean_caption=False)
    full = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    ctrl = apply_lazy_to_pipeline(pipe, num_inference_steps=N)
    _random_gates(ctrl, std=0.2)
    calls = []
    hooks = [b.attn2.register_forward_hook(lambda *a: calls.append(1)) for b in pix.transformer_blocks]
    lazy = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    for h in hooks:
        h.remove()
    st = ctrl.stats()
    assert st.steps_run == N and 0.1 < st.ratio("attn") < 0.9 and 0.1 < st.ratio("ffn") < 0.9
    assert len(calls) == 2 * N  # cross-attention: every layer, every step
    assert (lazy - full).abs().max() > 1e-4
    # The same loop, driven by lazydit's own controller stepping: the same bits.
    with torch.no_grad():  # as in pipe(...): the encoder's kernels differ in the last bit with autograd on
        pe, pm, ne, nm = pipe.encode_prompt(kw["prompt"], negative_prompt="blurry", max_sequence_length=6)
    emb, mask = torch.cat([ne, pe]), torch.cat([nm, pm])

    def fn(x, t):
        out = pix(torch.cat([x, x]), encoder_hidden_states=emb, encoder_attention_mask=mask, timestep=torch.cat([t, t]),
                  added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
        uncond, text = out.chunk(2)
        return uncond + 3.0 * (text - uncond)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = scheduler_sample(fn, pipe.scheduler, latents, N, controller=ctrl)
    assert torch.equal(ref, lazy) and torch.equal(ctrl.stats().skips, st.skips)
