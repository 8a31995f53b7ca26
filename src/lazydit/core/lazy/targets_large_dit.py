"""Where the lazily wrapped modules of Large-DiT (DiT-Llama) are.

Keyed by class name, so registering needs no import of the model. `layers[i].attention`
takes (Z, rope) and `layers[i].feed_forward` takes Z; both return F(Z) before the gate.
"""
from __future__ import annotations

from .apply import register_targets


@register_targets("LargeDiT")
def _large_dit_targets(model):
    mods = [(i, k, getattr(b, a)) for i, b in enumerate(model.layers)
            for k, a in (("attn", "attention"), ("ffn", "feed_forward"))]
    return mods, model.config.hidden_size
