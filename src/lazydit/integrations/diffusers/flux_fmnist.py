"""Flux-FMNIST: a tiny FLUX (double- and single-stream blocks) trained by rectified flow on
Fashion-MNIST, prompted by text ("a photo of a sneaker"), as a real diffusers `FluxPipeline`.

How it fits FluxPipeline without changing what the pipeline computes:
- The "VAE" is a fixed, exactly invertible space-to-depth by 2 (`PixelUnshuffleVAE`): 28x28x1 pixels
  in [-1, 1] <-> 14x14x4 latents. Its `config.block_out_channels` has two entries, so FluxPipeline's
  `vae_scale_factor` is 2, and its 2x2 packing makes 7x7 = 49 tokens of 16 channels. scaling_factor
  1 and shift_factor 0: the latents are the pixels, as DiT-FMNIST's are.
- Text: tiny frozen random CLIP (pooled vector) and T5 (tokens) with word-level tokenizers
  (`flux_fmnist_text`). The transformer is trained on `t5_len` T5 tokens; FluxPipeline pads to its
  `max_sequence_length` (default 512), so call it with `max_sequence_length=12`; a pre-hook refuses
  any other length in one line instead of sampling from a context the model never saw.
- Guidance: `guidance_embeds=False` (like FLUX.1-schnell): a guidance embedding has to be distilled
  from a CFG teacher, a second training run. Instead the recipe drops 10% of prompts to "" and the
  pipeline's true CFG uses it: `pipe(prompt, negative_prompt="", true_cfg_scale=s)`, two calls per step,
  each in its own `cache_context` ("cond"/"uncond"). `guidance_scale` is ignored.
- Scheduler: `FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)`. FLUX's
  resolution-dependent shift is tuned for 256-4096 tokens; at 49 tokens of 28x28 pixels there is little
  low-frequency redundancy to push the steps towards high noise for, so the noise schedule is FluxPipeline's
  plain linear sigmas 1 -> 1/N (then 0). The transformer reads `timestep` = sigma in [0, 1] (the
  pipeline passes timesteps / 1000; the model multiplies by 1000 inside).
"""
from __future__ import annotations

import importlib.resources
import json
import os
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from . import flux_fmnist_text as text
from .fmnist import Weightless

ASSET = "flux_fmnist.safetensors"
PARTS = ("transformer", "text_encoder", "text_encoder_2")  # key prefixes in the weights file


@dataclass
class FluxFMNISTConfig:
    num_layers: int = 2             # double-stream blocks (image and text streams, joint attention)
    num_single_layers: int = 4      # single-stream blocks (attention and MLP in parallel)
    num_heads: int = 4
    head_dim: int = 32              # hidden 128: a step at batch 128 near 1 s on one CPU thread (docs/assets.md)
    axes_dims_rope: tuple = (4, 14, 14)  # FLUX's (16, 56, 56) split scaled to the head dim: (unused, row, col)
    t5_dim: int = 64                # text encoders: tiny, frozen, random (flux_fmnist_text)
    clip_dim: int = 64
    text_layers: int = 2
    text_heads: int = 2
    t5_len: int = 12                # T5 tokens the transformer sees: the longest training prompt + </s>, rounded up
    clip_len: int = 12              # CLIP's max_position_embeddings (its pooled output ignores the padding)
    encoder_seed: int = 0           # makes the text encoders; they ship, so this only matters when first made
    shift: float = 1.0              # the sampler's sigma shift (see the module docstring)
    prompt_dropout: float = 0.1     # training: share of prompts replaced by "" for true CFG
    templates: tuple = text.TEMPLATES
    vocab: tuple = field(default_factory=lambda: tuple(text.build_vocab(text.training_prompts())))

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))  # tuples as lists, the form a JSON file holds

    @classmethod
    def from_dict(cls, d: dict) -> "FluxFMNISTConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class PixelUnshuffleVAE(Weightless):
    """A fixed "VAE" for pixel-space FLUX: encode is space-to-depth by 2, decode its exact inverse."""

    def __init__(self, channels: int = 1):
        # Two stages: FluxPipeline reads vae_scale_factor = 2 ** (len(block_out_channels) - 1) = 2.
        super().__init__(SimpleNamespace(block_out_channels=(channels, 4 * channels), in_channels=channels,
                                         latent_channels=4 * channels, scaling_factor=1.0, shift_factor=0.0))

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        z = F.pixel_unshuffle(x, 2)  # (B, 1, 28, 28) -> (B, 4, 14, 14); diffusers' retrieve_latents reads .latents
        return SimpleNamespace(latents=z) if return_dict else (z,)

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        x = F.pixel_shuffle(z, 2)    # (B, 4, 14, 14) -> (B, 1, 28, 28)
        return SimpleNamespace(sample=x) if return_dict else (x,)


def _require():
    try:
        import diffusers
    except ImportError:
        raise ImportError("diffusers is not installed; install it with `pip install 'lazydit[diffusers]'`") from None
    return diffusers


def build_transformer(cfg: FluxFMNISTConfig):
    """A `FluxTransformer2DModel` with random weights (torch's global RNG)."""
    d = _require()
    return d.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=cfg.num_layers, num_single_layers=cfg.num_single_layers,
        attention_head_dim=cfg.head_dim, num_attention_heads=cfg.num_heads, joint_attention_dim=cfg.t5_dim,
        pooled_projection_dim=cfg.clip_dim, guidance_embeds=False, axes_dims_rope=tuple(cfg.axes_dims_rope))


def assemble_pipeline(cfg: FluxFMNISTConfig, transformer, clip, t5):
    """A `FluxPipeline` from these components (transformer may be None: prompt encoding only)."""
    d = _require()
    vocab = list(cfg.vocab)
    pipe = d.FluxPipeline(
        scheduler=d.FlowMatchEulerDiscreteScheduler(shift=cfg.shift, use_dynamic_shifting=False),
        vae=PixelUnshuffleVAE(), text_encoder=clip, tokenizer=text.build_tokenizer(vocab, cfg.clip_len, bos=True),
        text_encoder_2=t5, tokenizer_2=text.build_tokenizer(vocab, cfg.t5_len, bos=False), transformer=transformer)
    if transformer is not None:
        transformer.register_forward_pre_hook(_refuse_other_text_length(cfg.t5_len), with_kwargs=True)
    return pipe


def _refuse_other_text_length(n: int):
    def check(module, args, kwargs):
        ctx = kwargs.get("encoder_hidden_states")
        if ctx is not None and ctx.shape[1] != n:
            raise ValueError(f"Flux-FMNIST reads {n} T5 tokens, got {ctx.shape[1]}; call the pipeline with "
                             f"max_sequence_length={n}")
    return check


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str], t5_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(T5 tokens (P, t5_len, t5_dim), CLIP pooled (P, clip_dim)) through FluxPipeline's own encode_prompt,
    so training sees exactly what sampling will."""
    emb, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=torch.device("cpu"),
                                        max_sequence_length=t5_len)
    return emb, pooled


def asset_path() -> str:
    return str(importlib.resources.files("lazydit") / "assets" / ASSET)


def save_flux_fmnist(path: str, cfg: FluxFMNISTConfig, transformer_state: dict, clip, t5, meta: dict) -> None:
    """One safetensors file: the three parts under their prefixes, the config (with the vocabulary
    and templates) in its metadata, so the file alone rebuilds the pipeline. Written atomically."""
    from safetensors.torch import save_file

    from ...io import atomic_path
    parts = {"transformer": transformer_state, "text_encoder": clip.state_dict(), "text_encoder_2": t5.state_dict()}
    # clone(): T5 ties its input embedding to `shared`, and safetensors refuses tensors sharing memory.
    tensors = {f"{p}.{k}": v.detach().clone().contiguous() for p, sd in parts.items() for k, v in sd.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"lazydit": json.dumps({"flux_fmnist": cfg.to_dict(), **meta})})


def load_flux_fmnist(path: str):
    """(cfg, transformer, clip, t5) from a file `save_flux_fmnist` wrote; strict loads."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    try:
        with safe_open(path, "pt") as f:
            cfg = FluxFMNISTConfig.from_dict(json.loads((f.metadata() or {})["lazydit"])["flux_fmnist"])
        tensors = load_file(path)
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(f"cannot read Flux-FMNIST weights {path} ({type(e).__name__}: {e})") from None
    transformer = build_transformer(cfg)
    clip, t5 = text.build_text_encoders(cfg, cfg.encoder_seed)  # shapes only: the file's weights replace them
    for name, module in zip(PARTS, (transformer, clip, t5)):
        module.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")},
                               strict=True)
    return cfg, transformer.eval().requires_grad_(False), clip, t5


def flux_fmnist_pipeline(weights: str | None = None, random_init: bool = False, cfg: FluxFMNISTConfig | None = None):
    """A diffusers `FluxPipeline` around Flux-FMNIST (28x28, prompted by class), built in memory;
    nothing downloads. `weights`: a file from `lazydit pretrain --model Flux-FMNIST` (default: the
    shipped asset). `random_init=True`: random transformer weights (of `cfg`), for tests.

        pipe(prompt="a photo of a sneaker", height=28, width=28, num_inference_steps=28,
             max_sequence_length=12, negative_prompt="", true_cfg_scale=3.0)
    """
    if random_init:
        cfg = cfg or FluxFMNISTConfig()
        transformer = build_transformer(cfg).eval().requires_grad_(False)
        clip, t5 = text.build_text_encoders(cfg, cfg.encoder_seed)
    else:
        path = weights or asset_path()
        if not os.path.isfile(path):
            raise ValueError(f"Flux-FMNIST weights {path} are missing" + (
                "" if weights else f" (the asset {ASSET} is missing from this install; see docs/assets.md)"))
        cfg, transformer, clip, t5 = load_flux_fmnist(path)
    return assemble_pipeline(cfg, transformer, clip, t5)
