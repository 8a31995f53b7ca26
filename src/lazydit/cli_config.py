"""Command-line options derived from a config dataclass, so that one field adds one option.

A field's `metadata` holds its flag's facts; none is required:

- "flag": the option string (default: --field-name; for a bool defaulting to True, --no-field-name,
  which stores False);
- "aliases": older spellings of the flag that still work (help names them), so that renaming an
  option breaks no script;
- "help", "choices": as in argparse;
- "type": a parser, either a callable or a name in `cli_args.PARSERS` (default: from the
  annotation: int, float or str, also with `| None`);
- "positional": True makes it a positional argument (named after the field; no default);
- "negatable": True makes a bool (or `bool | None`) one --flag/--no-flag pair;
- "cli": False keeps the field off the command line (it then keeps its default).

A field without a default is a required option. A field whose default is a dataclass instance is a
group of options (`lazydit.commands.options.ModelOptions`, say): its fields become options of
their own, with that instance's values as their defaults, so that a command can compose a shared
group and still give it its own defaults.

The parsed value lands under the field's own name (`dest`), and `config_from_args` builds the
config from those values. Validation stays in the dataclass's `validate()`.
"""
from __future__ import annotations

import argparse
import dataclasses

from .cli_args import PARSERS

_ANNOTATION_TYPES = {"int": int, "float": float, "str": str}


def cli_fields(cls) -> list:
    """The fields of `cls` that are command-line options (or groups of them)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _is_group(value) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _options(cls, defaults=None):
    """(field, default) of every option of `cls`, groups flattened; `defaults` is the instance
    whose values a group's options default to."""
    for f in cli_fields(cls):
        default = _default(f) if defaults is None else getattr(defaults, f.name)
        if _is_group(default):
            yield from _options(type(default), default)
        else:
            yield f, default


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


def _add(parser, cls, f: dataclasses.Field, default) -> None:
    meta = f.metadata
    aliases = tuple(meta.get("aliases", ()))
    help = meta.get("help")
    if aliases:
        help = f"{help or ''} (also accepted: {', '.join(aliases)})".lstrip()
    kw = {"dest": f.name, "help": help}
    if default is dataclasses.MISSING:
        kw["required"] = True
    else:
        kw["default"] = default
    if meta.get("positional"):  # argparse names a positional by its dest, and requires it
        if default is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: a positional argument takes no default")
        parser.add_argument(f.name, type=_parser(cls, f), help=kw["help"])
        return
    if meta.get("negatable"):
        parser.add_argument(meta.get("flag") or "--" + f.name.replace("_", "-"), *aliases,
                            action=argparse.BooleanOptionalAction, **kw)
        return
    if f.type in ("bool", bool):
        flag = meta.get("flag") or ("--no-" if default else "--") + f.name.replace("_", "-")
        parser.add_argument(flag, *aliases, action="store_false" if default else "store_true", **kw)
        return
    flag = meta.get("flag") or "--" + f.name.replace("_", "-")
    if "choices" in meta:
        kw["choices"] = list(meta["choices"])
    else:  # named after the flag, as argparse would without `dest`
        kw["metavar"] = flag[2:].replace("-", "_").upper()
    parser.add_argument(flag, *aliases, type=_parser(cls, f), **kw)


def add_config_args(parser, cls) -> None:
    """One option per field of the config dataclass `cls`, groups flattened (see the module docstring)."""
    seen = set()
    for f, default in _options(cls):
        if f.name in seen:  # two fields of one name would share one parsed value
            raise TypeError(f"{cls.__name__}: two options store into {f.name!r}; rename one field")
        seen.add(f.name)
        _add(parser, cls, f, default)


def config_from_args(cls, args, defaults=None):
    """The config `cls` from the options `add_config_args` added to the parser that parsed `args`."""
    values = {}
    for f in cli_fields(cls):
        default = _default(f) if defaults is None else getattr(defaults, f.name)
        values[f.name] = config_from_args(type(default), args, default) if _is_group(default) else getattr(args, f.name)
    return cls(**values) if defaults is None else dataclasses.replace(defaults, **values)


class DeferredParser(argparse.ArgumentParser):
    """A subcommand parser that runs its `defer`red option builders on first use (parse, usage or
    help). Building the `lazydit` parser then imports no subcommand's module: the training code
    imports torch._dynamo, seconds of start-up that no other subcommand should pay."""

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
