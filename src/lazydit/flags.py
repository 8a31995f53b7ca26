"""The options several `lazydit` commands and library configs share, each flag declared once.

A Config is a dataclass whose fields are its options (`lazydit.cli_config` turns each field into a
flag). The helpers here return such fields: the flag, its parser and its meaning are fixed here,
and a Config gives only what differs in it (a default, sometimes a help text). They live below the
commands so that the library's own configs (`GateTrainConfig`, `PretrainConfig`) use them too.
Parsers are named (`cli_args.PARSERS`), so this module imports nothing of the command line.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import MISSING, field

from .core.models import EMBEDDED

REUSE = ("copy", "taylor1", "taylor2")  # what a skip returns without fitting (train-gates adds fit1..3)


def option(default=MISSING, *, flag: str | None = None, type=None, choices=None, help: str | None = None,
           **more) -> dataclasses.Field:
    """A Config field that is one flag (metadata as `lazydit.cli_config` reads it); no default: required."""
    meta = {k: v for k, v in dict(flag=flag, type=type, choices=choices, help=help, **more).items() if v is not None}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def group(cls, **defaults) -> dataclasses.Field:
    """A Config field holding the option group `cls`, with this command's own defaults for it."""
    return field(default_factory=lambda: cls(**defaults))


# ---- options of one flag ---------------------------------------------------------------------
MODEL_HELP = (f"zoo name (default {EMBEDDED}, the shipped tiny model), Flux-FMNIST (the shipped tiny FLUX "
              f"pipeline), or a local diffusers folder (a DiT transformer or pipeline; FLUX, SD3, Qwen-Image, "
              f"Wan or HunyuanVideo pipelines for train-gates and compare)")


def model(default: str | None = EMBEDDED, help: str = MODEL_HELP, choices: tuple | None = None):
    return option(default, flag="--model", choices=choices, help=help)


def image_size(default: int | None = None, help: str = "model input side (latent side for latent DiTs)"):
    return option(default, flag="--image-size", type="positive_int", help=help)


def device():
    return option("cpu", flag="--device", type="device")


def steps(default: int | None = 50, help: str | None = None, positive: bool = False):
    """Sampling steps N; `positive` refuses N < 1 at parse time (the commands that did so before)."""
    return option(default, flag="--steps", type="positive_int" if positive else int, help=help)


def cfg_scale(default: float | None, help: str | None = None):
    return option(default, flag="--cfg-scale", type=float, help=help)


def reuse(default: str | None, help: str | None = None, choices: tuple = REUSE):
    return option(default, flag="--reuse", choices=choices, help=help)


def eta(help: str | None = None):
    return option(0.0, flag="--eta", type=float, help=help)


def guide_all_channels():
    return option(False, flag="--guide-all-channels", help="CFG on all eps channels, not DiT's first 3")


def gates(help: str = "gate file from `lazydit train-gates`", positional: bool = False):
    if positional:
        return option(help=help, positional=True)
    return option(None, flag="--gates", help=help)


def skip_schedule(help: str, required: bool = False):
    return option(MISSING if required else None, flag="--skip-schedule", aliases=("--schedule",), help=help)


def labels(default: list):
    return option(default, flag="--labels", type="labels", help="comma-separated class labels")


def seed(help: str | None = None):
    return option(0, flag="--seed", type="seed", help=help)


def threads(default: int | None = None, help: str | None = None):
    return option(default, flag="--threads", type="positive_int", help=help)


def batch_size(default: int, help: str | None = None):
    return option(default, flag="--batch-size", type=int, help=help)


def warmup(default: int = 1, help: str | None = None):
    return option(default, flag="--warmup", type=int, help=help)


def repeats(default: int, help: str | None = None, positive: bool = False):
    return option(default, flag="--repeats", type="positive_int" if positive else int, help=help)


def lazy_ratio(default: float | None, help: str | None = None):
    return option(default, flag="--lazy-ratio", type=float, help=help)


def out_dir(default: str = MISSING, help: str | None = None):
    """--out FOLDER; an existing file of that name is refused at parse time."""
    return option(default, flag="--out", type="out_dir", help=help)


def out_file(default: str | None = MISSING, help: str | None = None, flag: str = "--out"):
    """--out FILE; an existing folder of that name is refused at parse time."""
    return option(default, flag=flag, type="out_file", help=help)


def resume():
    return option(False, flag="--resume", help="continue from OUT/checkpoint.safetensors")


def prompts(help: str):
    return option(None, flag="--prompts", help=help)


PIPE_KWARGS_HELP = "with --model PIPELINE: more pipe(...) arguments as JSON; --image-size sets height and width"


def pipe_kwargs(help: str = PIPE_KWARGS_HELP):
    return option(None, flag="--pipe-kwargs", type="json_object", help=help)
