"""diffusers' own TaylorSeerCache hook on the same model, converted to `DiTTransformer2DModel`.

Configured by hand, because its defaults do nothing on DiT:
- its default module patterns do not match DiT's blocks, so `cache_identifiers` must name
  `transformer_blocks.N.attn1` and `transformer_blocks.N.ff` (the same modules lazydit gates);
- it needs a cache context, which `DiTTransformer2DModel` (no `CacheMixin`) only offers through
  `diffusers.hooks.hooks._set_cache_context`; a private function, so this file is the one place
  that touches it;
- its state counts calls, so it must be reset before every generation: done here when the
  transformer receives the schedule's first timestep.

CFG runs as one batch of 2B rows, so the hook sees one call per step, as in DiTPipeline.
"""
from __future__ import annotations

import torch

from ..integrations.diffusers import DiffusersDiT, build_diffusers_dit, dit_to_diffusers

PATTERNS = [r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"]


class TaylorSeerDiT(DiffusersDiT):
    """A converted DiT with diffusers' TaylorSeerCache hooks on every attn1 and ff."""

    def __init__(self, model, warmup: int, interval: int, order: int, first_timestep: int):
        from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache
        transformer = build_diffusers_dit(model.config)
        transformer.load_state_dict(dit_to_diffusers(model.state_dict(), model.config))
        transformer.to(next(model.parameters()).device).eval()
        super().__init__(transformer)
        self.arch_name = getattr(model, "arch_name", type(model).__name__)
        apply_taylorseer_cache(transformer, TaylorSeerCacheConfig(
            cache_interval=interval, disable_cache_before_step=warmup, max_order=order,
            taylor_factors_dtype=torch.float32, cache_identifiers=PATTERNS))
        self.first_timestep = first_timestep

    def forward(self, x, t, y):
        from diffusers.hooks.hooks import CacheContext, HookRegistry, _set_cache_context
        if int(t.max()) == self.first_timestep:  # a new generation: forget the previous one
            HookRegistry.check_if_exists_or_initialize(self.transformer).reset_stateful_hooks()
        _set_cache_context(self.transformer, CacheContext("denoise"))
        try:
            return super().forward(x, t, y)
        finally:
            _set_cache_context(self.transformer, None)


def taylorseer_skips(num_steps: int, depth: int, warmup: int, interval: int) -> torch.Tensor:
    """(N, L, 2) True where the hook predicts instead of computing, by its own rule (diffusers
    0.42 `taylorseer_cache.py`): compute before `warmup`, then where (k - warmup - 1) % interval == 0."""
    skip = torch.tensor([k >= warmup and (k - warmup - 1) % interval != 0 for k in range(num_steps)])
    return skip[:, None, None].expand(num_steps, depth, 2).clone()


def diffusers_available() -> bool:
    try:
        import diffusers.hooks  # noqa: F401
        return True
    except ImportError:
        return False

