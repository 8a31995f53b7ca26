"""`lazydit.commands`: one module per subcommand holding its Config and run(cfg), shared options
declared once with each command's own defaults kept, and every output path checked before any work."""
import ast
import dataclasses
import importlib
import os
import pathlib

import pytest

from lazydit.cli import COMMANDS, build_parser, main

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "src" / "lazydit" / "commands"
SHARED = {"__init__", "options", "harness"}  # what several commands share; no subcommand


def test_one_module_per_subcommand_holding_config_and_run_only():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - SHARED
    assert {name.replace("-", "_") for name, _, _ in COMMANDS} == modules
    assert {module for _, module, _ in COMMANDS} == {f"lazydit.commands.{m}" for m in modules}
    for m in modules:
        tree = ast.parse((PACKAGE / f"{m}.py").read_text())
        public = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        public |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        assert {n for n in public if not n.startswith("_")} == {"Config", "run"}, m
        assert dataclasses.is_dataclass(importlib.import_module(f"lazydit.commands.{m}").Config)


# Flags several commands share, and the default each command has always given them.
DEFAULTS = {
    "cfg_scale": {"sample": 3.0, "sample-many": 1.5, "analyze": 1.5, "bench": None, "freeze": None, "demo": 3.0,
                  "compare": 3.0, "frontier": 3.0, "bench-deploy": 3.0, "train-gates": 3.0},
    "steps": {"sample": 50, "sample-many": 50, "analyze": 50, "macs": 50, "bench": None, "bench-deploy": 50,
              "import-gates": None, "pretrain": 6000},
    "reuse": {"sample": "copy", "sample-many": "copy", "demo": "taylor1", "compare": "taylor1",
              "frontier": "taylor1", "bench-deploy": "taylor1", "train-gates": None},
    "threads": {"bench": None, "bench-deploy": 1, "demo": None, "compare": None, "frontier": None, "pretrain": None},
    "name": {"sample": "DiT-FMNIST", "bench": "DiT-FMNIST", "export": None},  # --model
    "model": {"macs": "DiT-XL/2", "import-gates": "DiT-FMNIST", "pretrain": "DiT-FMNIST"},
    "image_size": {"sample": None, "macs": 256},
    "samples": {"demo": 16, "compare": 16, "frontier": 256},
    "fd": {"demo": False, "compare": True, "frontier": True},
    "diffusers_hooks": {"demo": ("TaylorSeerCache",), "compare": ("all",), "frontier": ("all",)},
    "warmup_images": {"demo": 1, "compare": None, "frontier": None},
    "out": {"sample": "out/sample", "sample-many": "out/samples", "demo": "out/demo", "compare": "out/compare",
            "frontier": "out/frontier", "bench": "out/bench", "analyze": "out/analyze",
            "bench-deploy": "out/bench-deploy", "inception": None},
}
REQUIRED = {"inception": ["s.npz", "--ref", "r.npz", "--weights", "w.pth"], "freeze": ["g", "--out", "o"],
            "export": ["--skip-schedule", "s", "--out", "o"], "import-gates": ["x", "--out", "o"]}


@pytest.mark.parametrize("flag", sorted(DEFAULTS))
def test_shared_options_keep_each_commands_default(flag):
    for command, want in DEFAULTS[flag].items():
        parsed = vars(build_parser().parse_args([command, *REQUIRED.get(command, [])]))
        assert parsed[flag] == want, (command, flag)


def test_a_group_takes_each_commands_defaults_and_the_parsed_flags():
    from lazydit.cli_config import config_from_args
    from lazydit.commands import sample_many
    args = build_parser().parse_args(["sample-many", "--steps", "7", "--ckpt", "c.safetensors"])
    cfg = config_from_args(sample_many.Config, args)
    assert (cfg.sampling.steps, cfg.sampling.cfg_scale, cfg.model.checkpoint) == (7, 1.5, "c.safetensors")
    assert config_from_args(sample_many.Config, build_parser().parse_args(["sample-many"])) == sample_many.Config()


# Every command that writes, pointed under an existing file; its inputs do not exist either, so
# an error about them would mean work began before the output was checked.
WRITERS = {
    "pretrain": [], "sample": ["--gates", "missing.safetensors"], "train-gates": ["--mode", "paper", "--source",
                                                                                "dataset", "--dataset", "missing.npz"],
    "demo": [], "compare": ["--ckpt", "missing.safetensors"], "frontier": ["--ckpt", "missing.safetensors"],
    "bench": ["--gates", "missing.safetensors"], "sample-many": ["--gates", "missing.safetensors"],
    "analyze": ["--ckpt", "missing.safetensors"], "bench-deploy": ["--skip-schedule", "missing.safetensors"],
    "inception": ["missing.npz", "--ref", "missing.npz", "--weights", "missing.pth"],
    "freeze": ["missing.safetensors"], "export": ["--skip-schedule", "missing.safetensors"],
    "import-gates": ["missing.pt"], "macs": ["--model", "DiT-Q/2"],
}


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_every_output_is_checked_before_any_work(command, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    out = ["--json" if command == "macs" else "--out", str(blocker / "sub" / ("o.safetensors" if command in (
        "freeze", "import-gates", "inception", "macs") else "run"))]
    assert main([command, *WRITERS[command], *out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lazydit {command}: error: cannot write") and "exists and is not a folder" in err
    assert len(err.splitlines()) == 1 and sorted(os.listdir(tmp_path)) == ["a-file"]
