"""The option groups several `lazydit` commands share: `ModelOptions` and `SamplingOptions`.

A group is a dataclass a command's Config holds as one field; a command that wants other defaults
for a group says so with `flags.group(SamplingOptions, cfg_scale=1.5)`. Single shared options
(`--steps`, `--seed`, `--out`, ...) are declared in `lazydit.flags`, a tier lower, so that the
library's own configs use them too.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..flags import cfg_scale, device, eta, gates, guide_all_channels, image_size, model, option, reuse, steps


# ---- groups -----------------------------------------------------------------------------------
@dataclass(kw_only=True)
class ModelOptions:
    """What loads a model: a zoo name, the shipped pipeline, or a local diffusers folder."""
    name: str | None = model()
    checkpoint: str | None = option(None, flag="--ckpt",
                                    help="checkpoint (.safetensors, or a third-party .pt read weights-only)")
    random_init: bool = option(False, help="random weights for a zoo model (smoke tests)")
    image_size: int | None = image_size()
    num_classes: int | None = option(None, type=int)
    device: str = device()

    def sample_config(self, **more):
        """`loading.SampleConfig` of this model, with `more` of its fields (gates, steps, ...)."""
        from ..loading import SampleConfig
        return SampleConfig(**{"model": self.name, "checkpoint": self.checkpoint, "random_init": self.random_init,
                               "image_size": self.image_size, "num_classes": self.num_classes,
                               "device": self.device, **more})

    def open_pipeline(self, pipe_kwargs: dict | None) -> tuple:
        """(pipe, call arguments, prompts) of --model PIPELINE: its defaults, then --pipe-kwargs and --image-size."""
        from ..integrations.diffusers.fit import open_pipeline
        pipe, kwargs, prompts = open_pipeline(self.name)
        kwargs = {**kwargs, **(pipe_kwargs or {})}
        if self.image_size:
            kwargs.update(height=self.image_size, width=self.image_size)
        return pipe, kwargs, prompts


@dataclass(kw_only=True)
class SamplingOptions:
    """How `sample` and `sample-many` sample: laziness, then the sampler. The names are
    `loading.SampleConfig`'s, so `ModelOptions.sample_config(**asdict(sampling))` takes them."""
    gates: str | None = gates()
    force_skip: str | None = option(None, help="static skip pattern instead of gates: every:N or fraction:F")
    max_skip_run: int | None = option(None, help="at most this many consecutive skips per module")
    reuse: str = reuse("copy", help="with --force-skip: what a skipped module returns (a gate file carries its own)")
    steps: int = steps()
    sampler: str = option("ddim", choices=("ddim", "ddpm"))
    eta: float = eta()
    cfg_scale: float = cfg_scale(3.0)
    guide_all_channels: bool = guide_all_channels()
