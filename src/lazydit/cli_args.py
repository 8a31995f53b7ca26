"""Argument types (argparse `type=` parsers) of the `lazydit` flags: each refuses a bad value at
parse time, before any work, with a one-line error.

The leaf of the CLI's imports: cli_config.py and lazydit.commands import from here, and this
module imports none of them.
"""
from __future__ import annotations

import argparse
import os


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, refused at parse time rather than after work has started."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def seed_arg(text: str) -> int:
    """argparse type: a seed in [0, 2**40); seeds are offset and multiplied inside (training draws
    seed * 1,000,003 + ...), and torch generators take 64-bit values."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value < 2 ** 40:
        raise argparse.ArgumentTypeError(f"seed must be in [0, 2**40), got {value}")
    return value


def out_dir(text: str) -> str:
    """argparse type: an output folder; an existing file of that name is refused before any work."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} exists and is not a folder")
    return text


def out_file(text: str) -> str:
    """argparse type: an output file; an existing folder of that name is refused before any work."""
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    return text


def device_arg(text: str) -> str:
    """argparse type: a torch device this machine has."""
    import torch
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: this machine has no CUDA GPU (or torch is a CPU build)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text}: only {torch.cuda.device_count()} CUDA devices")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"unsupported device {text!r}; use cpu, cuda or cuda:N")
    return text


def int_list(text: str, what: str, example: str, minimum: int | None = None) -> list[int]:
    """argparse helper: comma-separated integers, none of them below `minimum`, and at least one."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{what} are empty; give comma-separated {what} such as {example}")
    if minimum is not None and min(values) < minimum:
        raise argparse.ArgumentTypeError(f"{what} must be >= {minimum}, got {text!r}")
    return values


def labels_arg(text: str) -> list[int]:
    """argparse type: comma-separated class labels."""
    return int_list(text, "labels", "1,2,3")


def ranks_arg(text: str) -> tuple:
    """argparse type: comma-separated ranks >= 1, or 'none' for an empty tuple."""
    if text.strip().lower() == "none":
        return ()
    try:
        ranks = tuple(int(r) for r in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"ranks must be comma-separated integers or 'none', got {text!r}") from None
    if any(r < 1 for r in ranks):
        raise argparse.ArgumentTypeError(f"ranks must be >= 1, got {text!r}")
    return ranks


# The parsers a config field's metadata may name as its "type" (the dataclasses cannot import them:
# the training code does not depend on the CLI).


def json_object(text: str) -> dict:
    import json
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"guidance_scale\": 3.5}'")
    return value


# The parsers a flag names in its field's metadata ("type": "seed"), so that `lazydit.flags` and the
# library's configs need not import this module.
PARSERS = {"positive_int": positive_int, "seed": seed_arg, "out_dir": out_dir, "out_file": out_file,
           "ranks": ranks_arg, "labels": labels_arg, "device": device_arg, "json_object": json_object}
