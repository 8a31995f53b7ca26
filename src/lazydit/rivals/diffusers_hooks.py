"""How each diffusers 0.42 cache hook is attached to a converted DiT (`DiTTransformer2DModel`).

Every hook needs hand configuration here; its defaults target video or text-to-image models:
- TaylorSeerCache: its default module patterns do not match DiT's blocks, so `cache_identifiers` name
  every `attn1` and `ff` (the modules lazydit gates); otherwise it silently does nothing.
- SeaCache: it reads the latents through `raw_vision_callback`, which only its Cosmos 3 and Wan adapters
  provide; here each row's latent becomes a one-frame video (C, 1, H, W). Its step index, step count and
  sigma come from the cache context that `HookedDiT` attaches. Defaults otherwise (first-order residual
  forecast, first and last step computed, at most 2 consecutive reuses, power 3).
- FirstBlockCache: defaults; block 0 always computes, the other blocks reuse their residual when block 0's
  residual changed by less than the threshold.
- MagCache: its magnitude ratios are model-dependent, so they are measured in its own calibration mode
  (`MAGCACHE_CALIBRATE`) on calibration seeds first; defaults otherwise (20% of steps kept, K = 3).
- FasterCache: its denoiser hook must split `class_labels` with the other batched inputs, reads the
  batch as [uncond, cond] (DiT's is [cond, null], so `HookedDiT` swaps the halves around the call) and
  images as BCHW; its timestep comes from a callback. It has no threshold: `FASTERCACHE_SETTINGS` is
  the grid the harness picks from.
"""
from __future__ import annotations

import logging

import torch

TAYLORSEER_PATTERNS = [r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"]
THRESHOLD_HOOKS = ("SeaCache", "FirstBlockCache", "MagCache")   # bisected to the MACs
DIFFUSERS_HOOKS = ("TaylorSeerCache", *THRESHOLD_HOOKS, "FasterCache")
MAGCACHE_CALIBRATE = "calibrate"                                # MagCache's mag_ratios opt: measure them
# (attention reused on all but every n-th step, its timestep window; the null half skipped on all but
# every m-th step, its window): diffusers' default first, then wider windows and longer reuse for more saving
FASTERCACHE_SETTINGS = (
    {"attn_every": 2, "attn_window": (-1, 681), "uncond_every": 5, "uncond_window": (-1, 641)},
    {"attn_every": 2, "attn_window": (-1, 1000), "uncond_every": 2, "uncond_window": (-1, 1000)},
    {"attn_every": 3, "attn_window": (-1, 1000), "uncond_every": 3, "uncond_window": (-1, 1000)},
    {"attn_every": 4, "attn_window": (-1, 1000), "uncond_every": 4, "uncond_window": (-1, 1000)},
)


def attach(transformer, hook: str, opts: dict, num_steps: int | None, timestep_fn) -> bool:
    """Attach diffusers' `hook` to `transformer`, configured by `opts`; `timestep_fn()` gives the
    current timestep. Returns True when the caller must swap the CFG halves around each call."""
    import diffusers.hooks as dh
    if hook == "TaylorSeerCache":
        dh.apply_taylorseer_cache(transformer, dh.TaylorSeerCacheConfig(
            cache_interval=opts["interval"], disable_cache_before_step=opts["warmup"], max_order=opts["order"],
            taylor_factors_dtype=torch.float32, cache_identifiers=TAYLORSEER_PATTERNS))
    elif hook == "SeaCache":
        dh.apply_sea_cache(transformer, dh.SeaCacheConfig(threshold=opts["threshold"], raw_vision_callback=_one_frame_rows))
    elif hook == "FirstBlockCache":
        dh.apply_first_block_cache(transformer, dh.FirstBlockCacheConfig(threshold=opts["threshold"]))
    elif hook == "MagCache":
        if opts["mag_ratios"] == MAGCACHE_CALIBRATE:
            # one more step than sampled, so that the hook never wraps around and clears its ratios
            config = dh.MagCacheConfig(calibrate=True, num_inference_steps=num_steps + 1)
        else:
            config = dh.MagCacheConfig(threshold=opts["threshold"], num_inference_steps=num_steps,
                                       mag_ratios=torch.tensor(opts["mag_ratios"]))
        dh.apply_mag_cache(transformer, config)
    elif hook == "FasterCache":
        from diffusers.hooks.faster_cache import _UNCOND_COND_INPUT_KWARGS_IDENTIFIERS
        config = dh.FasterCacheConfig(
            spatial_attention_block_skip_range=opts["attn_every"], spatial_attention_timestep_skip_range=opts["attn_window"],
            unconditional_batch_skip_range=opts["uncond_every"], unconditional_batch_timestep_skip_range=opts["uncond_window"],
            attention_weight_callback=lambda _: 0.5, tensor_format="BCHW", current_timestep_callback=timestep_fn,
            _unconditional_conditional_input_kwargs_identifiers=[*_UNCOND_COND_INPUT_KWARGS_IDENTIFIERS, "class_labels"])
        log = logging.getLogger("diffusers.hooks.faster_cache")
        level = log.level
        log.setLevel(logging.ERROR)  # it warns "purely experimental" on every attach, i.e. every run
        try:
            dh.apply_faster_cache(transformer, config)
        finally:
            log.setLevel(level)
        return True
    else:
        raise ValueError(f"unknown diffusers hook {hook!r}")
    return False


def magcache_ratios(transformer) -> list[float]:
    """The magnitude ratios MagCache measured in calibration mode during the last generation: read
    from its private state, because the hook only prints them."""
    from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK
    manager = transformer.transformer_blocks[-1]._diffusers_hook.get_hook(_MAG_CACHE_BLOCK_HOOK).state_manager
    return [float(r) for r in manager._state_cache["denoise"].calibration_ratios]


def _one_frame_rows(_module, args, kwargs) -> list:
    """SeaCache's view of the latents: each row a (C, T=1, H, W) video."""
    x = args[0] if args else kwargs["hidden_states"]  # (B, C, H, W)
    return list(x.unsqueeze(2).unbind(0))
