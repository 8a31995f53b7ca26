"""A DiT-family model cut at the boundaries where a frozen schedule decides.

Per block and module (attention, feed-forward) there are two pieces:
- compute (h, c) -> (h', y[, z]): modulation, the module F, gate and residual; y = F(z) before
  the gate, which the reuse history keeps, and z = the modulated input (input correction only);
- skip (h, c, y_reuse[, z_hat, U, V]) -> h': only the gate (and, with an input correction, the
  modulated input z, to add (z - z_hat) U V to the reused value) and the residual.
plus the embedders (x, t, y) -> (h, c) and the final layer (h, c) -> model output.
The reuse value itself (copy or forecast) is computed outside, from the outputs of earlier
steps, so every piece is a fixed graph whatever the step: exportable to ONNX, compilable once.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.models.dit import modulate

KINDS = ("attn", "ffn")


def family(model: nn.Module) -> str:
    name = type(model).__name__
    if name not in ("DiT", "LargeDiT"):
        raise ValueError(f"export supports the DiT zoo and Large-DiT, not {name}")
    return "dit" if name == "DiT" else "large_dit"


def _rms_norm(norm: nn.RMSNorm, x):
    # Written out: the ONNX exporter has no rms_norm at opset 17. Same arithmetic as nn.RMSNorm.
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight


class _Module(nn.Module):
    """Shared by compute and skip: the block's modulation for one module, and its norm."""

    def __init__(self, model: nn.Module, layer: int, kind: str):
        super().__init__()
        fam, m = family(model), KINDS.index(kind)
        blk = model.blocks[layer] if fam == "dit" else model.layers[layer]
        self.ada = blk.adaLN_modulation[-1]
        self.dim = model.config.hidden_size
        self.first = 3 * m  # chunk index of this module's shift (shift, scale, gate follow)
        if fam == "dit":
            self.norm, self.fn = (blk.norm1, blk.attn) if kind == "attn" else (blk.norm2, blk.mlp)
            self.rope = None
        else:
            from ..core.models.large_dit import rope_table
            self.norm = blk.attention_norm if kind == "attn" else blk.ffn_norm
            self.fn = blk.attention if kind == "attn" else blk.feed_forward
            cfg = model.config
            rope = rope_table(cfg.num_patches, cfg.head_dim, cfg.rope_theta) if kind == "attn" else None
            self.register_buffer("rope", rope, persistent=False)
        self.eval()  # a wrapper in train mode would put the model's modules in train mode when exported

    def chunk(self, c, i):
        """The i-th of this module's (shift, scale, gate), from only its rows of the adaLN linear."""
        a, d = (self.first + i) * self.dim, self.dim
        return F.linear(F.silu(c), self.ada.weight[a:a + d], self.ada.bias[a:a + d])  # (B, D)

    def modulated(self, h, c):
        normed = self.norm(h) if isinstance(self.norm, nn.LayerNorm) else _rms_norm(self.norm, h)
        return modulate(normed, self.chunk(c, 0), self.chunk(c, 1))  # (B, T, D)

    def apply_fn(self, z):
        return self.fn(z) if self.rope is None else self.fn(z, self.rope)


class ComputePart(_Module):
    """`keep_input`: also return z, which only an input correction needs."""

    def __init__(self, model, layer, kind, keep_input: bool = False):
        super().__init__(model, layer, kind)
        self.keep_input = keep_input

    def forward(self, h, c):
        z = self.modulated(h, c)
        y = self.apply_fn(z)
        h = h + self.chunk(c, 2).unsqueeze(1) * y
        return (h, y, z) if self.keep_input else (h, y)


class SkipPart(_Module):
    """`corrected`: the skip also takes z_hat and this step's input correction U (D, r), V (r, D),
    inputs rather than constants because a correction may change with the step (step groups)."""

    def __init__(self, model, layer, kind, corrected: bool = False):
        super().__init__(model, layer, kind)
        self.corrected = corrected

    def forward(self, h, c, y, z_hat=None, u=None, v=None):
        if self.corrected:
            y = y + ((self.modulated(h, c) - z_hat) @ u) @ v
        return h + self.chunk(c, 2).unsqueeze(1) * y


class EmbedPart(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.fam = model, family(model)
        self.eval()

    def forward(self, x, t, y):
        m = self.model
        h = m.x_embedder(x) + m.pos_embed if self.fam == "dit" else m.x_embedder(m.patchify(x))  # (B, T, D)
        return h, m.t_embedder(t) + m.y_embedder(y, False)  # (B, D_c)


class FinalPart(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, h, c):
        return self.model.unpatchify(self.model.final_layer(h, c))  # (B, C_out, H, W)
