"""Reproduce LazyDiT's Table 1 (DiT-XL/2, ImageNet 256 px, cfg 1.5): DDIM-N against lazy sampling at
matched MACs, 50k images per row, scored with ADM's FID / sFID / IS / precision / recall.

Needs, all as LOCAL files (nothing is downloaded):
  --ckpt       DiT-XL-2-256x256.pt (facebookresearch/DiT)
  --vae        a diffusers AutoencoderKL folder (DiT's default is stabilityai/sd-vae-ft-ema)
  --ref        ADM's reference batch VIRTUAL_imagenet256_labeled.npz
  --inception  pt_inception-2015-12-05-6726825d.pth (pytorch-fid's FID Inception weights)
  --gates      one gate file per lazy row, as STEPS:RATIO=PATH (e.g. 50:0.5=runs/g50/gates.safetensors).
               Gates must be trained first, one file per row, e.g.
                 lazydit train-gates --model DiT-XL/2 --ckpt DiT-XL-2-256x256.pt --image-size 32 \\
                     --steps 50 --target-lazy 0.5 --device cuda --out runs/g50-50
               Lazy rows without a gate file are skipped (and listed as such).
and a GPU. Sampling runs on every rank under torchrun (`torchrun --nproc_per_node=8 scripts/reproduce_table1.py ...`);
rank 0 scores every row once all are sampled. Rows resume shard by shard when the script is rerun.

Example:
  python scripts/reproduce_table1.py --ckpt DiT-XL-2-256x256.pt --vae sd-vae-ft-ema \\
      --ref VIRTUAL_imagenet256_labeled.npz --inception pt_inception-2015-12-05-6726825d.pth \\
      --gates 50:0.5=runs/g50-50/gates.safetensors --out runs/table1
"""
from __future__ import annotations

import argparse
import json
import os
import sys

# Table 1, DiT-XL/2 256 px: (method, steps, lazy ratio or None), in the paper's order.
ROWS = [("DDIM", 50, None), ("DDIM", 40, None), ("Ours", 50, 0.2), ("DDIM", 30, None), ("Ours", 50, 0.4),
        ("DDIM", 25, None), ("Ours", 50, 0.5), ("DDIM", 20, None), ("Ours", 40, 0.5), ("DDIM", 14, None),
        ("Ours", 20, 0.3), ("DDIM", 10, None), ("Ours", 20, 0.5), ("DDIM", 7, None), ("Ours", 10, 0.3)]


def parse_gates(specs: list[str]) -> dict:
    out = {}
    for spec in specs:
        key, _, path = spec.partition("=")
        steps, _, ratio = key.partition(":")
        try:
            out[(int(steps), round(float(ratio), 3))] = path
        except ValueError:
            raise ValueError(f"bad --gates {spec!r}; use STEPS:RATIO=PATH") from None
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--vae", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument("--inception", required=True)
    p.add_argument("--gates", action="append", default=[], help="STEPS:RATIO=PATH, once per lazy row")
    p.add_argument("--model", default="DiT-XL/2", help="zoo name the checkpoint fits (smoke tests: a small one)")
    p.add_argument("--image-size", type=int, default=256, help="pixels (512 needs the 512 checkpoint and reference)")
    p.add_argument("--num-images", type=int, default=50_000)
    p.add_argument("--batch-size", type=int, default=64, help="images per generation on each GPU")
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="runs/table1")
    a = p.parse_args(argv)
    try:
        return run(a)
    except ValueError as e:
        print(f"reproduce_table1: error: {e}", file=sys.stderr)
        return 2


def run(a) -> int:
    from lazydit.eval.inception import compute_activations, evaluate, reference_statistics
    from lazydit.eval.sample_many import SampleManyConfig, run_sample_many
    from lazydit.io import write_json
    from lazydit.loading import SampleConfig
    from lazydit.metrics.inception_net import load_inception
    from lazydit.metrics.macs import ideal_lazy_macs, input_size_for_pixels, module_macs, zoo_config

    gates = parse_gates(a.gates)
    for path in [a.ckpt, a.ref, a.inception, *gates.values()]:
        if not os.path.isfile(path):
            raise ValueError(f"{path} does not exist")
    latent = input_size_for_pixels(zoo_config(a.model), a.image_size)
    plan, skipped = [], []
    for method, steps, ratio in ROWS:
        g = gates.get((steps, ratio)) if ratio is not None else None
        if ratio is not None and g is None:
            skipped.append(f"Ours {steps} steps {ratio:.0%}")
            continue
        name = f"ddim{steps}" if ratio is None else f"lazy{steps}-{round(ratio * 100)}"
        plan.append((method, steps, ratio, g, os.path.join(a.out, name)))

    # Phase 1: sample every row (all ranks).
    for method, steps, ratio, g, out in plan:
        s = SampleConfig(model=a.model, checkpoint=a.ckpt, image_size=latent, gates=g, steps=steps,
                         cfg_scale=a.cfg_scale, seed=a.seed, labels=[], device=a.device)
        run_sample_many(SampleManyConfig(sample=s, num_images=a.num_images, batch_size=a.batch_size, vae=a.vae,
                                         out_dir=out))
    if int(os.environ.get("RANK", "0")) != 0:
        return 0

    # Phase 2: score on rank 0, the reference's activations once.
    dev = a.device if a.device != "cuda" else f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    net = load_inception(a.inception, dev)
    ref_acts = compute_activations(net, a.ref, 200, dev, "reference")
    ref_stats = reference_statistics(a.ref, ref_acts)
    mm = module_macs(zoo_config(a.model, input_size=latent), "linear")
    rows = []
    for method, steps, ratio, g, out in plan:
        acts = compute_activations(net, os.path.join(out, "samples.npz"), 200, dev, os.path.basename(out))
        res = evaluate(ref_acts, ref_stats, acts, device=dev)
        with open(os.path.join(out, "lazy_stats.json")) as f:
            lazy = json.load(f)
        measured = lazy.get("lazy_ratio", 0.0)
        tmacs = lazy["tmacs"]["linear"]["no_cfg"]
        rows.append({"method": method, "steps": steps, "target_ratio": ratio, "lazy_ratio": measured,
                     "tmacs": tmacs, "ideal_tmacs": ideal_lazy_macs(mm, steps, ratio or 0.0, gates=g is not None) / 1e12,
                     **res})
    write_json(os.path.join(a.out, "table1.json"), {"args": vars(a), "rows": rows, "skipped": skipped})
    print(f"{'Method':8s}{'Steps':>6s}{'Lazy':>8s}{'TMACs':>8s}{'FID':>8s}{'sFID':>8s}{'IS':>9s}{'Prec.':>8s}{'Rec.':>8s}")
    for r in rows:
        lazy = "/" if r["target_ratio"] is None else f"{r['lazy_ratio']:.1%}"
        print(f"{r['method']:8s}{r['steps']:>6d}{lazy:>8s}{r['tmacs']:>8.2f}{r['fid']:>8.2f}{r['sfid']:>8.2f}"
              f"{r['inception_score']:>9.2f}{100 * r['precision']:>8.2f}{100 * r['recall']:>8.2f}")
    if skipped:
        print(f"skipped (no gate file): {', '.join(skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
