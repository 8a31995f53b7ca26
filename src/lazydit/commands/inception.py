"""`lazydit inception`: FID, sFID, IS and precision/recall of a sample .npz against an ADM
reference batch (`eval.inception`)."""
from __future__ import annotations

from dataclasses import dataclass

from ..io import check_output_file
from .. import flags
from ..flags import option


@dataclass(kw_only=True)
class Config:
    sample: str = option(positional=True, help="sample batch .npz (arr_0 uint8 NHWC)")
    ref: str = option(help="ADM reference batch .npz, e.g. VIRTUAL_imagenet256_labeled.npz")
    weights: str = option(help="local FID Inception weights: pt_inception-2015-12-05-6726825d.pth (pytorch-fid)")
    batch_size: int = flags.batch_size(64)
    device: str = flags.device()
    out: str | None = flags.out_file(None, help="also write the metrics to this JSON file")


def run(cfg: Config) -> None:
    check_output_file(cfg.out)
    from ..eval.inception import InceptionConfig, run_inception
    if cfg.batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    res = run_inception(InceptionConfig(ref=cfg.ref, sample=cfg.sample, weights=cfg.weights,
                                        batch_size=cfg.batch_size, device=cfg.device, out=cfg.out))
    print(f"Inception Score: {res['inception_score']:.4f}\nFID: {res['fid']:.4f}\nsFID: {res['sfid']:.4f}\n"
          f"Precision: {res['precision']:.4f}\nRecall: {res['recall']:.4f}")
