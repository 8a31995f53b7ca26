"""Gates for diffusers models: where training meets the diffusers integration.

- `train_transformer_gates`: a bare `DiTTransformer2DModel`, trained through `DiffusersDiT`.
- `train_gates_on_scheduler`: rollouts on a diffusers scheduler's timesteps and noise levels.
- `fit_pipeline`: the default policy fitted through a pipeline's own loop and scheduler
  (`lazydit train-gates --model PIPELINE_DIR --target-lazy R [--prompts FILE]`).

`train_gates` itself takes lazydit's models only, so the trainer never imports an integration.
"""
from __future__ import annotations

from ..integrations.diffusers import DiffusersDiT
from ..integrations.diffusers.fit import check_call_kwargs, default_prompts, pipeline_sampler, scheduler_settings
from ..integrations.diffusers.models import noise_schedule_from_scheduler
from ..integrations.diffusers.pipeline import apply_lazy_to_pipeline
from ..core.lazy.apply import apply_lazy, get_controller, remove_lazy
from ..core.lazy.config import LazyConfig
from .gates import _run_placement_search, train_gates


def train_transformer_gates(transformer, cfg, dataset=None, resume: bool = False, progress: bool = True,
                            noise_schedule=None):
    """`train_gates` for a bare `DiTTransformer2DModel`: trains through a `DiffusersDiT` and leaves
    the gates attached to the transformer itself; gates it already has are the ones trained."""
    wrapper = DiffusersDiT(transformer)
    own = remove_lazy(transformer)
    if own is not None:
        own.meta["arch"] = wrapper.arch_name  # plain apply_lazy labelled it by class; files carry the canonical name
        apply_lazy(wrapper, own.config.num_steps, controller=own)
    try:
        return train_gates(wrapper, cfg, dataset, resume, progress, noise_schedule)
    finally:
        ctrl = remove_lazy(wrapper)
        if ctrl is not None:
            apply_lazy(transformer, ctrl.config.num_steps, controller=ctrl)


def train_gates_on_scheduler(model, cfg, scheduler, dataset=None, resume: bool = False, progress: bool = True):
    """`train_gates` with rollouts on `scheduler`'s timesteps and noise levels (see
    `noise_schedule_from_scheduler`); the gate file records the scheduler's class and timesteps, which
    `apply_lazy_to_pipeline` then checks against the pipeline's."""
    if cfg.train_mode == "placement":
        raise ValueError("placement mode searches on lazydit's own sampler; train on a diffusers scheduler "
                         "with mode onpolicy (or paper)")
    sched = noise_schedule_from_scheduler(scheduler, cfg.num_steps)
    ctrl = get_controller(model)
    if ctrl is None:  # the controller train_gates would attach, made here to carry the scheduler
        ctrl = apply_lazy(model, cfg.num_steps, LazyConfig(num_steps=cfg.num_steps, max_skip_run=cfg.max_skip_run,
                                                            reuse=cfg.reuse_operator))
    bare = type(model).__name__ == "DiTTransformer2DModel"
    if bare:
        ctrl.meta["arch"] = DiffusersDiT(model).arch_name  # the canonical name, not the class name
    ctrl.meta.update(scheduler=type(scheduler).__name__, timesteps=[int(t) for t in sched.timestep_map[::-1]])
    if bare:  # a bare diffusers DiT trains through lazydit's wrapper
        return train_transformer_gates(model, cfg, dataset, resume, progress, noise_schedule=sched)
    return train_gates(model, cfg, dataset, resume, progress, noise_schedule=sched)


def fit_pipeline(pipe, cfg, prompts: list[str] | None = None, call_kwargs: dict | None = None,
                 progress: bool = True):
    """The default policy (placement search, fitted forecast, input correction) on `pipe`; writes
    cfg.out_dir/gates.safetensors and summary.json. Returns (controller, summary)."""
    if cfg.train_mode != "placement":
        raise ValueError("on a diffusers pipeline lazydit fits the default policy only: give --target-lazy R "
                         "(input-dependent gates train on lazydit's own DiT sampler)")
    prompts = prompts or default_prompts()
    kwargs = check_call_kwargs(pipe, call_kwargs or {})
    ctrl = apply_lazy_to_pipeline(pipe, num_inference_steps=cfg.num_steps,
                                  config=LazyConfig(num_steps=cfg.num_steps, reuse=cfg.reuse_operator))
    ctrl.meta.update(family=type(pipe.transformer).__name__, pipeline=type(pipe).__name__,
                     scheduler_config=scheduler_settings(pipe.scheduler), call_kwargs=kwargs)
    sample = pipeline_sampler(pipe, prompts, cfg.num_steps, kwargs)
    return _run_placement_search(None, ctrl, cfg, resume=False, progress=progress, sample=sample,
                                 extra={"prompts": prompts})
