"""`lazydit` command line: each subcommand builds its config dataclass and calls the library."""
from __future__ import annotations

import argparse
import sys


def _pretrain(sub):
    p = sub.add_parser("pretrain", help="train a class-conditional DiT on Fashion-MNIST from scratch")
    p.add_argument("--out", default="runs/pretrain", help="output folder (checkpoint, log, ema weights)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")

    def run(a):
        from .train.pretrain import PretrainConfig, pretrain
        if a.steps < 1 or a.batch_size < 1:
            raise ValueError("--steps and --batch-size must be positive")
        cfg = PretrainConfig(out_dir=a.out, data_dir=a.data_dir, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                             ema_decay=a.ema_decay, ckpt_every=a.ckpt_every, seed=a.seed, threads=a.threads)
        print(f"EMA weights written to {pretrain(cfg, resume=a.resume)}")
    p.set_defaults(func=run)


def _labels(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"labels must be comma-separated integers, got {text!r}") from None


def add_model_args(p):
    """Arguments shared by every command that loads a model."""
    from .models import EMBEDDED
    p.add_argument("--model", default=EMBEDDED, help=f"zoo name (default {EMBEDDED}, the shipped tiny model)")
    p.add_argument("--ckpt", default=None, help="checkpoint (.safetensors, or a third-party .pt read weights-only)")
    p.add_argument("--random-init", action="store_true", help="random weights for a zoo model (smoke tests)")
    p.add_argument("--image-size", type=int, default=None, help="model input side (latent side for latent DiTs)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--device", default="cpu")


def _sample(sub):
    p = sub.add_parser("sample", help="generate a grid (PNG) and an .npz, optionally with lazy gates")
    add_model_args(p)
    p.add_argument("--gates", default=None, help="gate file from `lazydit train-gates`")
    p.add_argument("--force-skip", default=None, help="static skip pattern instead of gates: every:N or fraction:F")
    p.add_argument("--max-skip-run", type=int, default=None, help="at most this many consecutive skips per module")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--cfg-scale", type=float, default=3.0)
    p.add_argument("--guide-all-channels", action="store_true", help="CFG on all eps channels, not DiT's first 3")
    p.add_argument("--labels", type=_labels, default=list(range(10)), help="comma-separated class labels")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed+i")
    p.add_argument("--noise", default=None, help=".npy of initial noise, shape (B, C, H, W)")
    p.add_argument("--out", default="out/sample")

    def run(a):
        from .sample import SampleConfig, run_sample
        cfg = SampleConfig(model=a.model, checkpoint=a.ckpt, random_init=a.random_init, image_size=a.image_size,
                           num_classes=a.num_classes, gates=a.gates, force_skip=a.force_skip,
                           max_skip_run=a.max_skip_run, steps=a.steps, sampler=a.sampler, eta=a.eta,
                           cfg_scale=a.cfg_scale, guide_all_channels=a.guide_all_channels, labels=a.labels,
                           seed=a.seed, noise=a.noise, out_dir=a.out, device=a.device)
        gen = run_sample(cfg)
        n = len(cfg.labels)
        print(f"{n} images in {gen.seconds:.2f} s ({gen.seconds / n:.3f} s/image), written to {cfg.out_dir}")
        if gen.stats is not None:
            s = gen.stats.summary()
            print(f"lazy ratio {s['lazy_ratio']:.3f} (attn {s['attn']:.3f}, ffn {s['ffn']:.3f})")
    p.set_defaults(func=run)


COMMANDS = [_pretrain, _sample]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lazydit", description="Learned lazy sampling for Diffusion Transformers")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ValueError as e:
        print(f"lazydit {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
