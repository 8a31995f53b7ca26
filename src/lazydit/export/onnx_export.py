"""`lazydit export --format onnx`: a skip-schedule file and its model -> an onnxruntime bundle.

The bundle holds one graph per piece of `lazydit.export.parts` (embedders, each block's
attention and feed-forward as compute and skip variants, the final layer) and manifest.json
with the schedule, the reuse operator's weights and the sampler's constants, everything
`lazydit.deploy` needs without torch. Skip graphs exist only where the schedule skips. Graphs
have a dynamic batch axis. The legacy TorchScript exporter is used (dynamo=False): it handles
these small static graphs without onnxscript.
"""
from __future__ import annotations

import math
import os
import shutil
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..deploy.bundle import CORRECTION, FORMAT, MANIFEST, MODULES, load_bundle
from ..core.diffusion.noise_schedule import NoiseSchedule
from ..io import atomic_path, write_json
from ..core.lazy.reuse import operator_order
from .parts import ComputePart, EmbedPart, FinalPart, SkipPart


@dataclass
class ExportConfig:
    skip_schedule: str                  # skip-schedule file from `lazydit freeze`
    out_dir: str                        # bundle folder (replaced if it already holds a bundle)
    opset: int = 17                     # ONNX opset; 17 has LayerNormalization
    check_batch: int = 2                # images of the post-export check (torch vs onnxruntime, full compute)


def correction_arrays(corr) -> tuple[np.ndarray, np.ndarray]:
    """U (G, L, 2, D, r) and V (G, L, 2, r, D) of an input correction; a single map is G = 1."""
    u, v = corr.u.float().numpy(), corr.v.float().numpy()
    return (u, v) if u.ndim == 5 else (u[None], v[None])


def _export(module, args, inputs, outputs, path, opset, batched=None):
    dynamic = {n: {0: "batch"} for n in inputs + outputs if batched is None or n in batched or n in outputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(module, args, path, dynamo=False, input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=opset)


def manifest(model, ctrl, meta, graphs: dict | None, source: str, opset: int | None = None) -> dict:
    """The bundle manifest; with graphs=None, the part torch-side frozen sampling reads too."""
    n = ctrl.config.num_steps
    sched = NoiseSchedule.respaced(n)
    fitted = None
    if ctrl.fitted is not None:  # NaN (keep Lagrange) is not JSON: null
        fitted = [[[[None if math.isnan(w) else w for w in cell] for cell in layer] for layer in step]
                  for step in ctrl.fitted.tolist()]
    mc = model.config
    return {"format": FORMAT, "arch": meta["arch"], "depth": mc.depth, "hidden_size": mc.hidden_size,
            "image_shape": [mc.in_channels, mc.input_size, mc.input_size], "num_classes": mc.num_classes,
            "model_config": mc.to_dict(),
            "schedule": {"mask": ctrl.forced.int().tolist(), "reuse": ctrl.config.reuse,
                         "order": operator_order(ctrl.config.reuse),
                         "fitted": fitted, "correction": CORRECTION if ctrl.correction is not None else None,
                         "lazy_ratio": float(ctrl.forced.float().mean()),
                         "source": os.path.basename(source)},
            "sampler": {**asdict(meta["sampler"]), "steps": n,
                        "timesteps": [int(sched.timestep_map[n - 1 - k]) for k in range(n)],
                        "alphas_cumprod": sched.alphas_cumprod.tolist()},
            "graphs": graphs, "export": {"opset": opset, "torch": torch.__version__}}


def export_onnx(model: torch.nn.Module, ctrl, meta: dict, cfg: ExportConfig) -> dict:
    """Write the bundle of `model` under the schedule held by `ctrl` (from `read_skip_schedule`)."""
    if meta["sampler"].sampler != "ddim":
        raise ValueError(f"skip-schedule file {cfg.skip_schedule} is for {meta['sampler'].sampler}; only DDIM is exported")
    out = os.path.abspath(cfg.out_dir)
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, MANIFEST)):
        raise ValueError(f"{cfg.out_dir} exists and is not a bundle: refusing to replace it")
    model = model.float().eval()
    mc, b = model.config, max(1, cfg.check_batch)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, mc.in_channels, mc.input_size, mc.input_size, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    y = torch.randint(0, mc.num_classes, (b,), generator=g)
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        with torch.no_grad():
            graphs = _export_parts(model, ctrl, cfg, tmp, x, t, y)
        man = manifest(model, ctrl, meta, graphs, cfg.skip_schedule, cfg.opset)
        if ctrl.correction is not None:  # too large for JSON at scale: numeric .npz, read without pickle
            u, v = correction_arrays(ctrl.correction)
            with atomic_path(os.path.join(tmp, CORRECTION)) as p, open(p, "wb") as f:
                np.savez(f, u=u, v=v)
        write_json(os.path.join(tmp, MANIFEST), man)
        man["export"]["check_max_abs_diff"] = _check(model, tmp, x, t, y)
        write_json(os.path.join(tmp, MANIFEST), man)
        _replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return man


def _export_parts(model, ctrl, cfg, folder, x, t, y) -> dict:
    embed = EmbedPart(model)
    h, c = embed(x, t, y)
    if not bool(torch.isfinite(h).all() and torch.isfinite(c).all()):
        raise ValueError("the model's embedders produce NaN or inf: check the checkpoint")
    _export(embed, (x, t, y), ["x", "t", "y"], ["h", "c"], os.path.join(folder, "embed.onnx"), cfg.opset)
    corr, blocks = ctrl.correction, []
    for layer in range(model.config.depth):
        entry = {}
        for m, kind in enumerate(MODULES):
            names = {"compute": f"block{layer}.{kind}.compute.onnx", "skip": None}
            part = ComputePart(model, layer, kind, keep_input=corr is not None)
            res = part(h, c)
            outs = ["h_out", "y", "z"][: len(res)]
            _export(part, (h, c), ["h", "c"], outs, os.path.join(folder, names["compute"]), cfg.opset)
            if bool(ctrl.forced[:, layer, m].any()):
                names["skip"] = f"block{layer}.{kind}.skip.onnx"
                skip = SkipPart(model, layer, kind, corrected=corr is not None)
                args, ins = (h, c, res[1]), ["h", "c", "y"]
                if corr is not None:
                    u, v = correction_arrays(corr)
                    args, ins = (*args, res[2], torch.from_numpy(u[0, layer, m]), torch.from_numpy(v[0, layer, m])), \
                        [*ins, "z_hat", "u", "v"]
                _export(skip, args, ins, ["h_out"], os.path.join(folder, names["skip"]), cfg.opset,
                        batched=("h", "c", "y", "z_hat"))
            h = res[0]
            entry[kind] = names
        blocks.append(entry)
    final = FinalPart(model)
    if not bool(torch.isfinite(final(h, c)).all()):
        raise ValueError("the model produces NaN or inf: check the checkpoint")
    _export(final, (h, c), ["h", "c"], ["out"], os.path.join(folder, "final.onnx"), cfg.opset)
    return {"embed": "embed.onnx", "final": "final.onnx", "blocks": blocks}


def _check(model, folder, x, t, y) -> float:
    """Max |torch - onnxruntime| of one full-compute network evaluation; refuses a bad export."""
    bundle = load_bundle(folder)
    be = bundle.backend()
    h, c = be.embed(x.numpy(), t.numpy(), y.numpy())
    for layer in range(model.config.depth):
        h, _ = be.block(layer, (False, False), h, c, {})
    got = be.final(h, c)
    with torch.no_grad():
        want = model(x, t, y).numpy()
    diff = float(np.abs(got - want).max())
    if not np.isfinite(got).all() or diff > 1e-3 * max(1.0, float(np.abs(want).max())):
        raise ValueError(f"the exported graphs disagree with the model (max abs diff {diff:.3g})")
    return diff


def _replace_folder(new: str, out: str):
    """Rename the finished bundle into place; an earlier bundle there is removed only then."""
    old = f"{out}.old-{os.getpid()}"
    if os.path.exists(out):
        os.rename(out, old)
    os.rename(new, out)
    shutil.rmtree(old, ignore_errors=True)
