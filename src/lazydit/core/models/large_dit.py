"""Large-DiT (DiT-Llama, Alpha-VLLM LLaMA2-Accessory "Large-DiT-ImageNet") in its checkpoint layout.

A DiT whose blocks are LLaMA blocks: RMSNorm, bias-free attention with LayerNorm'd q/k and 1D
rotary embeddings over the token index, and a SwiGLU feed-forward. The conditioning (timestep +
class) lives at width min(dim, 1024), so the 3B and 7B adaLN layers project up from 1024.

Nothing here knows about lazy sampling: `lazydit.core.lazy` wraps `layers[i].attention` and
`layers[i].feed_forward`, which see the modulated input Z and return F(Z) before the gate
multiply, exactly as in the reference block.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dit import DiT, DiTConfig, LabelEmbedder, TimestepEmbedder, modulate


@dataclass(frozen=True)
class LargeDiTConfig:
    depth: int = 32                  # number of LLaMA blocks (the reference's n_layers)
    hidden_size: int = 4096          # token width D (the reference's dim)
    num_heads: int = 32              # query heads; D must divide evenly
    num_kv_heads: int | None = None  # key/value heads for GQA; None means num_heads (all released models)
    patch_size: int = 2              # side of a square patch, in latents
    input_size: int = 32             # side of the latent image; 32 = 256px through the SD VAE
    in_channels: int = 4             # SD-VAE latent channels
    num_classes: int = 1000          # the null (CFG) class is index num_classes
    learn_sigma: bool = True         # output 2*C channels (eps, variance interpolation) as in DiT
    qk_norm: bool = True             # LayerNorm on q and k; the released 3B/7B were trained with --qk_norm
    multiple_of: int = 256           # SwiGLU hidden width is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None  # optional extra scale of the SwiGLU width (unused upstream)
    norm_eps: float = 1e-5           # RMSNorm epsilon of attention_norm / ffn_norm
    rope_theta: float = 10000.0      # rotary base
    class_dropout_prob: float = 0.1  # label dropout during training, gives the unconditional model

    # Derived exactly as for DiT (properties are plain objects, so they can be shared).
    out_channels = DiTConfig.out_channels
    num_patches = DiTConfig.num_patches

    @property
    def cond_size(self) -> int:
        """Width of the timestep/class embedding and of every adaLN input."""
        return min(self.hidden_size, 1024)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def ffn_hidden(self) -> int:
        # LLaMA's rule: 2/3 of 4*D (SwiGLU has three matrices), optionally scaled, rounded up.
        h = int(2 * 4 * self.hidden_size / 3)
        if self.ffn_dim_multiplier is not None:
            h = int(self.ffn_dim_multiplier * h)
        return self.multiple_of * ((h + self.multiple_of - 1) // self.multiple_of)

    def to_dict(self) -> dict:
        return asdict(self)


# The reference's DiT_Llama_{600M,3B,7B}_patch2: name -> (depth, dim, heads).
_SIZES = {"600M": (16, 1536, 32), "3B": (32, 3072, 32), "7B": (32, 4096, 32)}
LARGE_DIT_ZOO: dict[str, LargeDiTConfig] = {
    f"Large-DiT-{s}/2": LargeDiTConfig(depth=d, hidden_size=h, num_heads=n) for s, (d, h, n) in _SIZES.items()
}
# A few-thousand-parameter member of the family for tests and smoke runs (not in the zoo).
TINY = LargeDiTConfig(depth=2, hidden_size=32, num_heads=4, input_size=8, num_classes=10, multiple_of=16)


def large_dit_config(name: str, **overrides) -> LargeDiTConfig:
    if name not in LARGE_DIT_ZOO:
        raise ValueError(f"unknown Large-DiT model {name!r}; choose from {', '.join(LARGE_DIT_ZOO)}")
    return replace(LARGE_DIT_ZOO[name], **{k: v for k, v in overrides.items() if v is not None})


def rope_table(num_tokens: int, head_dim: int, theta: float, device=None) -> torch.Tensor:
    """(1, T, 1, head_dim/2, 2) cos/sin of the 1D rotary angles, in float32.

    The leading 1 keeps the table from looking like a batch to a lazy wrapper that row-slices
    batched arguments (T may equal B).
    """
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim)
    angles = torch.outer(torch.arange(num_tokens, device=device).float(), freqs)  # (T, hd/2)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)[None, :, None]


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of each head, as the reference's complex multiply."""
    xf = x.float().unflatten(-1, (-1, 2))  # (B, T, H, hd/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    cos, sin = rope[..., 0], rope[..., 1]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2).type_as(x)


class Attention(nn.Module):
    """Bias-free multi-head attention (keys wq/wk/wv/wo, q_norm/k_norm) with rotary q and k."""

    def __init__(self, cfg: LargeDiTConfig):
        super().__init__()
        hd, h, kvh = cfg.head_dim, cfg.num_heads, cfg.kv_heads
        self.num_heads, self.kv_heads, self.head_dim = h, kvh, hd
        self.wq = nn.Linear(cfg.hidden_size, h * hd, bias=False)
        self.wk = nn.Linear(cfg.hidden_size, kvh * hd, bias=False)
        self.wv = nn.Linear(cfg.hidden_size, kvh * hd, bias=False)
        self.wo = nn.Linear(h * hd, cfg.hidden_size, bias=False)
        # Over all heads at once (not per head), with affine weights: the reference's nn.LayerNorm.
        self.q_norm = nn.LayerNorm(h * hd) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(kvh * hd) if cfg.qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_norm(self.wq(x)).view(B, T, self.num_heads, self.head_dim)
        k = self.k_norm(self.wk(x)).view(B, T, self.kv_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.kv_heads, self.head_dim)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        rep = self.num_heads // self.kv_heads
        if rep > 1:  # GQA: query head i reads kv head i // rep
            k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, H, T, hd)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), bias-free."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class LargeDiTBlock(nn.Module):
    def __init__(self, cfg: LargeDiTConfig):
        super().__init__()
        D = cfg.hidden_size
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(D, cfg.ffn_hidden)
        self.attention_norm = nn.RMSNorm(D, eps=cfg.norm_eps)
        self.ffn_norm = nn.RMSNorm(D, eps=cfg.norm_eps)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.cond_size, 6 * D, bias=True))

    def forward(self, x, rope, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attention(modulate(self.attention_norm(x), shift_msa, scale_msa), rope)
        x = x + gate_mlp.unsqueeze(1) * self.feed_forward(modulate(self.ffn_norm(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, cfg: LargeDiTConfig):
        super().__init__()
        D, p = cfg.hidden_size, cfg.patch_size
        self.norm_final = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(D, p * p * cfg.out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.cond_size, 2 * D, bias=True))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class LargeDiT(nn.Module):
    def __init__(self, config: LargeDiTConfig):
        super().__init__()
        if config.input_size % config.patch_size:
            raise ValueError(f"image size {config.input_size} is not divisible by patch size {config.patch_size}")
        if config.hidden_size % config.num_heads or config.num_heads % config.kv_heads:
            raise ValueError(f"hidden size {config.hidden_size}, {config.num_heads} heads and "
                             f"{config.kv_heads} kv heads do not divide evenly")
        if config.head_dim % 2:
            raise ValueError(f"head width {config.head_dim} must be even for rotary embeddings")
        self.config = config
        self.in_channels, self.out_channels = config.in_channels, config.out_channels
        self.patch_size, self.num_classes = config.patch_size, config.num_classes
        p, cond = config.patch_size, config.cond_size
        self.x_embedder = nn.Linear(p * p * config.in_channels, config.hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(cond)
        self.y_embedder = LabelEmbedder(config.num_classes, cond, config.class_dropout_prob)
        self.layers = nn.ModuleList([LargeDiTBlock(config) for _ in range(config.depth)])
        self.final_layer = FinalLayer(config)
        self.initialize_weights()

    def initialize_weights(self):
        """The reference's init_methods: xavier linears, N(0, 0.02) embedders, zero adaLN and head."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for mod in [*(b.adaLN_modulation[-1] for b in self.layers), self.final_layer.adaLN_modulation[-1],
                    self.final_layer.linear]:
            nn.init.zeros_(mod.weight)
            nn.init.zeros_(mod.bias)

    def patchify(self, x):
        """(N, C, H, W) -> (N, T, C*p*p), each token's features ordered (C, p, p) as upstream."""
        B, C, H, W = x.shape
        p = self.patch_size
        x = x.view(B, C, H // p, p, W // p, p)
        return x.permute(0, 2, 4, 1, 3, 5).flatten(-3).flatten(1, 2)

    unpatchify = DiT.unpatchify  # the same (N, T, p*p*C_out) -> (N, C_out, H, W) layout as DiT

    def forward(self, x, t, y):
        """x: (N, C, H, W) noisy latents, t: (N,) diffusion timesteps, y: (N,) labels."""
        x = self.x_embedder(self.patchify(x))  # (N, T, D)
        c = self.t_embedder(t) + self.y_embedder(y, self.training)  # (N, min(D, 1024))
        rope = rope_table(x.shape[1], self.config.head_dim, self.config.rope_theta, x.device)
        for layer in self.layers:
            x = layer(x, rope, c)
        return self.unpatchify(self.final_layer(x, c))  # (N, out_channels, H, W)
