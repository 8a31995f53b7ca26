"""diffusers' own cache hooks as rivals, on the same model converted to `DiTTransformer2DModel`.

`HookedDiT` is the converted model with one hook attached (`diffusers_hooks.attach` says how each is
configured) behind lazydit's model interface. It does three things the hooks need or the harness needs:
- a cache context on every call: `DiTTransformer2DModel` has no `CacheMixin`, so the context is only
  reachable through the private `diffusers.hooks.hooks._set_cache_context`; this file is the one place
  that touches it. The context carries the step index, step count and sigma that SeaCache reads;
- a reset of every stateful hook when the noise schedule's first timestep arrives, so that one generation
  never sees the previous one's caches or counters;
- a count of what really ran: a forward hook on a leaf Linear of every attn1 (`to_q`) and ff (`net.2`)
  fires only when that module computes, and records how many rows it computed. Every hook here skips by
  not calling the module at all (whole blocks, the attention module, or the null half of the batch), so
  a module that did not fire was skipped. The counts become lazydit's skips tensor (N, L, 2, B), which
  `lazy_macs` turns into MACs as for every other method.

CFG runs as one batch of 2B rows in lazydit's [cond, null] order, so the hook sees one call per step,
as in DiTPipeline.
"""
from __future__ import annotations

import functools

import torch

from ..core.diffusion.noise_schedule import NoiseSchedule
from ..integrations.diffusers import DiffusersDiT, build_diffusers_dit, dit_to_diffusers
from .diffusers_hooks import attach


class HookedDiT(DiffusersDiT):
    """A converted DiT with diffusers' `hook` attached, configured by `opts`, for `num_steps`-step sampling."""

    def __init__(self, model, hook: str, opts: dict, num_steps: int | None, first_timestep: int | None = None):
        transformer = build_diffusers_dit(model.config)
        transformer.load_state_dict(dit_to_diffusers(model.state_dict(), model.config))
        transformer.to(next(model.parameters()).device).eval()
        super().__init__(transformer)
        self.arch_name = getattr(model, "arch_name", type(model).__name__)
        # a generation starts at the noise schedule's first (largest) timestep; num_steps is what SeaCache and
        # MagCache are configured for (TaylorSeerCache and the others need no step count)
        self.num_steps = num_steps
        self.first_timestep = int(NoiseSchedule.respaced(num_steps).timestep_map[-1]) if num_steps else first_timestep
        self.timestep = 0
        self.swap_halves = attach(transformer, hook, opts, num_steps, lambda: self.timestep)
        self._computed: dict = {}          # (layer, module) -> rows computed in the current step
        self._generations: list = []       # per generation, one (L, 2, rows) skips tensor per step
        for l, block in enumerate(transformer.transformer_blocks):
            for m, leaf in enumerate((block.attn1.to_q, block.ff.net[2])):
                leaf.register_forward_hook(self._counter(l, m))

    def _counter(self, layer: int, module: int):
        def count(_mod, inputs, _out):
            key = (layer, module)
            self._computed[key] = self._computed.get(key, 0) + inputs[0].shape[0]
        return count

    def forward(self, x, t, y):
        from diffusers.hooks.hooks import CacheContext, HookRegistry, _set_cache_context
        self.timestep = int(t.max())
        if self.timestep == self.first_timestep:  # a new generation: forget the previous one
            HookRegistry.check_if_exists_or_initialize(self.transformer).reset_stateful_hooks()
            self._generations.append([])
        if not self._generations or (self.num_steps and len(self._generations[-1]) >= self.num_steps):
            raise ValueError(f"a generation must start at timestep {self.first_timestep} and run {self.num_steps} steps")
        k = len(self._generations[-1])
        if self.swap_halves:  # FasterCache reads the batch as [uncond, cond]
            x, t, y = (torch.cat(v.chunk(2)[::-1]) for v in (x, t, y))
        self._computed.clear()
        _set_cache_context(self.transformer, CacheContext("denoise", step_index=k, num_inference_steps=self.num_steps,
                                                          timestep=self.timestep, sigma=flow_sigma(self.timestep)))
        try:
            out = super().forward(x, t, y)
        finally:
            _set_cache_context(self.transformer, None)
        if self.swap_halves:
            out = torch.cat(out.chunk(2)[::-1])
        rows = x.shape[0]
        skips = torch.ones(self.config.depth, 2, rows, dtype=torch.bool)  # (L, 2, rows)
        for (l, m), done in self._computed.items():
            if done > rows:
                raise RuntimeError(f"layer {l} module {m} computed {done} rows in one step of {rows}")
            # the rows a hook computes are all rows or, FasterCache, the cond half: first in lazydit's order
            skips[l, m, :done] = False
        self._generations[-1].append(skips)
        return out

    def measured_skips(self) -> torch.Tensor | None:
        """(N, L, 2, rows of all generations so far) True where a module was not computed."""
        done = [torch.stack(g) for g in self._generations if g]
        return torch.cat(done, dim=-1) if done else None


class TaylorSeerDiT(HookedDiT):
    """A converted DiT with diffusers' TaylorSeerCache on every attn1 and ff (first_timestep: the
    noise schedule's first timestep, where each generation starts)."""

    def __init__(self, model, warmup: int, interval: int, order: int, first_timestep: int):
        super().__init__(model, "TaylorSeerCache", {"warmup": warmup, "interval": interval, "order": order}, None,
                         first_timestep)


@functools.lru_cache(maxsize=None)
def _train_alphas_cumprod() -> torch.Tensor:
    return torch.as_tensor(NoiseSchedule.full().alphas_cumprod, dtype=torch.float64)


def flow_sigma(timestep: int) -> float:
    """SeaCache's filter assumes flow matching, x = (1 - sigma) x0 + sigma eps; this sigma gives our
    variance-preserving x = sqrt(ab) x0 + sqrt(1 - ab) eps at `timestep` the same signal-to-noise ratio."""
    ab = _train_alphas_cumprod()[timestep]
    return float((1 - ab).sqrt() / (ab.sqrt() + (1 - ab).sqrt()))


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
