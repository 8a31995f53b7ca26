"""The `train-gates` and `pretrain` options are derived from their config dataclasses (one field, one
flag), the parser imports a command only when it is used, and the CLI and lazy core import as a
tree: no cycle, no integration pulled into the core."""
import dataclasses
import subprocess
import sys

import pytest

from lazydit.cli import build_parser, main
from lazydit.cli_config import cli_fields
from lazydit.train.gates import GateTrainConfig
from lazydit.train.pretrain import PretrainConfig

# Fields deliberately kept off the command line (metadata "cli": False), per config. None today.
EXCLUDED = {GateTrainConfig: set(), PretrainConfig: set()}
COMMAND = {GateTrainConfig: "train-gates", PretrainConfig: "pretrain"}


@pytest.fixture
def built(monkeypatch):
    """Runs `lazydit CMD ...` through `main` up to the config it builds, and returns that config."""
    seen = []

    def capture_gates(self):  # train-gates validates before loading the model
        seen.append(self)
        raise ValueError("captured")

    def capture_pretrain(cfg, resume=False):
        seen.append(cfg)
        return "unused"

    monkeypatch.setattr(GateTrainConfig, "validate", capture_gates)
    monkeypatch.setattr("lazydit.train.pretrain.pretrain", capture_pretrain)

    def run(argv):
        main(argv)
        assert len(seen) == 1, "the command did not build its config"
        return seen.pop()
    return run


@pytest.mark.parametrize("cls", [GateTrainConfig, PretrainConfig])
def test_every_config_field_has_a_flag(cls):
    parsed = vars(build_parser().parse_args([COMMAND[cls]]))
    names = {f.name for f in dataclasses.fields(cls)}
    assert {f.name for f in cli_fields(cls)} == names - EXCLUDED[cls]
    missing = sorted(n for n in names - EXCLUDED[cls] if n not in parsed)
    assert not missing, f"{cls.__name__} fields without a `lazydit {COMMAND[cls]}` flag: {missing}"


@pytest.mark.parametrize("cls", [GateTrainConfig, PretrainConfig])
def test_parsed_defaults_are_the_dataclass_defaults(cls, built):
    assert built([COMMAND[cls]]) == cls()


def test_train_gates_flags_set_their_fields(built, tmp_path):
    argv = ["train-gates", "--dual-lr", "0.25", "--rho-init", "1e-4", "--step-weights", "uniform", "--no-calibrate",
            "--no-auto-cap", "--label-dropout", "0.2", "--calib-images", "6", "--steps", "20", "--out",
            str(tmp_path / "g"), "--correction-ranks", "none", "--target-lazy", "0.5", "--reuse", "fit3",
            "--max-skip-run", "3", "--mode", "placement", "--seed", "7", "--ckpt-every", "9", "--rho-attn", "0.002"]
    assert built(argv) == GateTrainConfig(
        dual_lr=0.25, rho_init=1e-4, step_weights="uniform", calibrate=False, auto_cap=False, label_dropout=0.2,
        calib_images=6, num_steps=20, out_dir=str(tmp_path / "g"), correction_ranks=(), target_lazy=0.5,
        reuse="fit3", max_skip_run=3, mode="placement", seed=7, ckpt_every=9, rho_attn=0.002)


def test_pretrain_flags_set_their_fields(built, tmp_path):
    argv = ["pretrain", "--out", str(tmp_path / "p"), "--data-dir", "d", "--steps", "3", "--batch-size", "4",
            "--lr", "0.01", "--warmup", "0", "--ema-decay", "0.5", "--ckpt-every", "2", "--seed", "3", "--threads", "2"]
    assert built(argv) == PretrainConfig(out_dir=str(tmp_path / "p"), data_dir="d", steps=3, batch_size=4, lr=0.01,
                                         warmup=0, ema_decay=0.5, ckpt_every=2, seed=3, threads=2)


@pytest.mark.parametrize("argv", [["train-gates", "--step-weights", "equal"], ["train-gates", "--ckpt-every", "0"],
                                  ["train-gates", "--seed", "-1"], ["pretrain", "--threads", "0"]])
def test_field_parsers_refuse_at_parse_time(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "error: argument" in capsys.readouterr().err


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_command_modules_do_not_import_the_cli():
    out = _fresh("import importlib, sys\nfrom lazydit.cli import COMMANDS\ndel sys.modules['lazydit.cli']\n"
                 "for _, module, _ in COMMANDS:\n    importlib.import_module(module)\n"
                 "print('lazydit.cli' in sys.modules)")
    assert out == "False"


def test_lazydit_help_imports_no_command():
    """Listing the subcommands imports none of them (train-gates' would pull in torch._dynamo)."""
    out = _fresh("import sys\nfrom lazydit.cli import build_parser\nbuild_parser().format_help()\n"
                 "print(sorted(m for m in sys.modules if m.startswith(('lazydit.commands', 'lazydit.train', "
                 "'torch._dynamo'))))")
    assert out == "[]"


def test_lazy_core_does_not_import_the_diffusers_integration_until_it_meets_a_diffusers_model():
    # A stand-in for diffusers' DiTTransformer2DModel: the same name, module and layout, without diffusers.
    code = """
import sys
import torch.nn as nn
from types import SimpleNamespace
import lazydit.core.lazy
before = "lazydit.integrations.diffusers" in sys.modules or "lazydit.cli" in sys.modules
class DiTTransformer2DModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(num_attention_heads=2, attention_head_dim=4)
        self.transformer_blocks = nn.ModuleList(
            nn.ModuleDict({"attn1": nn.Linear(8, 8), "ff": nn.Linear(8, 8)}) for _ in range(2))
DiTTransformer2DModel.__module__ = "diffusers.models.transformers.dit_transformer_2d"
ctrl = lazydit.core.lazy.apply_lazy(DiTTransformer2DModel(), 4)
print(before, "lazydit.integrations.diffusers" in sys.modules, ctrl.depth, ctrl.dim)
"""
    assert _fresh(code) == "False True 2 8"


def test_import_lazydit_stays_light():
    out = _fresh("import sys, lazydit; print(sorted(m for m in sys.modules if m.split('.')[0] in "
                 "('torch', 'diffusers', 'lazydit')))")
    assert out == "['lazydit']"


def test_groups_positionals_required_and_pairs():
    """A group's flags default to the instance a Config holds; a field without a default is
    required; two fields storing into one name are refused rather than sharing a value."""
    import argparse
    from dataclasses import dataclass, field

    from lazydit.cli_config import add_config_args, config_from_args

    @dataclass
    class Group:
        steps: int = 50
        fast: bool | None = field(default=None, metadata={"negatable": True})

    @dataclass(kw_only=True)
    class Config:
        source: str = field(metadata={"positional": True})
        out: str = field(metadata={"flag": "--out"})
        group: Group = field(default_factory=lambda: Group(steps=7))

    p = argparse.ArgumentParser()
    add_config_args(p, Config)
    assert config_from_args(Config, p.parse_args(["a", "--out", "o"])) == Config(source="a", out="o")
    assert config_from_args(Config, p.parse_args(["a", "--out", "o", "--steps", "3", "--no-fast"])).group == \
        Group(steps=3, fast=False)
    with pytest.raises(SystemExit):
        p.parse_args(["a"])  # --out is required

    @dataclass
    class Twice:
        steps: int = 1
        group: Group = field(default_factory=Group)
    with pytest.raises(TypeError, match="two options store into 'steps'"):
        add_config_args(argparse.ArgumentParser(), Twice)


@pytest.mark.parametrize("command, flag", [("sample", "--schedule"), ("export", "--schedule"),
                                           ("bench-deploy", "--schedule")])
def test_renamed_flags_keep_their_old_spelling_and_help_says_so(command, flag):
    """A renamed option still parses under its old name, into the same field, and --help lists it."""
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    new = {"--schedule": "--skip-schedule"}[flag]
    assert sub.parse_known_args([flag, "f.safetensors", "--out", "o"])[0].skip_schedule == "f.safetensors"
    assert sub.parse_known_args([new, "f.safetensors", "--out", "o"])[0].skip_schedule == "f.safetensors"
    assert f"also accepted: {flag}" in " ".join(sub.format_help().split())


def test_train_gates_mode_schedule_is_the_old_name_of_placement(built, tmp_path):
    cfg = built(["train-gates", "--mode", "schedule", "--target-lazy", "0.5", "--out", str(tmp_path / "g")])
    assert cfg.mode == "placement" and cfg.train_mode == "placement"
    assert GateTrainConfig(mode="schedule") == GateTrainConfig(mode="placement")


def test_each_flag_is_declared_in_one_place():
    """A flag string given in two places (`flag="--steps"` or `{"flag": "--steps"}`) would drift
    apart in default, parser or meaning; shared flags come from `lazydit.flags`."""
    import ast
    import collections
    import pathlib
    import lazydit
    places = collections.defaultdict(list)
    for path in pathlib.Path(lazydit.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            pairs = [(node.arg, node.value)] if isinstance(node, ast.keyword) else \
                list(zip(node.keys, node.values)) if isinstance(node, ast.Dict) else []
            for key, value in pairs:
                key = key.value if isinstance(key, ast.Constant) else key
                if key == "flag" and isinstance(value, ast.Constant):
                    places[value.value].append(f"{path.name}:{node.lineno}")
    assert "--steps" in places and "--cfg-scale" in places  # the scan sees the declarations
    twice = {flag: where for flag, where in places.items() if len(where) > 1}
    assert not twice, f"flags declared in more than one place: {twice}"
