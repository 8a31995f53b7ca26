"""Flux-FMNIST: the FluxPipeline builds offline and samples 28x28 images; its pretrain recipe
checkpoints, resumes exactly, refuses other options, and its export rebuilds the same pipeline."""
import re

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from lazydit.integrations.diffusers import flux_fmnist as ff  # noqa: E402
from lazydit.integrations.diffusers import flux_fmnist_text as text  # noqa: E402
from lazydit.train.pretrain import PretrainConfig, pretrain  # noqa: E402
from test_pretrain import fake_fmnist  # noqa: E402

TINY = ff.FluxFMNISTConfig(num_layers=1, num_single_layers=1, num_heads=2, head_dim=16, axes_dims_rope=(4, 6, 6),
                           t5_dim=16, clip_dim=16, text_layers=1, text_heads=2)
CALL = dict(height=28, width=28, num_inference_steps=3, max_sequence_length=12, output_type="pt")


def _gen(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def _randomize(module, seed=0):
    """Random weights everywhere: a zero-initialised output layer would hide a broken sampler."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module


def test_pipeline_builds_offline_and_samples_28x28():
    torch.set_num_threads(1)
    pipe = ff.flux_fmnist_pipeline(random_init=True, cfg=TINY)
    _randomize(pipe.transformer)
    assert pipe.vae_scale_factor == 2 and pipe.tokenizer_max_length == TINY.clip_len
    out = pipe(prompt=["a photo of a sneaker", "a bag"], negative_prompt="", true_cfg_scale=3.0,
               generator=_gen(2), **CALL).images
    assert out.shape == (2, 1, 28, 28) and torch.isfinite(out).all()
    assert out.std() > 0.01 and not torch.equal(out[0], out[1])  # prompts and noise both reach the image
    pil = pipe(prompt="A photo of a Sneaker", **{**CALL, "output_type": "pil"}).images[0]
    assert pil.size == (28, 28) and pil.mode == "L"
    with pytest.raises(ValueError, match="reads 12 T5 tokens, got 512; call the pipeline with max_sequence_length=12"):
        pipe(prompt="a bag", **{k: v for k, v in CALL.items() if k != "max_sequence_length"})


def test_prompts_tokenize_without_unknown_words_and_fit_the_text_length():
    cfg = ff.FluxFMNISTConfig()
    for bos, n in ((True, cfg.clip_len), (False, cfg.t5_len)):
        tok = text.build_tokenizer(list(cfg.vocab), n, bos=bos)
        for p in text.training_prompts():
            ids = tok(p).input_ids
            assert len(ids) <= n and tok.unk_token_id not in ids, p
            assert ids[-1] == tok.eos_token_id and (ids[0] == tok.bos_token_id) == bos
    assert text.DEFAULT_PROMPTS[7] == "a photo of a sneaker" and text.DEFAULT_PROMPTS[9] == "a photo of an ankle boot"


def test_vae_round_trips_pixels_exactly_and_packs_as_the_pipeline_unpacks():
    from diffusers import FluxPipeline
    vae = ff.PixelUnshuffleVAE()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    z = vae.encode(x).latents
    assert z.shape == (3, 4, 14, 14) and torch.equal(vae.decode(z).sample, x)
    assert torch.equal(z[:, :, 0, 0], x[:, 0, :2, :2].reshape(3, 4))  # space-to-depth: a 2x2 block is one latent pixel
    packed = FluxPipeline._pack_latents(z, 3, 4, 14, 14)  # (3, 49, 16): what the transformer sees
    assert packed.shape == (3, 49, 16)
    assert torch.equal(FluxPipeline._unpack_latents(packed, 28, 28, 2), z)


def _common(tmp_path, **kw):
    return dict(model="Flux-FMNIST", data_dir=fake_fmnist(tmp_path / "data"), batch_size=4, warmup=2, ckpt_every=2,
                threads=1, **kw)


def test_flux_pretrain_resumes_exactly_refuses_changes_and_exports_the_pipeline(tmp_path):
    from safetensors.torch import load_file
    common = _common(tmp_path)
    full = pretrain(PretrainConfig(out_dir=str(tmp_path / "a"), steps=3, **common), TINY)
    pretrain(PretrainConfig(out_dir=str(tmp_path / "b"), steps=2, **common), TINY)  # "killed" at 2
    ckpt = tmp_path / "b" / "checkpoint.safetensors"
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match=re.escape("lr: 0.0005 -> 0.001")):
        pretrain(PretrainConfig(out_dir=str(tmp_path / "b"), steps=3, **{**common, "lr": 1e-3}), TINY, resume=True)
    with pytest.raises(ValueError, match="another model.*num_single_layers: 1 -> 2"):
        other = ff.FluxFMNISTConfig(**{**vars(TINY), "num_single_layers": 2})
        pretrain(PretrainConfig(out_dir=str(tmp_path / "b"), steps=3, **common), other, resume=True)
    with pytest.raises(ValueError, match="another model \\(Flux-FMNIST -> DiT-FMNIST\\)"):
        pretrain(PretrainConfig(out_dir=str(tmp_path / "b"), steps=3, **{**common, "model": "DiT-FMNIST"}),
                 resume=True)
    assert ckpt.read_bytes() == before  # refused before anything was written
    torch.manual_seed(99)  # a new process starts from another RNG state
    resumed = pretrain(PretrainConfig(out_dir=str(tmp_path / "b"), steps=3, **common), TINY, resume=True)
    a, b = load_file(full), load_file(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert {k.split(".")[0] for k in a} == set(ff.PARTS)

    # The export alone rebuilds the pipeline: the same images as the trained weights put in by hand.
    pipe = ff.flux_fmnist_pipeline(weights=full)
    transformer = ff.build_transformer(TINY)
    transformer.load_state_dict({k[12:]: v for k, v in a.items() if k.startswith("transformer.")})
    clip, t5 = text.build_text_encoders(TINY, TINY.encoder_seed)
    by_hand = ff.assemble_pipeline(TINY, transformer.eval(), clip, t5)
    kw = dict(prompt=["a photo of a coat", "a dress"], negative_prompt="", true_cfg_scale=2.0, **CALL)
    x = pipe(generator=_gen(2), **kw).images
    assert torch.isfinite(x).all() and torch.equal(x, by_hand(generator=_gen(2), **kw).images)
    trained = ff.build_transformer(TINY).state_dict()  # the export is not a random (or zero) init
    assert not torch.equal(a["transformer.proj_out.weight"], torch.zeros_like(trained["proj_out.weight"]))


def test_training_embeddings_are_the_pipelines():
    from lazydit.train.pretrain_flux import FluxRecipe
    pipe = ff.flux_fmnist_pipeline(random_init=True, cfg=TINY)
    recipe = FluxRecipe.__new__(FluxRecipe)  # only its prompt table, without loading Fashion-MNIST
    recipe.mcfg, recipe.clip, recipe.t5 = TINY, pipe.text_encoder, pipe.text_encoder_2
    recipe._encode()
    emb, pooled, _ = pipe.encode_prompt(prompt=text.prompt_for(7, 2), prompt_2=None, max_sequence_length=12)
    row = 7 * len(TINY.templates) + 2
    assert torch.equal(recipe.emb[row], emb[0]) and torch.equal(recipe.pooled[row], pooled[0])
    assert recipe.emb.shape == (10 * len(TINY.templates) + 1, 12, TINY.t5_dim)


def test_missing_weights_and_unknown_model_fail_in_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"Flux-FMNIST weights .*nope.safetensors are missing$"):
        ff.flux_fmnist_pipeline(weights=str(tmp_path / "nope.safetensors"))
    with pytest.raises(ValueError, match="unknown model 'Flux'; choose from DiT-FMNIST, Flux-FMNIST"):
        PretrainConfig(model="Flux").validate()
    with pytest.raises(ValueError, match="not found"):  # no data: the loader's one-line hint
        pretrain(PretrainConfig(model="Flux-FMNIST", data_dir=str(tmp_path), out_dir=str(tmp_path / "o"), steps=1))
    from lazydit.cli import main
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--model", "Flux", "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert not np.any([p.name == "o" for p in tmp_path.iterdir()])


def test_training_target_and_pipeline_sampler_agree_on_the_flow_convention(tmp_path):
    """Data of one image x*: its exact velocity field, (x_t - x*) / t, has zero training loss under the
    recipe, and FluxPipeline's Euler sampler driven by it lands on x*. A flipped sign, another time
    convention (t vs 1 - t, sigma vs sigma * 1000) or another packing fails one of the two."""
    from lazydit.train.pretrain_flux import FluxRecipe
    from test_data import idx_bytes, write
    img = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    (tmp_path / "one").mkdir()
    write(tmp_path / "one" / "train-images-idx3-ubyte", idx_bytes(np.stack([img] * 8)), gz=False)
    write(tmp_path / "one" / "train-labels-idx1-ubyte", idx_bytes(np.arange(8, dtype=np.uint8)), gz=False)
    recipe = FluxRecipe(PretrainConfig(model="Flux-FMNIST", data_dir=str(tmp_path / "one")), TINY)
    target = recipe.z_all[:1]  # (1, 49, 16): x* as the transformer sees it

    def exact_velocity(module, args, kwargs, output):
        t = kwargs["timestep"][:, None, None]
        return ((kwargs["hidden_states"] - target) / t,)

    transformer = ff.build_transformer(TINY)
    transformer.register_forward_hook(exact_velocity, with_kwargs=True)
    assert recipe.loss(transformer, 8).item() < 1e-8
    pipe = ff.assemble_pipeline(TINY, transformer, recipe.clip, recipe.t5)
    out = pipe(prompt="a bag", generator=_gen(1), **CALL).images  # (1, 1, 28, 28) in [0, 1]
    want = torch.from_numpy(img).float().div(255)
    assert torch.allclose(out[0, 0], want, atol=1e-5)


def test_a_dit_checkpoint_from_before_the_model_option_still_resumes(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from test_pretrain import TINY as DIT_TINY
    common = dict(data_dir=fake_fmnist(tmp_path / "data"), batch_size=4, warmup=2, ckpt_every=2, threads=1,
                  out_dir=str(tmp_path / "r"))
    pretrain(PretrainConfig(steps=2, **common), DIT_TINY)
    ckpt = str(tmp_path / "r" / "checkpoint.safetensors")
    with safe_open(ckpt, "pt") as f:
        meta = json.loads(f.metadata()["lazydit"])
    del meta["config"]["model"]  # as written before Flux-FMNIST existed
    save_file(load_file(ckpt), ckpt, metadata={"lazydit": json.dumps(meta)})
    pretrain(PretrainConfig(steps=4, **common), DIT_TINY, resume=True)
    with pytest.raises(ValueError, match="another model \\(DiT-FMNIST -> Flux-FMNIST\\)"):
        pretrain(PretrainConfig(steps=6, **{**common, "model": "Flux-FMNIST"}), TINY, resume=True)


def test_a_checkpoints_debiased_ema_is_what_the_export_holds(tmp_path):
    from safetensors.torch import load_file

    from lazydit.eval.flux_fmnist import pipeline_from_checkpoint
    out = pretrain(PretrainConfig(out_dir=str(tmp_path / "a"), steps=2, **_common(tmp_path)), TINY)
    pipe, step = pipeline_from_checkpoint(str(tmp_path / "a" / "checkpoint.safetensors"))
    exported = load_file(out)
    assert step == 2
    for name in ff.PARTS:
        sd = getattr(pipe, name).state_dict()
        assert all(torch.equal(v, exported[f"{name}.{k}"]) for k, v in sd.items()), name


def test_the_shipped_model_draws_the_prompted_classes():
    """The shipped Flux-FMNIST, offline through the standard pipe(...) call: the shipped classifier
    recognises the prompted class (95% on 200 images at true CFG 3, docs/assets.md; 20 here)."""
    from lazydit.integrations.diffusers.fit import open_pipeline
    from lazydit.metrics.quality import class_accuracy
    pipe, call, prompts = open_pipeline("Flux-FMNIST")
    gens = [torch.Generator().manual_seed(3_000_000 + i) for i in range(20)]
    with torch.no_grad():
        x = pipe(prompt=[prompts[i % 10] for i in range(20)], generator=gens, num_inference_steps=28,
                 output_type="pt", **call).images
    assert x.shape == (20, 1, 28, 28) or x.shape == (20, 3, 28, 28)
    acc = class_accuracy(x[:, :1] * 2 - 1, torch.tensor([i % 10 for i in range(20)]))
    assert acc >= 0.75, acc
