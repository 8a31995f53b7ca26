"""Command-line options derived from a config dataclass, so that one field adds one option.

A field's `metadata` holds its flag's facts; none is required:

- "flag": the option string (default: --field-name; for a bool defaulting to True, --no-field-name,
  which stores False);
- "help", "choices": as in argparse;
- "type": a parser, either a callable or a name in `cli_args.PARSERS` (default: from the
  annotation: int, float or str, also with `| None`);
- "cli": False keeps the field off the command line (it then keeps its default).

The parsed value lands under the field's own name (`dest`), and `config_from_args` builds the
config from those values. Validation stays in the dataclass's `validate()`.
"""
from __future__ import annotations

import argparse
import dataclasses

from .cli_args import PARSERS

_ANNOTATION_TYPES = {"int": int, "float": float, "str": str}


def cli_fields(cls) -> list:
    """The fields of `cls` that are command-line options."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"field {f.name} has no default, so it cannot be an optional flag")


def _parser(cls, f: dataclasses.Field):
    kind = f.metadata.get("type")
    if callable(kind):
        return kind
    if kind is not None:
        return PARSERS[kind]
    # "int", "float | None", ... (annotations are strings under `from __future__ import annotations`)
    base = getattr(f.type, "__name__", str(f.type)).removesuffix(" | None")
    if base not in _ANNOTATION_TYPES:
        raise TypeError(f"{cls.__name__}.{f.name}: give its flag a parser with metadata 'type' ({f.type})")
    return _ANNOTATION_TYPES[base]


def add_config_args(parser, cls) -> None:
    """One option per field of the config dataclass `cls` (see the module docstring)."""
    for f in cli_fields(cls):
        meta, default = f.metadata, _default(f)
        kw = {"dest": f.name, "default": default, "help": meta.get("help")}
        if f.type in ("bool", bool):
            flag = meta.get("flag") or ("--no-" if default else "--") + f.name.replace("_", "-")
            parser.add_argument(flag, action="store_false" if default else "store_true", **kw)
            continue
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        if "choices" in meta:
            kw["choices"] = list(meta["choices"])
        else:  # named after the flag, as argparse would without `dest`
            kw["metavar"] = flag[2:].replace("-", "_").upper()
        parser.add_argument(flag, type=_parser(cls, f), **kw)


def config_from_args(cls, args):
    """The config `cls` from the options `add_config_args` added to the parser that parsed `args`."""
    return cls(**{f.name: getattr(args, f.name) for f in cli_fields(cls)})


class DeferredParser(argparse.ArgumentParser):
    """A subcommand parser that runs its `defer`red option builders on first use (parse, usage or
    help). Building the `lazydit` parser then imports no subcommand's config module: the training
    code imports torch._dynamo, seconds of start-up that no other subcommand should pay."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._deferred = []

    def defer(self, build) -> None:
        self._deferred.append(build)

    def _complete(self):
        while self._deferred:
            self._deferred.pop(0)(self)

    def parse_known_args(self, args=None, namespace=None):
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_usage(self):
        self._complete()
        return super().format_usage()

    def format_help(self):
        self._complete()
        return super().format_help()


def add_config_args_later(parser, load_cls) -> None:
    """`add_config_args(parser, load_cls())` on the parser's first use if it is a `DeferredParser`
    (as `lazydit`'s subcommands are), else now."""
    build = lambda p: add_config_args(p, load_cls())  # noqa: E731
    if isinstance(parser, DeferredParser):
        parser.defer(build)
    else:
        build(parser)
