"""diffusers support (the optional `diffusers` extra).

- Lazy targets for `DiTTransformer2DModel` and `PixArtTransformer2DModel`: `apply_lazy` wraps
  `transformer_blocks[i].attn1` and `.ff`. In diffusers' `BasicTransformerBlock` both receive the
  modulated hidden states, and their outputs are multiplied by gate_msa / gate_mlp afterwards, for
  norm_type "ada_norm_zero" (DiT) and "ada_norm_single" (PixArt) alike. PixArt's cross-attention
  `attn2` always computes.
- `dit_to_diffusers` / `diffusers_to_dit`: state dicts between our `DiT` (facebookresearch layout)
  and `DiTTransformer2DModel`.
- `DiffusersDiT`: a diffusers DiT behind lazydit's model interface (`forward(x, t, y)`, a `DiTConfig`),
  so `lazydit.pipeline.generate`, `cfg_model_fn` and `sample_loop` drive it unchanged.
- `scheduler_sample` / `sample_dit`: DiTPipeline's loop on a diffusers scheduler, stepping the
  lazy controller.

Registration is by class name, so importing this module never imports diffusers.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ..lazy.apply import get_controller, register_targets
from ..models.dit import DiTConfig, get_2d_sincos_pos_embed


def _require():
    try:
        import diffusers
    except ImportError:
        raise ImportError("diffusers is not installed; install it with `pip install 'lazydit[diffusers]'`") from None
    return diffusers


@register_targets("DiTTransformer2DModel")
@register_targets("PixArtTransformer2DModel")
def _basic_block_targets(model):
    blocks = model.transformer_blocks
    if any(getattr(b, "_chunk_size", None) is not None for b in blocks):
        # Chunked feed-forward calls `ff` once per slice, which would mix slices into the cache.
        raise ValueError("lazy gates cannot wrap a chunked feed-forward; call disable_forward_chunking() first")
    mods = [(i, k, getattr(b, a)) for i, b in enumerate(blocks) for k, a in (("attn", "attn1"), ("ffn", "ff"))]
    return mods, model.config.num_attention_heads * model.config.attention_head_dim


@register_targets("DiffusersDiT")
def _wrapper_targets(model):
    return _basic_block_targets(model.transformer)


# ---- configs ------------------------------------------------------------------------------
def diffusers_dit_kwargs(config: DiTConfig) -> dict:
    """`DiTTransformer2DModel(**kwargs)` arguments for the architecture of `config`."""
    if config.mlp_ratio != 4.0:
        raise ValueError(f"diffusers' DiT fixes the MLP ratio at 4, got {config.mlp_ratio}")
    if config.class_dropout_prob <= 0:
        raise ValueError("diffusers' DiT always has a null-class row; the DiT must have class_dropout_prob > 0")
    return dict(num_attention_heads=config.num_heads, attention_head_dim=config.hidden_size // config.num_heads,
                in_channels=config.in_channels, out_channels=config.out_channels, num_layers=config.depth,
                sample_size=config.input_size, patch_size=config.patch_size, activation_fn="gelu-approximate",
                num_embeds_ada_norm=config.num_classes, attention_bias=True, norm_type="ada_norm_zero",
                norm_elementwise_affine=False,
                norm_eps=1e-6)  # DiT's norm2 eps; diffusers' default 1e-5 would not match


def dit_config_from_diffusers(dcfg) -> DiTConfig:
    """Our `DiTConfig` for a `DiTTransformer2DModel.config`."""
    if dcfg.norm_type != "ada_norm_zero" or dcfg.activation_fn != "gelu-approximate" or not dcfg.attention_bias:
        raise ValueError(f"not a DiT-layout diffusers config (norm_type {dcfg.norm_type}, "
                         f"activation {dcfg.activation_fn}, attention_bias {dcfg.attention_bias})")
    out = dcfg.out_channels or dcfg.in_channels
    if out not in (dcfg.in_channels, 2 * dcfg.in_channels):
        raise ValueError(f"out_channels {out} is neither in_channels {dcfg.in_channels} nor twice it")
    return DiTConfig(depth=dcfg.num_layers, hidden_size=dcfg.num_attention_heads * dcfg.attention_head_dim,
                     num_heads=dcfg.num_attention_heads, patch_size=dcfg.patch_size, input_size=dcfg.sample_size,
                     in_channels=dcfg.in_channels, num_classes=dcfg.num_embeds_ada_norm,
                     learn_sigma=out == 2 * dcfg.in_channels)


def use_dit_timestep_embedding(transformer) -> None:
    """Make diffusers' DiT embed timesteps exactly as facebookresearch/DiT does.

    diffusers builds DiT's timestep projection with downscale_freq_shift=1, i.e. frequencies
    exp(-ln(1e4) i / (half - 1)); DiT divides by half. Official DiT weights were trained with the
    latter. The attribute is not saved in the diffusers config: call this again after loading.
    """
    for b in transformer.transformer_blocks:
        b.norm1.emb.time_proj.downscale_freq_shift = 0


def build_diffusers_dit(config: DiTConfig, dit_timestep_embedding: bool = True):
    """A randomly initialised `DiTTransformer2DModel` with the architecture of `config`."""
    model = _require().DiTTransformer2DModel(**diffusers_dit_kwargs(config))
    if dit_timestep_embedding:
        use_dit_timestep_embedding(model)
    return model


# ---- state dicts --------------------------------------------------------------------------
_TOP = {"x_embedder.proj": "pos_embed.proj", "final_layer.adaLN_modulation.1": "proj_out_1",
        "final_layer.linear": "proj_out_2"}
_BLOCK = {"attn.proj": "attn1.to_out.0", "mlp.fc1": "ff.net.0.proj", "mlp.fc2": "ff.net.2",
          "adaLN_modulation.1": "norm1.linear"}
# diffusers gives every block its own copy of the timestep and class embedders.
_EMB = {"t_embedder.mlp.0": "norm1.emb.timestep_embedder.linear_1",
        "t_embedder.mlp.2": "norm1.emb.timestep_embedder.linear_2"}
_LABELS = ("y_embedder.embedding_table.weight", "norm1.emb.class_embedder.embedding_table.weight")


def _pairs(depth: int) -> list[tuple[str, str]]:
    """(DiT key, diffusers key) of every 1:1 tensor; replicated embedders appear once per block."""
    wb = ("weight", "bias")
    pairs = [(f"{a}.{w}", f"{b}.{w}") for a, b in _TOP.items() for w in wb]
    for i in range(depth):
        o = f"transformer_blocks.{i}."
        pairs += [(f"blocks.{i}.{a}.{w}", f"{o}{b}.{w}") for a, b in _BLOCK.items() for w in wb]
        pairs += [(f"{a}.{w}", f"{o}{b}.{w}") for a, b in _EMB.items() for w in wb]
        pairs.append((_LABELS[0], o + _LABELS[1]))
    return pairs


def _check_keys(sd: dict, expected: set, what: str):
    missing, extra = sorted(expected - sd.keys()), sorted(sd.keys() - expected)
    if missing or extra:
        raise ValueError(f"not a {what} state dict: {len(missing)} missing (e.g. {missing[:1]}), "
                         f"{len(extra)} unexpected (e.g. {extra[:1]})")


def dit_to_diffusers(sd: dict, config: DiTConfig) -> dict:
    """facebookresearch/DiT state dict -> `DiTTransformer2DModel` state dict (pos_embed is recomputed there)."""
    diffusers_dit_kwargs(config)  # validates that diffusers can represent it
    pairs = _pairs(config.depth)
    qkv = [f"blocks.{i}.attn.qkv.{w}" for i in range(config.depth) for w in ("weight", "bias")]
    _check_keys(sd, {a for a, _ in pairs} | set(qkv) | {"pos_embed"}, "DiT")
    out = {b: sd[a].clone() for a, b in pairs}
    for key in qkv:  # rows of qkv are [q; k; v], as DiT's reshape(B, N, 3, H, hd) reads them
        i, w = key.split(".")[1], key.rsplit(".", 1)[1]
        for name, part in zip(("to_q", "to_k", "to_v"), sd[key].chunk(3, dim=0)):
            out[f"transformer_blocks.{i}.attn1.{name}.{w}"] = part.clone()
    return out


def diffusers_to_dit(sd: dict, config: DiTConfig) -> dict:
    """`DiTTransformer2DModel` state dict -> facebookresearch/DiT state dict.

    DiT has one timestep/class embedder, so every block's copy must equal block 0's.
    """
    pairs = _pairs(config.depth)
    qkv = {f"transformer_blocks.{i}.attn1.{n}.{w}" for i in range(config.depth)
           for n in ("to_q", "to_k", "to_v") for w in ("weight", "bias")}
    _check_keys(sd, {b for _, b in pairs} | qkv, "diffusers DiT")
    out = {}
    for a, b in pairs:
        if a in out and not torch.equal(out[a], sd[b]):
            raise ValueError(f"{b} differs from block 0's copy; DiT has a single timestep/class embedder")
        out.setdefault(a, sd[b].clone())
    for i in range(config.depth):
        for w in ("weight", "bias"):
            parts = [sd[f"transformer_blocks.{i}.attn1.{n}.{w}"] for n in ("to_q", "to_k", "to_v")]
            out[f"blocks.{i}.attn.qkv.{w}"] = torch.cat(parts, dim=0)
    grid = int(config.num_patches ** 0.5)
    pe = torch.from_numpy(get_2d_sincos_pos_embed(config.hidden_size, grid)).float()[None]
    out["pos_embed"] = pe.to(out["x_embedder.proj.weight"].dtype)
    return out


# ---- sampling -----------------------------------------------------------------------------
class DiffusersDiT(nn.Module):
    """A `DiTTransformer2DModel` with lazydit's model interface: `forward(x, t, y)` and `.config`."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer
        self.config = dit_config_from_diffusers(transformer.config)
        self.arch_name = f"diffusers-{type(transformer).__name__}"

    def forward(self, x, t, y):
        return self.transformer(x, timestep=t, class_labels=y, return_dict=False)[0]


def scheduler_sample(model_fn: Callable, scheduler, latents: torch.Tensor, num_inference_steps: int,
                     controller=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """DiTPipeline's denoising loop on any diffusers scheduler; returns the final latents.

    `model_fn(x, t)` gives the raw output; as in DiTPipeline only its first C channels (eps)
    reach `scheduler.step`. The controller, if any, is reset first and told each step index.
    """
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    timesteps = scheduler.timesteps
    if controller is not None:
        if controller.config.num_steps != len(timesteps):
            raise ValueError(f"the gates are for {controller.config.num_steps} steps, "
                             f"but the scheduler runs {len(timesteps)}")
        controller.reset()
    x, C = latents * scheduler.init_noise_sigma, latents.shape[1]
    extra = {} if generator is None else {"generator": generator}
    for k, t in enumerate(timesteps):
        if controller is not None:
            controller.set_step(k)
        with torch.no_grad():
            out = model_fn(scheduler.scale_model_input(x, t), t.reshape(1).expand(x.shape[0]))
        x = scheduler.step(out[:, :C], t, x, **extra).prev_sample
    return x


def sample_dit(transformer, scheduler, class_labels, latents: torch.Tensor, num_inference_steps: int = 50,
               guidance_scale: float = 4.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Class-conditional latents from a (lazy or plain) diffusers DiT, guiding every eps channel as
    DiTPipeline does. Decode them with the pipeline's VAE: `vae.decode(latents / vae.config.scaling_factor)`."""
    from ..pipeline import cfg_model_fn  # late: lazydit.pipeline imports lazydit.lazy, which imports this module
    dit = transformer if isinstance(transformer, DiffusersDiT) else DiffusersDiT(transformer)
    ctrl = get_controller(dit) or get_controller(dit.transformer)
    labels = torch.as_tensor(class_labels, dtype=torch.long, device=latents.device).reshape(-1)
    fn = cfg_model_fn(dit, labels, guidance_scale, guide_channels=None)
    return scheduler_sample(fn, scheduler, latents, num_inference_steps, ctrl, generator)
