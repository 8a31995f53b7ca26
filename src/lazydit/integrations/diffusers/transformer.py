"""The diffusers transformer under lazydit (`DiTTransformer2DModel`, `PixArtTransformer2DModel`).

- Lazy targets: `apply_lazy` wraps `transformer_blocks[i].attn1` and `.ff`. In diffusers'
  `BasicTransformerBlock` both receive the modulated hidden states, and their outputs are multiplied
  by gate_msa / gate_mlp afterwards, for norm_type "ada_norm_zero" (DiT) and "ada_norm_single"
  (PixArt) alike. PixArt's cross-attention `attn2` always computes. The families of `families` are
  registered here too, each with the step guard below.
- `dit_to_diffusers` / `diffusers_to_dit`: state dicts between our `DiT` (facebookresearch layout)
  and `DiTTransformer2DModel`.
- `DiffusersDiT`: a diffusers DiT behind lazydit's model interface (`forward(x, t, y)`, a `DiTConfig`),
  so `lazydit.pipeline.generate`, `cfg_model_fn` and `sample_loop` drive it unchanged.
- `scheduler_sample` / `sample_dit`: DiTPipeline's loop on a diffusers scheduler, stepping the
  lazy controller.

Registration is by class name, so importing this module never imports diffusers. `lazydit.core.lazy`
does not import it; `lazy_targets` imports the package `lazydit.integrations.diffusers` on first
sight of a model class from the diffusers package.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ...core.diffusion.samplers import denoise
from ...core.lazy.apply import get_controller, register_targets
from ...core.models.dit import DiTConfig, get_2d_sincos_pos_embed
from ...pipeline import cfg_model_fn
from .families import SITES, blocks, family_targets


def _require():
    try:
        import diffusers
    except ImportError:
        raise ImportError("diffusers is not installed; install it with `pip install 'lazydit[diffusers]'`") from None
    return diffusers


@register_targets("DiTTransformer2DModel")
@register_targets("PixArtTransformer2DModel")
def _basic_block_targets(model, owner=None):
    """The wrapped modules of a diffusers transformer. `owner` is the model the controller is
    attached to: the transformer itself, or a `DiffusersDiT` around it."""
    owner = model if owner is None else owner
    blocks = model.transformer_blocks
    if any(getattr(b, "_chunk_size", None) is not None for b in blocks):
        # Chunked feed-forward calls `ff` once per slice, which would mix slices into the cache.
        raise ValueError("lazy gates cannot wrap a chunked feed-forward; call disable_forward_chunking() first")
    mods = [(i, k, getattr(b, a)) for i, b in enumerate(blocks) for k, a in (("attn", "attn1"), ("ffn", "ff"))]
    if get_controller(owner) is None and any(hasattr(m, "_lazydit_orig_forward") for _, _, m in mods):
        # Gates on the transformer and on a wrapper around it would wrap each module twice.
        raise ValueError(f"this {type(model).__name__} already has lazy gates (attached to it or to a "
                         f"DiffusersDiT around it); call remove_lazy on that model first")
    _install_guard(model)
    return mods, model.config.num_attention_heads * model.config.attention_head_dim


@register_targets("DiffusersDiT")
def _wrapper_targets(model):
    return _basic_block_targets(model.transformer, owner=model)


def _install_guard(transformer):
    """A forward pre-hook, installed once, that refuses the two silent failures of a gated
    transformer: nothing advancing the controller's step (e.g. `pipe(...)` after plain
    `apply_lazy`, which would run every step at step 0, i.e. full compute), and feed-forward
    chunking switched on after the gates were attached (each chunk would overwrite the cache)."""
    if getattr(transformer, "_lazydit_guard", None) is None:
        handle = transformer.register_forward_pre_hook(_guard, with_kwargs=True)
        object.__setattr__(transformer, "_lazydit_guard", handle)  # not a submodule: state_dict unchanged


@torch.compiler.disable  # host bookkeeping: traced, it would specialise the compiled transformer on every step
def _guard(module, args, kwargs):
    ctrl = get_controller(module)
    if ctrl is None or getattr(module, "_lazydit_stepper", None) is not None or not ctrl.state.active:
        return None
    if any(getattr(b, "_chunk_size", None) is not None for b in _blocks(module)):
        raise ValueError("feed-forward chunking was enabled after the lazy gates were attached; "
                         "call disable_forward_chunking() (chunking and gates cannot be combined)")
    step, t = ctrl.state.step, _timestep_arg(module, args, kwargs)
    if torch.is_tensor(step) or t is None:
        return None
    t = torch.as_tensor(t)
    last = getattr(module, "_lazydit_last", None)
    # One step index always means one timestep; a new timestep at the same index means that
    # nothing calls set_step, so every forward would run as the first step (full compute). The
    # timesteps are read to the host only when a step index repeats: a sampler that steps the
    # controller never pays a host sync here.
    if last is not None and last[0] is ctrl.state and last[1] == step:
        was, now = float(last[2].reshape(-1)[0]), float(t.reshape(-1)[0])
        if was != now:
            raise ValueError(f"the lazy gates stayed at step {step} while the timestep changed from {was:g} to "
                             f"{now:g}: nothing advances them. For pipe(...) use "
                             f"lazydit.integrations.diffusers.apply_lazy_to_pipeline(pipe, gates); "
                             f"for your own loop call controller.set_step(k) before each step")
    object.__setattr__(module, "_lazydit_last", (ctrl.state, step, t))
    return None


def _blocks(transformer) -> list:
    return blocks(transformer) if type(transformer).__name__ in SITES else list(transformer.transformer_blocks)


def _timestep_arg(module, args, kwargs):
    """The `timestep` argument of a diffusers transformer's forward, given by keyword or position."""
    if "timestep" in kwargs:
        return kwargs["timestep"]
    import inspect
    names = list(inspect.signature(type(module).forward).parameters)[1:]  # without self
    i = names.index("timestep") if "timestep" in names else len(args)
    return args[i] if i < len(args) else None


def _guarded_family_targets(model):
    """FLUX, SD3, Qwen-Image, Wan and HunyuanVideo: their sites (`families`), then the guard."""
    targets = family_targets(model)
    _install_guard(model)
    return targets


for _name in SITES:
    register_targets(_name)(_guarded_family_targets)


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


def dit_arch_name(config: DiTConfig) -> str:
    """The one gate-file arch label of a DiT architecture, however the model is wrapped (lazydit's
    `DiT`, a `DiTTransformer2DModel`, a `DiffusersDiT`): the shipped model's name, else the zoo
    name of its size and patch, else "DiT". Gate files also record depth and width."""
    from ...core.models import EMBEDDED, embedded_config
    from ...core.models.dit import DIT_ZOO
    arch = ("depth", "hidden_size", "num_heads", "patch_size")
    shape = arch + ("input_size", "in_channels", "num_classes", "learn_sigma", "mlp_ratio")
    if all(getattr(config, f) == getattr(embedded_config(), f) for f in shape):
        return EMBEDDED
    return next((name for name, c in DIT_ZOO.items() if all(getattr(config, f) == getattr(c, f) for f in arch)), "DiT")


def transformer_arch_name(transformer) -> str:
    """`dit_arch_name` for a DiT-layout diffusers transformer, else its class name (e.g. PixArt)."""
    try:
        return dit_arch_name(dit_config_from_diffusers(transformer.config))
    except (AttributeError, ValueError):  # not a DiT layout
        return type(transformer).__name__


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
        self.arch_name = dit_arch_name(self.config)

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
    check_ddim_stride(scheduler)
    if controller is not None:
        if controller.config.num_steps != len(timesteps):
            raise ValueError(f"the gates are for {controller.config.num_steps} steps, "
                             f"but the scheduler runs {len(timesteps)}")
        controller.reset()
    x, C = latents * scheduler.init_noise_sigma, latents.shape[1]
    extra = {} if generator is None else {"generator": generator}

    def call(x, t):
        return model_fn(scheduler.scale_model_input(x, t), t.reshape(1).expand(x.shape[0]))

    def update(k, out, x):
        return scheduler.step(out[:, :C], timesteps[k], x, **extra).prev_sample
    on_step = (lambda k, _x: controller.set_step(k)) if controller is not None else None
    return denoise(call, x, list(timesteps), update, on_step)


def ddim_stride_trap(scheduler) -> bool:
    """True when a DDIM-family scheduler would step between timesteps that are not consecutive in
    its own list: diffusers' DDIMScheduler always steps to t - num_train_timesteps // N, which
    only equals the next listed timestep when the list is evenly spaced by exactly that stride
    (e.g. "leading" spacing; not "linspace"/"trailing" when N does not divide 1000)."""
    if not type(scheduler).__name__.startswith("DDIM"):
        return False
    ts = [int(t) for t in scheduler.timesteps]
    stride = scheduler.config.num_train_timesteps // len(ts)
    return any(a - b != stride for a, b in zip(ts, ts[1:]))


def check_ddim_stride(scheduler) -> None:
    if ddim_stride_trap(scheduler):
        n = len(scheduler.timesteps)
        raise ValueError(f"{type(scheduler).__name__} with {n} steps and timestep_spacing="
                         f"{scheduler.config.timestep_spacing!r} steps by {scheduler.config.num_train_timesteps // n}, "
                         f"not to its next listed timestep (about 12 dB lost at 36 steps); use timestep_spacing="
                         f"'leading', or EulerDiscreteScheduler (the DDIM update along its own list; see docs/evaluation.md)")


def sample_dit(transformer, scheduler, class_labels, latents: torch.Tensor, num_inference_steps: int = 50,
               guidance_scale: float = 4.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Class-conditional latents from a (lazy or plain) diffusers DiT, guiding every eps channel as
    DiTPipeline does. Decode them with the pipeline's VAE: `vae.decode(latents / vae.config.scaling_factor)`."""
    dit = transformer if isinstance(transformer, DiffusersDiT) else DiffusersDiT(transformer)
    ctrl = get_controller(dit) or get_controller(dit.transformer)
    labels = torch.as_tensor(class_labels, dtype=torch.long, device=latents.device).reshape(-1)
    guided = cfg_model_fn(dit, labels, guidance_scale, guide_channels=None)
    dtype = next(dit.parameters()).dtype
    if dtype == latents.dtype:
        fn = guided
    else:
        # A half-precision transformer: it gets latents in its dtype, the scheduler keeps stepping
        # in the latents' own precision (as DiTPipeline would with fp32 latents).
        def fn(x, t):
            return guided(x.to(dtype), t).to(latents.dtype)
    return scheduler_sample(fn, scheduler, latents, num_inference_steps, ctrl, generator)
