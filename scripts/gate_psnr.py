"""PSNR of sampling with each gate file against full compute, on held-out seeds (2,000,000 + i,
disjoint from every training, calibration and frontier seed), with a bootstrap 95% interval.
A quick check that a training change kept the gates' quality; `lazydit frontier` is the full
harness.

    python scripts/gate_psnr.py RUN_A/gates.safetensors RUN_B/gates.safetensors --images 64
"""
from __future__ import annotations

import argparse

from lazydit.metrics import bootstrap_ci, image_psnr
from lazydit.pipeline import generate
from lazydit.loading import SampleConfig, build_lazy_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("gates", nargs="+", help="gate files trained for --steps")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg-scale", type=float, default=3.0)
    a = p.parse_args()
    labels = [i % 10 for i in range(a.images)]
    seeds = [2_000_000 + i for i in range(a.images)]
    ref = generate(build_lazy_model(SampleConfig()), labels, seeds, steps=a.steps, cfg_scale=a.cfg_scale).images
    for path in a.gates:
        g = generate(build_lazy_model(SampleConfig(gates=path)), labels, seeds, steps=a.steps, cfg_scale=a.cfg_scale)
        psnr = image_psnr(g.images, ref)
        lo, hi = bootstrap_ci(psnr, 1000)
        print(f"{path}: PSNR {psnr.mean():.2f} dB (95% CI {lo:.2f} to {hi:.2f}), lazy ratio "
              f"{g.stats.summary()['lazy_ratio']:.3f}, {a.images} images", flush=True)


if __name__ == "__main__":
    main()
