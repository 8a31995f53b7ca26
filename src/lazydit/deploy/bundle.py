"""An exported bundle: manifest.json plus one ONNX graph per piece (`lazydit.export.parts`),
run with onnxruntime. The manifest is validated on load; errors are one line naming it."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from .sampler import Plan

FORMAT = "lazydit-onnx-bundle-v1"
MANIFEST = "manifest.json"
CORRECTION = "correction.npz"  # U (G, L, 2, D, r), V (G, L, 2, r, D) of the input correction
MODULES = ("attn", "ffn")


@dataclass
class Bundle:
    folder: str
    manifest: dict
    plan: Plan

    def backend(self, threads: int | None = None, providers=("CPUExecutionProvider",)) -> "OrtBackend":
        return OrtBackend(self, threads, providers)


def _fail(path, what):
    raise ValueError(f"bundle manifest {path}: {what}")


def _correction(folder, name, path):
    if name is None:
        return None
    try:
        with np.load(os.path.join(folder, name), allow_pickle=False) as z:
            u, v = z["u"].astype(np.float32), z["v"].astype(np.float32)
    except (OSError, ValueError, KeyError) as e:
        _fail(path, f"input correction {name} is unreadable ({e})")
    if u.ndim != 5 or v.shape != (*u.shape[:3], u.shape[4], u.shape[3]) or not (np.isfinite(u).all() and np.isfinite(v).all()):
        _fail(path, f"input correction {name} has shapes {u.shape}, {v.shape} or non-finite entries")
    return u, v


def plan_from_manifest(man: dict, correction: tuple | None) -> Plan:
    """The sampler's plan from a manifest's schedule and sampler entries (raises KeyError,
    TypeError or ValueError on a malformed one)."""
    sch, smp = man["schedule"], man["sampler"]
    fitted = None if sch["fitted"] is None else np.asarray(sch["fitted"], dtype=np.float32)  # null -> NaN
    return Plan(mask=np.asarray(sch["mask"], dtype=bool), order=int(sch["order"]), fitted=fitted, correction=correction,
                timesteps=np.asarray(smp["timesteps"], dtype=np.int64),
                alphas_cumprod=np.asarray(smp["alphas_cumprod"], dtype=np.float64),
                cfg_scale=float(smp["cfg_scale"]), guide_channels=smp["guide_channels"], eta=float(smp["eta"]),
                image_shape=tuple(int(v) for v in man["image_shape"]), num_classes=int(man["num_classes"]))


def load_bundle(folder: str) -> Bundle:
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise ValueError(f"{folder} is not a lazydit bundle: no {MANIFEST}")
    try:
        with open(path) as f:
            man = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        _fail(path, f"unreadable JSON ({e})")
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        _fail(path, f"format is not {FORMAT}")
    try:
        graphs = man["graphs"]
        plan = plan_from_manifest(man, _correction(folder, man["schedule"]["correction"], path))
        mask, fitted, blocks = plan.mask, plan.fitted, graphs["blocks"]
        files = [graphs["embed"], graphs["final"]] + [b[m][p] for b in blocks for m in MODULES for p in ("compute", "skip")]
    except (KeyError, TypeError, ValueError) as e:
        _fail(path, f"missing or malformed entry ({type(e).__name__}: {e})")
    n, depth = len(plan.timesteps), len(blocks)
    if mask.shape != (n, depth, 2) or mask[0].any():
        _fail(path, f"schedule mask of shape {mask.shape} does not fit {n} steps x {depth} blocks x 2, or skips at step 0")
    if plan.alphas_cumprod.shape != (n,) or not np.all((plan.alphas_cumprod > 0) & (plan.alphas_cumprod <= 1)):
        _fail(path, "alphas_cumprod must hold one value in (0, 1] per step")
    if plan.correction is not None and (plan.correction[0].shape[1:3] != (depth, 2) or plan.correction[0].shape[0] > n):
        _fail(path, f"input correction of shape {plan.correction[0].shape} does not fit {n} steps x {depth} blocks")
    if fitted is not None and fitted.shape != (n, depth, 2, plan.order + 1):
        _fail(path, f"fitted weights of shape {fitted.shape} do not fit order {plan.order}")
    if not (plan.cfg_scale >= 1 and 0 <= plan.eta <= 1):
        _fail(path, f"cfg_scale {plan.cfg_scale} or eta {plan.eta} out of range")
    for layer in range(depth):
        for m in range(2):
            if blocks[layer][MODULES[m]]["skip"] is None and mask[:, layer, m].any():
                _fail(path, f"block {layer} {MODULES[m]} skips but has no skip graph")
    for name in files:
        if name is not None and not os.path.isfile(os.path.join(folder, name)):
            _fail(path, f"graph {name} is missing")
    return Bundle(folder, man, plan)


class OrtBackend:
    """The bundle's graphs as onnxruntime sessions (created once; a generation only runs them)."""

    def __init__(self, bundle: Bundle, threads: int | None = None, providers=("CPUExecutionProvider",)):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1

        def session(name):
            return None if name is None else ort.InferenceSession(os.path.join(bundle.folder, name), opts,
                                                                 providers=list(providers))
        g = bundle.manifest["graphs"]
        self.embed_s, self.final_s = session(g["embed"]), session(g["final"])
        self.blocks = [{m: {p: session(b[m][p]) for p in ("compute", "skip")} for m in MODULES} for b in g["blocks"]]

    def embed(self, x, t, y):
        return self.embed_s.run(None, {"x": x, "t": t, "y": y})

    def block(self, layer, skips, h, c, feeds):
        results = {}
        for m, skip in enumerate(skips):
            sess = self.blocks[layer][MODULES[m]]
            if skip:
                (h,) = sess["skip"].run(None, dict(zip(("h", "c", "y", "z_hat", "u", "v"), (h, c, *feeds[m]))))
            else:
                out = sess["compute"].run(None, {"h": h, "c": c})
                h, results[m] = out[0], (out[1], out[2] if len(out) > 2 else None)
        return h, results

    def final(self, h, c):
        return self.final_s.run(None, {"h": h, "c": c})[0]
