"""Lazy sites of today's diffusers families: FLUX.1/FLUX.2, SD3/3.5, Qwen-Image, Wan 2.1 and
HunyuanVideo (MMDiTs and video DiTs, sampled by flow matching).

A site is a module whose output, before the block's gate multiply, a skip replaces. Per block:

- FLUX.1, HunyuanVideo double-stream: joint attention ("attn": image and text outputs, cached as
  one tensor), the image feed-forward "ffn" and the text feed-forward "ffn_text".
  Single-stream: attention "attn", the MLP's input projection "ffn" (`proj_mlp`) and the output
  projection of both, "proj_out" (a third of the block's projections; it skips where both others
  do under a (N, L, 2) mask, and then their forecasts go unused).
- FLUX.2 double-stream as FLUX.1; single-stream blocks fuse attention and MLP into one module,
  a single site "attn_mlp".
- SD3/3.5: joint attention "attn", SD3.5's second self-attention "attn2", "ffn", and "ffn_text"
  except in the last block (`context_pre_only` has no text feed-forward).
- Qwen-Image: joint attention "attn", "ffn" (`img_mlp`) and "ffn_text" (`txt_mlp`).
- Wan 2.1: self-attention "attn", cross-attention to the text "cross", feed-forward "ffn".

Registration is by class name, as for DiT and PixArt, so importing this never imports diffusers;
`transformer` registers these families together with its step guard, so this table imports
nothing from it.
"""
from __future__ import annotations

from ...core.lazy.apply import get_controller

# class name -> [(block list attribute, [(site kind, module attribute), ...])]; a module that is
# None or absent in a block (SD3's last ff_context) is no site there.
SITES = {
    "FluxTransformer2DModel": [("transformer_blocks", [("attn", "attn"), ("ffn", "ff"), ("ffn_text", "ff_context")]),
                               ("single_transformer_blocks", [("attn", "attn"), ("ffn", "proj_mlp"), ("proj_out", "proj_out")])],
    "Flux2Transformer2DModel": [("transformer_blocks", [("attn", "attn"), ("ffn", "ff"), ("ffn_text", "ff_context")]),
                                ("single_transformer_blocks", [("attn_mlp", "attn")])],
    "SD3Transformer2DModel": [("transformer_blocks", [("attn", "attn"), ("attn2", "attn2"), ("ffn", "ff"),
                                                      ("ffn_text", "ff_context")])],
    "QwenImageTransformer2DModel": [("transformer_blocks", [("attn", "attn"), ("ffn", "img_mlp"),
                                                            ("ffn_text", "txt_mlp")])],
    "WanTransformer3DModel": [("blocks", [("attn", "attn1"), ("cross", "attn2"), ("ffn", "ffn")])],
    "HunyuanVideoTransformer3DModel": [("transformer_blocks", [("attn", "attn"), ("ffn", "ff"), ("ffn_text", "ff_context")]),
                                       ("single_transformer_blocks", [("attn", "attn"), ("ffn", "proj_mlp"),
                                                                      ("proj_out", "proj_out")])],
}


def blocks(model) -> list:
    """Every block of a family model, in the order the forward runs them."""
    return [b for attr, _ in SITES[type(model).__name__] for b in getattr(model, attr)]


def family_targets(model):
    """[(layer, kind, module)] and the gate width of a family model (see SITES): the hidden size, or
    with per-kind widths when proj_out is a site. Registered, with the step guard installed after
    it, by `transformer`."""
    mods, layer = [], 0
    for attr, sites in SITES[type(model).__name__]:
        for block in getattr(model, attr):
            for kind, name in sites:
                module = getattr(block, name, None)
                if module is not None:
                    mods.append((layer, kind, module))
            layer += 1
    if any(getattr(b, "_chunk_size", None) is not None for b in blocks(model)):
        raise ValueError("lazy gates cannot wrap a chunked feed-forward; call disable_forward_chunking() first")
    if get_controller(model) is None and any(hasattr(m, "_lazydit_orig_forward") for _, _, m in mods):
        raise ValueError(f"this {type(model).__name__} already has lazy gates; call remove_lazy on it first")
    if getattr(model, "is_cache_enabled", False):
        # diffusers' cache hooks replace block forwards too: both would decide what a step reuses.
        raise ValueError(f"{type(model).__name__} has diffusers hooks (e.g. enable_cache); call "
                         f"disable_cache() before attaching lazy gates")
    hidden = model.config.num_attention_heads * model.config.attention_head_dim
    dims = {kind: m.in_features for _, kind, m in mods if kind == "proj_out"}  # attention + MLP widths
    return mods, {"hidden": hidden, **dims} if dims else hidden
