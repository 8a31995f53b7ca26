"""diffusers support (the optional `diffusers` extra), one module per concern:

- `transformer`: lazy sites of DiT and PixArt, the step guard, conversion between lazydit's DiT and
  `DiTTransformer2DModel`, `DiffusersDiT`, and DiTPipeline's loop (`scheduler_sample`, `sample_dit`).
- `families`: lazy sites of FLUX.1/FLUX.2, SD3/3.5, Qwen-Image, Wan 2.1 and HunyuanVideo.
- `pipeline`: `apply_lazy_to_pipeline` / `remove_lazy_from_pipeline`, gates through `pipe(...)`.
- `models`: a local diffusers folder as a lazydit model; a diffusers scheduler as a `NoiseSchedule`.
- `fit`: a pipeline as the default-policy fit sees it (prompts, call arguments, its sampler).
- `fmnist`: the shipped DiT-FMNIST as a `DiTPipeline`; `flux_fmnist` (with its prompts and text
  encoders, `flux_fmnist_text`): the shipped Flux-FMNIST as a `FluxPipeline`.

The names below are the package's public API. Importing it registers every family's sites (by
class name) and never imports diffusers itself; `lazydit.core.lazy` imports it on first sight of a
diffusers model. The modules import each other, never this file, so nothing here is circular.
"""
from .fmnist import fmnist_dit_pipeline
from .pipeline import apply_lazy_to_pipeline, remove_lazy_from_pipeline
from .transformer import (DiffusersDiT, build_diffusers_dit, check_ddim_stride, ddim_stride_trap, diffusers_dit_kwargs,
                          diffusers_to_dit, dit_arch_name, dit_config_from_diffusers, dit_to_diffusers, sample_dit,
                          scheduler_sample, transformer_arch_name, use_dit_timestep_embedding)

__all__ = ["DiffusersDiT", "apply_lazy_to_pipeline", "build_diffusers_dit", "check_ddim_stride", "ddim_stride_trap",
           "diffusers_dit_kwargs", "diffusers_to_dit", "dit_arch_name", "dit_config_from_diffusers", "dit_to_diffusers",
           "fmnist_dit_pipeline", "remove_lazy_from_pipeline", "sample_dit", "scheduler_sample",
           "transformer_arch_name", "use_dit_timestep_embedding"]
