"""`lazydit export`: a skip-schedule file and its model as an onnxruntime bundle (`export.onnx_export`)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..io import check_output
from .. import flags
from ..flags import group, option
from .options import ModelOptions


@dataclass(kw_only=True)
class Config:
    skip_schedule: str = flags.skip_schedule("skip-schedule file from `lazydit freeze`", required=True)
    format: str = option("onnx", choices=("onnx",))
    out: str = flags.out_dir(help="bundle folder (graphs + manifest.json)")
    model: ModelOptions = group(ModelOptions, name=None)  # None: the skip-schedule file's model
    opset: int = option(17, type="positive_int")


def run(cfg: Config) -> None:
    # The bundle is built beside --out and renamed into place: the folder above --out must take it.
    check_output(os.path.dirname(os.path.normpath(cfg.out)), os.path.basename(os.path.normpath(cfg.out)) + "/")
    from ..core.lazy.skip_schedule_file import read_skip_schedule
    from ..export.onnx_export import ExportConfig, export_onnx
    from ..loading import build_lazy_model
    if cfg.model.device != "cpu":
        raise ValueError("export traces the model on the CPU; leave --device out")
    ctrl, meta = read_skip_schedule(cfg.skip_schedule)  # first: a bad file fails before the model loads
    model = build_lazy_model(cfg.model.sample_config(model=cfg.model.name or meta["arch"]))
    for key, value in {"arch": model.arch_name, "depth": model.config.depth,
                       "hidden_size": model.config.hidden_size}.items():
        if meta[key] != value:
            raise ValueError(f"skip-schedule file {cfg.skip_schedule} is for {key}={meta[key]}, but the model has {key}={value}")
    man = export_onnx(model, ctrl, meta,
                      ExportConfig(skip_schedule=cfg.skip_schedule, out_dir=cfg.out, opset=cfg.opset))
    n = 2 + sum(v is not None for b in man["graphs"]["blocks"] for m in b.values() for v in m.values())
    print(f"bundle written to {cfg.out}: {n} graphs + manifest.json; torch vs onnxruntime max abs diff "
          f"{man['export']['check_max_abs_diff']:.2g} (one full-compute evaluation)")
