"""Replay bad inputs and faults against the CLI, as a hostile new user would, and print a table.

Every case must end in a one-line error (exit status 2, no traceback) or a correct result
(exit 0 and a check of the output). Anything else is a failure: a traceback, or a silent wrong
result (exit 0 with wrong output). The last line is the summary; the exit status is 1 when any
case failed.

    python scripts/fault_campaign.py            # every case, about 4 minutes on 2 cores
    python scripts/fault_campaign.py --only sample,gate
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from safetensors.torch import load_file, save_file

QUICK = ["--steps", "4", "--labels", "1,2"]


def fixtures(d: str) -> dict:
    """Files the cases point at, made once: gate files good and bad, checkpoints, noise, data."""
    from lazydit.lazy import LazyConfig, apply_lazy, patterns, save_gates
    from lazydit.models import EMBEDDED, load_model
    f = {}
    model = load_model(EMBEDDED)
    ctrl = apply_lazy(model, 4, LazyConfig(num_steps=4, reuse="taylor1"))
    ctrl.force(patterns.every_nth(4, model.config.depth, 2))
    f["gates"] = os.path.join(d, "gates.safetensors")
    save_gates(ctrl, f["gates"], extra={"arch": EMBEDDED})
    tensors = load_file(f["gates"])
    from safetensors import safe_open
    with safe_open(f["gates"], "pt") as h:
        meta = json.loads(h.metadata()["lazydit"])

    def gate_variant(name, change_tensors=None, change_meta=None, raw=None):
        t = {k: v.clone() for k, v in tensors.items()}
        m = json.loads(json.dumps(meta))
        if change_tensors:
            change_tensors(t)
        if change_meta:
            change_meta(m)
        path = os.path.join(d, f"{name}.safetensors")
        save_file(t, path, metadata={"lazydit": raw if raw is not None else json.dumps(m)})
        f[name] = path

    gate_variant("gates_nan", lambda t: t["attn"].__setitem__((0, 0, 0), float("nan")))
    gate_variant("gates_inf", lambda t: t["ffn"].__setitem__((0, 0, 0), float("inf")))
    gate_variant("gates_nan_thr", change_meta=lambda m: m["lazy_config"].__setitem__("threshold_attn", float("nan")))
    gate_variant("gates_big_thr", change_meta=lambda m: m["lazy_config"].__setitem__("threshold_ffn", 1.5))
    gate_variant("gates_extra_key", change_meta=lambda m: m["lazy_config"].__setitem__("colour", "blue"))
    gate_variant("gates_no_config", change_meta=lambda m: m.pop("lazy_config"))
    gate_variant("gates_float_cap", change_meta=lambda m: m["lazy_config"].__setitem__("max_skip_run", 2.5))
    gate_variant("gates_bad_json", raw="{not json")
    # checkpoints: one with a NaN weight, one pickle that would run code
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    next(v for k, v in sd.items() if v.is_floating_point()).view(-1)[0] = float("nan")
    f["ckpt_nan"] = os.path.join(d, "nan.safetensors")
    save_file(sd, f["ckpt_nan"])
    f["ckpt_pickle"] = os.path.join(d, "evil.pt")
    with open(f["ckpt_pickle"], "wb") as h:
        h.write(b"\x80\x04\x95\x1c\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94\x8c\x04true"
                b"\x94\x85\x94R\x94.")
    # noise
    shape = (2, 1, 28, 28)
    f["noise_huge"] = os.path.join(d, "huge.npy")
    np.save(f["noise_huge"], np.full(shape, 1e30, dtype=np.float32))
    f["noise_npz"] = os.path.join(d, "noise.npz")
    np.savez(f["noise_npz"], np.zeros(shape, dtype=np.float32))
    # datasets
    imgs = np.random.default_rng(0).uniform(-1, 1, (16, 1, 28, 28)).astype(np.float32)
    f["data_nan"] = os.path.join(d, "nan.npz")
    bad = imgs.copy()
    bad[0, 0, 0, 0] = np.nan
    np.savez(f["data_nan"], images=bad, labels=np.arange(16) % 10)
    f["data_empty"] = os.path.join(d, "empty.npz")
    np.savez(f["data_empty"], images=imgs[:0], labels=np.zeros(0, dtype=np.int64))
    f["data_float_labels"] = os.path.join(d, "float_labels.npz")
    np.savez(f["data_float_labels"], images=imgs, labels=np.arange(16) % 10 + 0.5)
    f["a_file"] = os.path.join(d, "existing.txt")
    open(f["a_file"], "w").write("not a folder\n")
    return f


def same_images(a: str, b: str) -> bool:
    with np.load(a) as x, np.load(b) as y:
        return np.array_equal(x["arr_0"], y["arr_0"])


def cases(f: dict, d: str) -> list:
    """(name, argv, expected, check): expected 'error', or 'ok' with check(result) -> bool."""
    ref = os.path.join(d, "ref")
    out = lambda name: os.path.join(d, name)  # noqa: E731
    sample = ["sample", *QUICK]
    train = ["train-gates", "--steps", "4", "--iters", "2", "--batch-size", "2", "--calib-images", "2"]
    c = [
        ("sample: reference run", [*sample, "--out", ref], "ok", lambda: os.path.exists(f"{ref}/samples.npz")),
        ("sample --image-size 28 (its own value)", [*sample, "--image-size", "28", "--out", out("s28")], "ok",
         lambda: same_images(f"{ref}/samples.npz", out("s28") + "/samples.npz")),
        ("sample --num-classes 10 (its own value)", [*sample, "--num-classes", "10", "--out", out("s10")], "ok",
         lambda: same_images(f"{ref}/samples.npz", out("s10") + "/samples.npz")),
        ("sample --image-size 32 on shipped weights", [*sample, "--image-size", "32", "--out", out("x")], "error", None),
        ("sample --image-size 0", [*sample, "--image-size", "0", "--out", out("x")], "error", None),
        ("sample --image-size -4", [*sample, "--image-size", "-4", "--out", out("x")], "error", None),
        ("sample --cfg-scale nan", [*sample, "--cfg-scale", "nan", "--out", out("x")], "error", None),
        ("sample --cfg-scale inf", [*sample, "--cfg-scale", "inf", "--out", out("x")], "error", None),
        ("sample --eta 1.5", [*sample, "--eta", "1.5", "--out", out("x")], "error", None),
        ("sample --eta with ddpm", [*sample, "--sampler", "ddpm", "--eta", "0.5", "--out", out("x")], "error", None),
        ("sample --labels ''", ["sample", "--steps", "4", "--labels", "", "--out", out("x")], "error", None),
        ("sample --max-skip-run -1", [*sample, "--force-skip", "every:2", "--max-skip-run", "-1", "--out", out("x")],
         "error", None),
        ("sample --seed 1e23", [*sample, "--seed", "1e23", "--out", out("x")], "error", None),
        ("sample --device foo", [*sample, "--device", "foo", "--out", out("x")], "error", None),
        ("sample --noise missing", [*sample, "--noise", out("nothing.npy"), "--out", out("x")], "error", None),
        ("sample --noise a directory", [*sample, "--noise", d, "--out", out("x")], "error", None),
        ("sample --noise .npz", [*sample, "--noise", f["noise_npz"], "--out", out("x")], "error", None),
        ("sample --noise 1e30", [*sample, "--noise", f["noise_huge"], "--out", out("x")], "error", None),
        ("sample --ckpt with a NaN weight", [*sample, "--ckpt", f["ckpt_nan"], "--out", out("x")], "error", None),
        ("sample --ckpt pickle with code", [*sample, "--ckpt", f["ckpt_pickle"], "--out", out("x")], "error", None),
        ("sample --out an existing file", [*sample, "--out", f["a_file"]], "error", None),
        ("sample --gates good", [*sample, "--gates", f["gates"], "--out", out("g")], "ok",
         lambda: os.path.exists(out("g") + "/samples.npz")),
    ]
    for name in ("gates_nan", "gates_inf", "gates_nan_thr", "gates_big_thr", "gates_extra_key", "gates_no_config",
                 "gates_float_cap", "gates_bad_json"):
        c.append((f"sample --gates {name}", [*sample, "--gates", f[name], "--out", out("x")], "error", None))
    c += [
        ("train-gates --rho-attn nan", [*train, "--rho-attn", "nan", "--out", out("x")], "error", None),
        ("train-gates --rho-attn inf", [*train, "--rho-attn", "inf", "--out", out("x")], "error", None),
        ("train-gates --lr inf", [*train, "--lr", "inf", "--out", out("x")], "error", None),
        ("train-gates --ckpt-every 0", [*train, "--ckpt-every", "0", "--out", out("x")], "error", None),
        ("train-gates --batch-size 100000", [*train, "--mode", "onpolicy", "--batch-size", "100000",
                                             "--out", out("x")], "error", None),
        ("train-gates dataset with NaN", [*train, "--mode", "paper", "--source", "dataset", "--dataset",
                                          f["data_nan"], "--out", out("x")], "error", None),
        ("train-gates empty dataset", [*train, "--mode", "paper", "--source", "dataset", "--dataset",
                                       f["data_empty"], "--out", out("x")], "error", None),
        ("train-gates float labels", [*train, "--mode", "paper", "--source", "dataset", "--dataset",
                                      f["data_float_labels"], "--out", out("x")], "error", None),
        ("train-gates --resume from a gate file", [*train, "--mode", "onpolicy", "--out", out("rg"), "--resume"],
         "error", None),
        ("train-gates --out an existing file", [*train, "--out", f["a_file"]], "error", None),
        ("sample-many --image-size 28 (its own value)", ["sample-many", "--steps", "4", "--num-images", "2",
                                                         "--image-size", "28", "--out", out("sm")], "ok",
         lambda: os.path.exists(out("sm") + "/samples.npz")),
        ("sample-many --out an existing file", ["sample-many", "--steps", "4", "--num-images", "2",
                                                "--out", f["a_file"]], "error", None),
        ("macs --image-size 0", ["macs", "--model", "DiT-S/2", "--image-size", "0"], "error", None),
        ("macs --json an existing directory", ["macs", "--model", "DiT-S/2", "--json", d], "error", None),
        ("pretrain --ema-decay 1.0", ["pretrain", "--ema-decay", "1.0", "--steps", "2", "--out", out("x")], "error", None),
        ("pretrain --lr inf", ["pretrain", "--lr", "inf", "--steps", "2", "--out", out("x")], "error", None),
        ("demo --settings ''", ["demo", "--settings", "", "--out", out("x")], "error", None),
        ("bench --threads -1", ["bench", "--model", "DiT-FMNIST", "--threads", "-1", "--out", out("x")], "error", None),
        ("bench --out an existing file", ["bench", "--model", "DiT-FMNIST", "--repeats", "1", "--steps", "2",
                                          "--batch-size", "1", "--out", f["a_file"]], "error", None),
    ]
    if not torch.cuda.is_available():
        c.append(("sample --device cuda without CUDA", [*sample, "--device", "cuda", "--out", out("x")], "error", None))
    return c


def setup_resume_target(f: dict, d: str):
    """A folder whose checkpoint.safetensors is really a gate file."""
    os.makedirs(os.path.join(d, "rg"), exist_ok=True)
    import shutil
    shutil.copy(f["gates"], os.path.join(d, "rg", "checkpoint.safetensors"))


def run_case(argv: list, timeout: float) -> tuple[int, str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
    p = subprocess.run([sys.executable, "-m", "lazydit.cli", *argv], capture_output=True, text=True,
                       timeout=timeout, env=env)
    return p.returncode, p.stderr


def classify(code: int, err: str, expected: str, check) -> str:
    if "Traceback" in err:
        return "traceback"
    if code == 0:
        if expected == "error":
            return "silent (accepted)"
        return "ok" if check() else "silent wrong result"
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("usage:") and not ln.startswith(" ")]
    one_line = code == 2 and len(lines) == 1 and "error" in lines[0]
    if expected == "ok":
        return "refused a valid input"
    return "error" if one_line else f"exit {code}, {len(lines)} lines"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="comma-separated name prefixes")
    ap.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        f = fixtures(d)
        setup_resume_target(f, d)
        todo = cases(f, d)
        if a.only:
            todo = [cs for cs in todo if cs[0].startswith(tuple(a.only.split(",")))]
        failed = 0
        print(f"| case | expected | outcome | seconds | message |\n|---|---|---|---|---|")
        for name, argv, expected, check in todo:
            t = time.perf_counter()
            try:
                code, err = run_case(argv, a.timeout)
                outcome = classify(code, err, expected, check)
            except subprocess.TimeoutExpired:
                outcome, err = "timeout", ""
            good = outcome == ("error" if expected == "error" else "ok")
            failed += not good
            msg = (err.strip().splitlines() or [""])[-1][:110].replace("|", "/")
            print(f"| {name} | {expected} | {outcome}{'' if good else ' FAIL'} | {time.perf_counter() - t:.1f} | "
                  f"{msg} |", flush=True)
        print(f"fault campaign: {len(todo) - failed}/{len(todo)} cases ended in a one-line error or a correct "
              f"result; {failed} failed")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
