"""Lazy gates through the standard diffusers call: `apply_lazy_to_pipeline(pipe, gates)`, then `pipe(...)`.

A diffusers pipeline owns its denoising loop, so nothing there tells the controller which step
it is at. A forward pre-hook on `pipe.transformer` reads it off the timestep the transformer
receives instead: the scheduler's first timestep starts a generation (the controller resets),
every later forward must carry the scheduler's next timestep, and the forward at its last
timestep ends the generation (`controller.finish()`, so a direct call afterwards computes
everything). Steps are indexed by position in `pipe.scheduler.timesteps`, never by the raw
timestep value (the official code's trap: respacings repeat no values, but they differ).
"""
from __future__ import annotations

import warnings

import torch

from ...core.lazy import LazyConfig, LazyController, apply_lazy, get_controller, lazy_targets, load_gates, read_gates
from ...core.lazy import remove_lazy
from ...core.lazy.apply import site_dims, site_layout
from .transformer import _timestep_arg, ddim_stride_trap, transformer_arch_name

_STEPPER = "_lazydit_stepper"


def expected_timesteps(meta: dict, num_steps: int) -> list[float] | None:
    """The timesteps (sampling order) a gate file's gates were made for: recorded ones, else
    lazydit's own DiT sampler's (every lazydit trainer rolls out on it), else None (unknown)."""
    if isinstance(meta.get("timesteps"), list):
        return [float(t) for t in meta["timesteps"]]
    arch = meta.get("arch")
    if isinstance(arch, str) and (arch == "DiT" or arch.startswith("DiT-") or "DiTTransformer2DModel" in arch):
        from ...core.diffusion.noise_schedule import NoiseSchedule
        return [float(t) for t in NoiseSchedule.respaced(num_steps).timestep_map[::-1]]
    return None


def apply_lazy_to_pipeline(pipe, gates: str | LazyController | None = None, *, num_inference_steps: int | None = None,
                           config: LazyConfig | None = None) -> LazyController:
    """Attach lazy gates to `pipe.transformer` so that `pipe(...)` runs lazily; returns the controller.

    `gates`: a gate file, a controller, or None for fresh zero gates of `num_inference_steps`
    steps (they compute everything until trained, forced or given a policy). PixArt keeps its
    cross-attention computing; the gates act on self-attention and the feed-forward.
    """
    transformer = getattr(pipe, "transformer", None)
    if transformer is None or getattr(pipe, "scheduler", None) is None:
        raise ValueError(f"{type(pipe).__name__} has no transformer and scheduler; lazydit supports "
                         f"DiTPipeline and PixArt pipelines")
    if get_controller(transformer) is not None:
        raise ValueError("pipe.transformer already has lazy gates; call remove_lazy_from_pipeline(pipe) first")
    arch = transformer_arch_name(transformer)
    targets, dim = lazy_targets(transformer)  # also refuses unsupported transformers, chunking, double gates
    dim, dims = site_dims(dim)
    kinds, present, depth = site_layout(targets)
    expected = None
    if isinstance(gates, str):
        _, meta = read_gates(gates)
        n = meta["lazy_config"]["num_steps"]
        if num_inference_steps is not None and num_inference_steps != n:
            raise ValueError(f"gate file {gates} holds {n}-step gates, not {num_inference_steps}; a policy is "
                             f"fitted for one step count: fit another with lazydit train-gates --steps {num_inference_steps}")
        saved = meta.get("scheduler")
        if isinstance(saved, str) and saved != type(pipe.scheduler).__name__:
            raise ValueError(f"gate file {gates} was made on {saved}, but the pipeline samples with "
                             f"{type(pipe.scheduler).__name__}")
        ctrl = load_gates(gates, arch=arch, depth=depth, hidden_size=dim, num_steps=n, kinds=kinds, present=present,
                          dims=dims)
        expected = expected_timesteps(meta, n)
    elif isinstance(gates, LazyController):
        ctrl = gates
        if isinstance(ctrl.meta.get("timesteps"), list):
            expected = [float(t) for t in ctrl.meta["timesteps"]]
    elif gates is None:
        if num_inference_steps is None:
            raise ValueError("fresh gates need num_inference_steps")
        ctrl = LazyController(config or LazyConfig(num_steps=num_inference_steps), depth, dim, meta={"arch": arch},
                              kinds=kinds, present=present, dims=dims)
    else:
        raise ValueError(f"gates must be a gate file path, a LazyController or None, not {type(gates).__name__}")
    apply_lazy(transformer, ctrl.config.num_steps, controller=ctrl)
    stepper = _Stepper(pipe, ctrl, expected)
    stepper.handles = [transformer.register_forward_pre_hook(stepper.before, with_kwargs=True),
                       transformer.register_forward_hook(stepper.after)]
    object.__setattr__(transformer, _STEPPER, stepper)  # not a submodule: state_dict unchanged
    return ctrl


def remove_lazy_from_pipeline(pipe) -> LazyController | None:
    """Undo `apply_lazy_to_pipeline`; returns the detached controller."""
    transformer = pipe.transformer
    stepper = getattr(transformer, _STEPPER, None)
    if stepper is not None:
        for h in stepper.handles:
            h.remove()
        object.__setattr__(transformer, _STEPPER, None)
    return remove_lazy(transformer)


class _Stepper:
    """Maps each transformer forward inside `pipe(...)` to a step index and a CFG branch.

    Pipelines that run true CFG as separate calls (Wan, Qwen-Image) call the transformer twice
    at one timestep: the second call is branch 1, which keeps histories of its own. FLUX and
    Qwen-Image pass the timestep divided by 1000; the scale is read off the first call."""

    def __init__(self, pipe, ctrl: LazyController, expected: list[float] | None):
        self.pipe, self.ctrl, self.expected = pipe, ctrl, expected
        self.k: int | None = None  # step of the running generation, None between generations
        self.branch, self.branches = 0, None  # calls per step: known once step 1 starts
        self.scale = 1.0
        self.handles: list = []
        self._ts_obj, self._ts = None, []

    def _timesteps(self) -> list[float]:
        ts = getattr(self.pipe.scheduler, "timesteps", None)
        if ts is None:
            raise ValueError("pipe.scheduler has no timesteps yet; lazy gates step along the pipeline's "
                             "scheduler, so call pipe(...) (or scheduler.set_timesteps) first")
        if ts is not self._ts_obj:  # set_timesteps makes a new tensor: read it to the host once, not per call
            self._ts_obj, self._ts = ts, [float(t) for t in torch.as_tensor(ts).tolist()]
        return self._ts

    @torch.compiler.disable  # reads the timestep on the host: kept out of compiled graphs
    def before(self, module, args, kwargs):
        t = _timestep_arg(module, args, kwargs)
        if t is None:
            raise ValueError("the lazy transformer was called without a timestep")
        t = float(torch.as_tensor(t).reshape(-1)[0])
        ts = self._timesteps()
        if self.k is not None and _close(t * self.scale, ts[self.k]):
            self.branch += 1  # another call at the same step: the next CFG branch
        elif self.k in (None, len(ts) - 1) or self.k > 0 and _close(t * self.scale, ts[0]):
            scale = next((s for s in (1.0, 1000.0) if _close(t * s, ts[0])), None)
            if scale is None:
                if self.k is None:
                    return None  # a direct call outside a generation: the controller is finished, all compute
                want, self.k = "no further step", None
                raise ValueError(f"pipe.transformer received timestep {t:g}, but pipe.scheduler has {want}: "
                                 f"lazy gates need the scheduler's timesteps in order")
            self._start(ts)
            self.k, self.branch, self.branches, self.scale = 0, 0, None, scale
        else:
            if self.k == 0:
                self.branches = self.branch + 1
            self.k, self.branch = self.k + 1, 0
            if not _close(t * self.scale, ts[self.k]):
                want = f"its next timestep {ts[self.k]:g}"
                self.k = None
                raise ValueError(f"pipe.transformer received timestep {t * self.scale:g}, but pipe.scheduler has {want}: "
                                 f"lazy gates need the scheduler's timesteps in order")
        if self.branches is not None and self.branch >= self.branches:
            raise ValueError(f"pipe.transformer was called {self.branch + 1} times at step {self.k}, but "
                             f"{self.branches} times at step 0; lazy gates need the same calls at every step")
        self.ctrl.set_step(self.k, self.branch)
        return None

    @torch.compiler.disable  # reads the timestep on the host: kept out of compiled graphs
    def after(self, module, args, output):
        last = self.branches is not None and self.branch == self.branches - 1
        if self.k is not None and self.k == self.ctrl.config.num_steps - 1 and (last or self.k == 0):
            self.ctrl.finish()  # statistics stay readable; later direct calls compute everything
            self.k = None
        return None

    def _start(self, ts: list[float]):
        scheduler, n = self.pipe.scheduler, self.ctrl.config.num_steps
        name = type(scheduler).__name__
        if len(ts) != n:
            raise ValueError(f"the lazy gates are for {n} steps, but pipe.scheduler ({name}) runs {len(ts)} model "
                             f"calls; call pipe(..., num_inference_steps={n}) with a one-call-per-step scheduler")
        if self.expected is not None:
            bad = [k for k, (a, b) in enumerate(zip(ts, self.expected)) if abs(a - b) > 1.0]
            if bad:
                k = bad[0]
                raise ValueError(f"the gates were made for timesteps {_fmt(self.expected)}, but pipe.scheduler "
                                 f"({name}, timestep_spacing="
                                 f"{getattr(scheduler.config, 'timestep_spacing', None)!r}) runs "
                                 f"{_fmt(ts)} (step {k}: {ts[k]:g}, not {self.expected[k]:g}); configure the scheduler to the "
                                 f"gates' timesteps (lazydit-trained DiT gates: EulerDiscreteScheduler with "
                                 f"timestep_spacing='linspace'; flow matching: the same shift and image size)")
        else:
            # Gates of unknown timesteps take the scheduler's, so a gate file saved from them records them.
            self.ctrl.meta["timesteps"] = [int(t) if t.is_integer() else t for t in ts]
            self.ctrl.meta["scheduler"] = name
        if ddim_stride_trap(scheduler):
            warnings.warn(f"{name} steps by {scheduler.config.num_train_timesteps // n}, not to its next listed "
                          f"timestep, at {n} steps with timestep_spacing={scheduler.config.timestep_spacing!r}: "
                          f"full and lazy sampling both lose accuracy; see docs/evaluation.md", stacklevel=2)
        self.ctrl.reset()


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-4 * max(1.0, abs(b))  # float schedulers may round-trip through another dtype


def _fmt(ts: list[float]) -> str:
    head = ", ".join(f"{t:g}" for t in ts[:3])
    return f"[{head}, ..., {ts[-1]:g}] ({len(ts)})"
