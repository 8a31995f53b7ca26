from .apply import apply_lazy, get_controller, lazy_targets, register_targets, remove_lazy
from .controller import KINDS, LazyConfig, LazyController, LazyStats
from .gatefile import load_gates, read_gates, save_gates
from . import patterns
# Registration only (by class name); neither import loads a third-party package.
from . import targets_large_dit  # noqa: F401  Large-DiT
from ..integrations import diffusers as _diffusers  # noqa: F401  diffusers' DiT and PixArt

__all__ = ["apply_lazy", "remove_lazy", "get_controller", "lazy_targets", "register_targets", "KINDS",
           "LazyConfig", "LazyController", "LazyStats", "load_gates", "read_gates", "save_gates", "patterns"]
