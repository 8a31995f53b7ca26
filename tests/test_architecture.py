"""Imports run one way: commands -> the middle tier -> core, and no package closes a circle.

Every module under src/lazydit is parsed with `ast` (nothing is imported). Imports inside functions
count: a deferred import is still an arrow, only a later one. So does a string that is exactly a
module's dotted name, since it is there to be loaded with importlib. The tiers and the layout are
drawn in docs/architecture.md; a new package or top-level module must be placed in a tier here.
"""
from __future__ import annotations

import ast
import pathlib

SRC = pathlib.Path(__file__).resolve().parent.parent / "src" / "lazydit"

# A unit is a subpackage (lazydit.train) or a top-level module (lazydit.pipeline); inside a group
# folder such as core/, each subpackage is a unit of its own (core.models), placed by its group.
GROUPS = {"core"}
CORE = {"lazydit", "core", "data", "io"}
MIDDLE = {"flags", "train", "eval", "integrations", "export", "deploy", "pipeline", "loading", "images", "metrics", "rivals"}
TOP = {"cli", "cli_args", "cli_config", "commands"}
# The package of the subcommands: each module but these is one subcommand, and only the parser imports it.
PARSER = "lazydit.cli"
SHARED = {"lazydit.commands", "lazydit.commands.options", "lazydit.commands.harness"}
RANK = {"core": 0, "middle": 1, "top": 2}

# Known violations, (importer, imported) modules, each with the reason it is still here.
# Each fix removes its line; the goal is an empty dict.
ALLOWED: dict[tuple[str, str], str] = {}


def _modules(src: pathlib.Path = SRC) -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules) -> str | None:
    """The module that `name` (a module or a name inside one) is read from."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in modules else None


def _imports(module: str, path: pathlib.Path, modules) -> set[str]:
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            # `from pkg import sub` is an arrow to pkg.sub only, not to pkg's __init__ as well
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
            names = [node.value]  # a module named whole in a string is loaded by name (importlib)
        else:
            continue
        for name in names:
            target = _resolve(name, modules) if name.split(".")[0] == "lazydit" else None
            if target is not None and target != module:
                found.add(target)
    return found


def _graph(src: pathlib.Path = SRC) -> dict[str, set[str]]:
    modules = _modules(src)
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _unit(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in GROUPS:
        return ".".join(parts[1:3])
    return parts[1] if len(parts) > 1 else parts[0]


def _tier(module: str) -> str:
    unit = _unit(module).split(".")[0]
    for tier, units in (("core", CORE), ("middle", MIDDLE), ("top", TOP)):
        if unit in units:
            return tier
    raise AssertionError(f"{module} is in no tier: place {unit} in CORE, MIDDLE or TOP of {__file__}")


def _is_command(module: str) -> bool:
    return module.startswith("lazydit.commands.") and module not in SHARED


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1; stack.append(root); on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]; counter[0] += 1; stack.append(child); on.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop(); on.discard(top); comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _arrows():
    return [(src, dst) for src, dsts in _graph().items() for dst in sorted(dsts) if (src, dst) not in ALLOWED]


def test_every_module_has_a_tier():
    for module in _graph():
        _tier(module)


def test_no_import_runs_upward():
    up = [f"{s} ({_tier(s)}) -> {d} ({_tier(d)})" for s, d in _arrows() if RANK[_tier(s)] < RANK[_tier(d)]]
    assert not up, "imports that run up a tier:\n" + "\n".join(up)


def test_no_module_imports_a_command():
    """A command module (`lazydit sample` is lazydit.commands.sample) is imported by the parser
    alone: what other code needs from one belongs in commands/options.py, or a tier lower."""
    bad = [f"{s} -> {d}" for s, d in _arrows() if _is_command(d) and s != PARSER]
    assert not bad, "imports of a command module:\n" + "\n".join(bad)


def test_no_circle_between_packages():
    units: dict[str, set[str]] = {}
    for s, d in _arrows():
        units.setdefault(_unit(s), set())
        if _unit(s) != _unit(d):
            units[_unit(s)].add(_unit(d))
    circles = _cycles(units)
    assert not circles, f"packages that import each other: {circles}"


def test_no_circle_between_modules():
    graph: dict[str, set[str]] = {}
    for s, d in _arrows():
        graph.setdefault(s, set()).add(d)
    circles = _cycles(graph)
    assert not circles, f"modules that import each other: {circles}"


def test_allow_list_holds_only_live_arrows():
    """An entry whose arrow is gone must leave the list, so that it only shrinks."""
    graph = _graph()
    stale = [f"{s} -> {d}" for s, d in ALLOWED if d not in graph.get(s, ())]
    assert not stale, "fixed, remove from ALLOWED: " + ", ".join(stale)


def test_the_reader_sees_deferred_relative_and_named_imports(tmp_path):
    """The checks above are only as good as the arrows read: a deferred relative import, a
    `from package import module`, and a module named in a string all count; `from pkg import name`
    is an arrow to pkg's __init__, not to every module beside it."""
    src = tmp_path / "lazydit"
    files = {"__init__.py": "", "core/__init__.py": "", "core/lazy/__init__.py": "from .a import f\n",
             "core/lazy/a.py": "def f():\n    from ...train import gates\n",
             "core/lazy/b.py": "X = 'lazydit.eval.run'\n", "train/__init__.py": "",
             "train/gates.py": "from ..core.lazy import f\n", "eval/__init__.py": "", "eval/run.py": ""}
    for name, text in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    graph = _graph(src)
    assert graph["lazydit.core.lazy.a"] == {"lazydit.train.gates"}
    assert graph["lazydit.core.lazy.b"] == {"lazydit.eval.run"}
    assert graph["lazydit.train.gates"] == {"lazydit.core.lazy"}
    assert graph["lazydit.core.lazy"] == {"lazydit.core.lazy.a"}
    assert _cycles(graph) == [sorted(["lazydit.core.lazy", "lazydit.core.lazy.a", "lazydit.train.gates"])]
    tiers = [_tier(m) for m in ("lazydit.core.lazy.a", "lazydit.train.gates", "lazydit.eval.run")]
    assert tiers == ["core", "middle", "middle"]


def test_core_finds_the_diffusers_integration_through_its_entry_point():
    """core names no integration: the package metadata declares it (pyproject's
    `lazydit.targets` entry points), so a diffusers transformer needs no import first."""
    from lazydit.core.lazy.apply import ENTRY_POINTS, _integrations
    assert ENTRY_POINTS == "lazydit.targets"
    assert _integrations()["diffusers"] == "lazydit.integrations.diffusers"
