"""How the input correction is fitted, on the shipped DiT-FMNIST: shared or per-step maps, and
refits along the corrected trajectory (alone, or added to the earlier statistics).

Runs the default placement search (`lazydit train-gates --target-lazy R`), then refits its
correction in each variant and prints the mean per-image PSNR against full compute on held-out
seeds 1,000,000 + i (labels i % 10, cfg 3). Fitting images: seeds 30,000 + i.

    python scripts/correction_study.py --steps 20 --target 0.5 --images 64
"""
from __future__ import annotations

import argparse

import torch

from lazydit.metrics import image_psnr
from lazydit.core.lazy.correction import CorrectionFit
from lazydit.core.models import EMBEDDED, load_model
from lazydit.pipeline import generate
from lazydit.train.gates import GateTrainConfig, train_gates
from lazydit.train.placement_search import RIDGE, _correction_stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--images", type=int, default=64, help="held-out evaluation images")
    ap.add_argument("--fit-images", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = load_model(EMBEDDED).eval()
    cfg = GateTrainConfig(num_steps=a.steps, target_lazy=a.target, correction_images=a.fit_images,
                          out_dir="/tmp/lazydit-correction-study")
    ctrl, summary = train_gates(model, cfg, progress=False)
    print(f"schedule {summary['schedule']}, operator {summary['reuse']}, kept correction: "
          f"{summary['correction_groups']} groups, rank {summary['correction_rank']}")
    labels = [i % model.config.num_classes for i in range(a.images)]
    seeds = [1_000_000 + i for i in range(a.images)]

    def sample():
        return generate(model, labels, seeds, steps=a.steps, cfg_scale=cfg.cfg_scale).images

    ctrl.set_mode("full")
    ref = sample()
    ctrl.set_mode("hard")

    def report(name, correction):
        ctrl.set_correction(correction)
        print(f"{name:58s} {float(image_psnr(sample(), ref).mean()):6.2f} dB", flush=True)

    fit_seeds = [30_000 + j for j in range(a.fit_images)]
    report("none", None)

    def fit_sample(s):
        return generate(model, [j % model.config.num_classes for j in range(len(s))], s, steps=a.steps,
                        cfg_scale=cfg.cfg_scale).images

    plain = _correction_stats(fit_sample, ctrl, cfg, fit_seeds, a.steps)
    for rank in (4, 16):
        report(f"shared map, rank {rank}", plain.coarsened(1).solve(rank, RIDGE))
        report(f"per step, rank {rank}", plain.solve(rank, RIDGE))
    for groups in (4, 2):
        report(f"{groups} step groups, rank 16", plain.coarsened(groups).solve(16, RIDGE))
    for accumulate in (False, True):
        stats, corr = plain, plain.solve(16, RIDGE)
        for p in (1, 2):
            ctrl.set_correction(corr)
            new = _correction_stats(fit_sample, ctrl, cfg, fit_seeds, a.steps)
            if accumulate:
                acc = CorrectionFit(ctrl.depth, ctrl.dim, a.steps, a.steps)
                acc.absorb(stats), acc.absorb(new)
                stats = acc
            else:
                stats = new
            corr = stats.solve(16, RIDGE)
            how = "all trajectories' statistics" if accumulate else "the latest trajectory alone"
            report(f"per step, rank 16, refit {p} on {how}", corr)


if __name__ == "__main__":
    main()
