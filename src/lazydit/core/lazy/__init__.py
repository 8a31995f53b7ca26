from .apply import apply_lazy, get_controller, lazy_targets, register_targets, remove_lazy
from .config import KINDS, LazyConfig
from .controller import LazyController
from .stats import LazyStats
from .gatefile import load_gates, read_gates, save_gates
from . import patterns
# Registration only (by class name). diffusers' DiT and PixArt are registered by
# lazydit.integrations.diffusers, which `lazy_targets` imports when it first meets one of them.
from . import targets_large_dit  # noqa: F401  Large-DiT

__all__ = ["apply_lazy", "remove_lazy", "get_controller", "lazy_targets", "register_targets", "KINDS",
           "LazyConfig", "LazyController", "LazyStats", "load_gates", "read_gates", "save_gates", "patterns"]
