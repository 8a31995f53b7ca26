"""Attach lazy gates to a model without editing its code: `apply_lazy` / `remove_lazy`.

Each target module keeps its parameters and state-dict keys; only its instance `forward` is
replaced by a closure into the controller, and `remove_lazy` puts the original back.
"""
from __future__ import annotations

import importlib
from typing import Callable

import torch
import torch.nn as nn

from .config import LazyConfig
from .controller import LazyController

_ATTR = "_lazydit_controller"
# model class name -> function(model) -> [(layer, kind, module)] and the hidden size.
_TARGETS: dict[str, Callable[[nn.Module], tuple[list, int]]] = {}


def register_targets(class_name: str):
    """Declare which submodules of a model family are lazily wrapped."""
    def deco(fn):
        _TARGETS[class_name] = fn
        return fn
    return deco


@register_targets("DiT")
def _dit_targets(model):
    mods = [(i, k, getattr(b, a)) for i, b in enumerate(model.blocks) for k, a in (("attn", "attn"), ("ffn", "mlp"))]
    return mods, model.config.hidden_size


# Integrations declare themselves as entry points in the group below (name: the top-level package
# of the model classes they cover, value: the module that registers their targets), so core names
# no integration: it loads one on first sight of such a model, which keeps `import lazydit` light
# and spares the user an import. Another package can register its own models the same way.
ENTRY_POINTS = "lazydit.targets"


def _integrations() -> dict:
    from importlib.metadata import entry_points
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINTS)}


def lazy_targets(model: nn.Module):
    fn = _TARGETS.get(type(model).__name__)
    if fn is None:
        integrations = _integrations()
        integration = integrations.get(type(model).__module__.partition(".")[0])
        if integration is not None:
            importlib.import_module(integration)
            fn = _TARGETS.get(type(model).__name__)
        if fn is None:
            for name in integrations.values():  # so that the list below is complete
                try:
                    importlib.import_module(name)
                except ImportError:  # an integration whose library is not installed
                    pass
    if fn is None:
        raise ValueError(f"lazydit does not know where the modules of {type(model).__name__} are; "
                         f"supported: {', '.join(sorted(_TARGETS))}")
    return fn(model)


def arch_name(model: nn.Module) -> str:
    return getattr(model, "arch_name", None) or type(model).__name__


def site_dims(dim) -> tuple[int, dict]:
    """(width, {kind: input width}) from a target function's second value: the hidden size, or a
    dict of input widths per kind whose "hidden" entry is the hidden size."""
    if isinstance(dim, dict):
        return dim["hidden"], {k: v for k, v in dim.items() if k != "hidden"}
    return dim, {}


def site_layout(targets: list) -> tuple[tuple, torch.Tensor, int]:
    """(kinds in order of first appearance, present (L, M) bool, depth) of a model's sites."""
    kinds = tuple(dict.fromkeys(kind for _, kind, _ in targets))
    depth = 1 + max(layer for layer, _, _ in targets)
    present = torch.zeros(depth, len(kinds), dtype=torch.bool)
    for layer, kind, _ in targets:
        if present[layer, kinds.index(kind)]:
            raise ValueError(f"two modules declared for site ({layer}, {kind})")
        present[layer, kinds.index(kind)] = True
    return kinds, present, depth


def apply_lazy(model: nn.Module, num_steps: int, config: LazyConfig | None = None,
               controller: LazyController | None = None) -> LazyController:
    """Wrap every lazy site (attention, feed-forward, ... as the model family declares them) of
    `model` with gates for `num_steps`."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if getattr(model, _ATTR, None) is not None:
        raise ValueError("model already has lazy gates; call remove_lazy first")
    targets, dim = lazy_targets(model)
    dim, dims = site_dims(dim)
    kinds, present, depth = site_layout(targets)
    if controller is None:
        config = config or LazyConfig(num_steps=num_steps)
        if config.num_steps != num_steps:  # the controller follows its config: the other count would be ignored
            raise ValueError(f"num_steps={num_steps} but config.num_steps={config.num_steps}; give the same "
                             f"number of sampling steps to both")
        controller = LazyController(config, depth, dim, meta={"arch": arch_name(model)}, kinds=kinds, present=present,
                                    dims=dims)
    elif controller.config.num_steps != num_steps or controller.depth != depth or controller.dim != dim:
        raise ValueError(f"gates are for {controller.config.num_steps} steps, depth {controller.depth}, "
                         f"width {controller.dim}; model needs {num_steps} steps, depth {depth}, width {dim}")
    elif controller.kinds != kinds or not torch.equal(controller.present, present):
        raise ValueError(f"gates are for sites {list(controller.kinds)}; the model has {list(kinds)}"
                         + ("" if controller.kinds != kinds else " in other blocks"))
    p = next(model.parameters(), None)
    if p is not None:
        controller.to(p.device)
    for layer, kind, module in targets:
        module._lazydit_orig_forward = module.forward
        module.forward = LazyForward(controller, layer, kind, module)
    # Not a registered submodule: the model's state_dict keys must not change.
    object.__setattr__(model, _ATTR, controller)
    return controller


class LazyForward:
    """A wrapped module's forward. An object holding the module and the controller, not a
    closure, so that `copy.deepcopy(model)` gives a copy whose wrappers call the copy's own
    modules and the copy's own controller (deepcopy shares a closure between original and copy).

    diffusers calls many modules by keyword (`attn(hidden_states=..., encoder_hidden_states=...)`):
    the input is then `hidden_states`. A module returning a tuple (joint attention: image and text
    outputs) is cached as one tensor, its parts joined along the token axis, so that histories,
    forecasts and corrections need no notion of parts."""

    def __init__(self, controller, layer: int, kind: str, module: nn.Module):
        self.controller, self.layer, self.kind, self.module = controller, layer, kind, module
        orig = module.forward
        # A plain method is re-bound at call time (so it follows a copy); anything else, e.g.
        # another library's wrapper, is kept as it is.
        self.func = orig.__func__ if getattr(orig, "__self__", None) is module else None
        self.orig = None if self.func is not None else orig
        self.keyword = False  # how the current call passed its input

    def _orig(self, *args, **kwargs):
        if self.func is not None:
            return self.func(self.module, *args, **kwargs)
        return self.orig(*args, **kwargs)

    def _flat(self, z, *args, **kwargs):
        out = self._orig(hidden_states=z, *args, **kwargs) if self.keyword else self._orig(z, *args, **kwargs)
        layouts = self.controller.state.layouts  # per CFG branch: cond and uncond texts differ in length
        if torch.is_tensor(out):
            layouts.pop((self.layer, self.kind), None)
            return out
        parts = list(out)
        tensors = [p for p in parts if p is not None]
        if not tensors or any(not torch.is_tensor(p) or p.dim() != 3 for p in tensors) \
                or len({p.shape[-1] for p in tensors}) != 1:
            raise ValueError(f"lazydit cannot cache the output of {type(self.module).__name__} at site "
                             f"({self.layer}, {self.kind}): a tensor or a tuple of (B, T, D) tensors is needed")
        layouts[(self.layer, self.kind)] = [None if p is None else p.shape[1] for p in parts]  # None: a part that is None
        return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=1)

    def _unflat(self, out):
        layout = self.controller.state.layouts.get((self.layer, self.kind))
        if layout is None:
            return out
        sizes = [n for n in layout if n is not None]
        pieces = iter(out.split(sizes, dim=1))
        return tuple(None if n is None else next(pieces) for n in layout)

    def __call__(self, *args, **kwargs):
        if args:
            self.keyword = False
            z, args = args[0], args[1:]
        elif "hidden_states" in kwargs:
            self.keyword = True
            kwargs = dict(kwargs)
            z = kwargs.pop("hidden_states")
        else:
            raise TypeError(f"lazydit's wrapper of {type(self.module).__name__} needs its input as the first "
                            f"argument or as hidden_states=")
        out = self.controller.lazy_forward(self.layer, self.kind, self._flat, z, *args, **kwargs)
        return self._unflat(out)


def remove_lazy(model: nn.Module) -> LazyController | None:
    """Undo `apply_lazy`; returns the detached controller (or None if there was none)."""
    controller = getattr(model, _ATTR, None)
    if controller is None:
        return None
    for _, _, module in lazy_targets(model)[0]:
        if hasattr(module, "_lazydit_orig_forward"):
            del module.forward  # drops the instance attribute, exposing the class method
            del module._lazydit_orig_forward
    object.__setattr__(model, _ATTR, None)
    return controller


def get_controller(model: nn.Module) -> LazyController | None:
    return getattr(model, _ATTR, None)
