"""`lazydit` command line: one subcommand per module of `lazydit.commands`, its flags derived from
that module's `Config` (see `cli_config`), and `run(Config)` called with what was parsed."""
from __future__ import annotations

import argparse
import importlib
import sys

from .cli_config import DeferredParser, add_config_args_later, config_from_args

# (subcommand, its module, its line in `lazydit --help`). The help lives here, not in the module,
# so that listing the subcommands imports none of them: a module imports its Config's code, for
# train-gates the training code and torch._dynamo, seconds that no other subcommand should pay.
COMMANDS = (
    ("pretrain", "lazydit.commands.pretrain",
     "train a shipped model (DiT-FMNIST, or Flux-FMNIST with --model) on Fashion-MNIST from scratch"),
    ("sample", "lazydit.commands.sample", "generate a grid (PNG) and an .npz, optionally with lazy gates"),
    ("train-gates", "lazydit.commands.train_gates", "fit lazy gates with the backbone frozen (data-free by default)"),
    ("demo", "lazydit.commands.demo",
     "the whole method on both shipped models, the Fashion-MNIST DiT and the FLUX pipeline Flux-FMNIST, "
     "offline, in minutes"),
    ("compare", "lazydit.commands.compare", "learned gates against every rival on one harness (small, quick)"),
    ("frontier", "lazydit.commands.frontier",
     "compare with 256 images per method, 500-iteration gates and 95%% intervals"),
    ("macs", "lazydit.commands.macs",
     "MACs per module and per generation, thop ('linear') and with attention matmuls"),
    ("bench", "lazydit.commands.bench", "latency of DDIM-N, DDIM-k at matched MACs and lazy-N, against ideal MACs"),
    ("sample-many", "lazydit.commands.sample_many",
     "K images over uniform labels, sharded (torchrun) and resumable, merged into an ADM .npz"),
    ("inception", "lazydit.commands.inception",
     "FID, sFID, IS, precision/recall of an .npz against an ADM reference batch"),
    ("analyze", "lazydit.commands.analyze",
     "cosine similarity of module outputs between consecutive steps (paper Sec 3.2)"),
    ("freeze", "lazydit.commands.freeze",
     "turn a gate file into a static skip-schedule file (no gate scores at sampling)"),
    ("export", "lazydit.commands.export", "export a skip-schedule file and its model as an onnxruntime bundle"),
    ("bench-deploy", "lazydit.commands.bench_deploy",
     "time onnxruntime, torch eager and torch.compile frozen sampling"),
    ("import-gates", "lazydit.commands.import_gates",
     "convert an official LazyDiT lazy-learning checkpoint into a gate file"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lazydit", description="Learned lazy sampling for Diffusion Transformers")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=DeferredParser)
    for name, module, help in COMMANDS:
        p = sub.add_parser(name, help=help)
        add_config_args_later(p, lambda module=module: importlib.import_module(module).Config)
        p.set_defaults(command_module=module)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = importlib.import_module(args.command_module)  # imported already, by its flags
    try:
        command.run(config_from_args(command.Config, args))
    except ValueError as e:
        print(f"lazydit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # out of space; lazydit.io's DiskFullError names the artefact, not its temp file
        from .io import NO_SPACE
        if e.errno not in NO_SPACE:
            raise
        from tqdm import tqdm
        for bar in list(getattr(tqdm, "_instances", ())):  # end the bar the write cut short: the error comes last
            bar.close()
        where = f" writing {e.filename}" if e.filename else ""
        print(f"lazydit {args.command}: error: {e.strerror.lower()}{where}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
