"""Replay bad inputs and faults against the CLI (and a few library calls, run as `python -c`), as a
hostile new user would, and print a table.

Every case must end in a one-line error (exit status 2, no traceback) or a correct result
(exit 0 and a check of the output). Anything else is a failure: a traceback, or a silent wrong
result (exit 0 with wrong output). The last line is the summary; the exit status is 1 when any
case failed.

    python scripts/fault_campaign.py            # every case, about 4 minutes on 2 cores
    python scripts/fault_campaign.py --only sample,gate

The disk-full cases fill a small tmpfs for real (ENOSPC), where this process may mount one (root);
elsewhere they say why they are skipped. The file-size limit cases (EFBIG) run everywhere.
"""
from __future__ import annotations

import argparse
import errno
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from safetensors.torch import load_file, save_file

QUICK = ["--steps", "4", "--labels", "1,2"]
QUICK_SAMPLE = ["sample", *QUICK]
PROGRESS_BAR = re.compile(r"\d+%\|.*\| \d+/\d+ \[")  # tqdm's, e.g. "gates onpolicy:  33%|███▎      | 1/3 [00:01<..."


def fixtures(d: str) -> dict:
    """Files the cases point at, made once: gate files good and bad, checkpoints, noise, data."""
    from lazydit.core.lazy import LazyConfig, apply_lazy, patterns, save_gates
    from lazydit.core.models import EMBEDDED, load_model
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
    f["npz_is_dir"] = os.path.join(d, "npz_is_dir")  # an output folder whose samples.npz is a folder
    os.makedirs(os.path.join(f["npz_is_dir"], "samples.npz"))
    return f


def untouched(folder: str) -> bool:
    return os.listdir(folder) == ["samples.npz"] and os.listdir(os.path.join(folder, "samples.npz")) == []


def api(code: str) -> list:
    """A library call as a case: a ValueError becomes the one-line error the CLI would print."""
    return ["python", "-c", "import sys\nfrom lazydit.core.models import EMBEDDED, load_model\nm = load_model(EMBEDDED)\n"
            f"try:\n    {code}\nexcept ValueError as e:\n    print(f'api: error: {{e}}', file=sys.stderr)\n"
            "    sys.exit(2)"]


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
        ("sample --out under an existing file", [*sample, "--out", f["a_file"] + "/sub"], "error",
         lambda: os.path.isfile(f["a_file"])),
        ("sample --out whose samples.npz is a folder", [*sample, "--out", f["npz_is_dir"]], "error",
         lambda: untouched(f["npz_is_dir"])),
        ("generate with no labels and no seeds", api("from lazydit.pipeline import generate\n    "
                                                     "generate(m, labels=[], seeds=[], steps=4)"), "error", None,
         {"message": lambda line: "at least one label and one seed" in line}),
        ("apply_lazy num_steps 10, config for 20", api("from lazydit.core.lazy import LazyConfig, apply_lazy\n    "
                                                       "apply_lazy(m, num_steps=10, config=LazyConfig(num_steps=20))"),
         "error", None, {"message": lambda line: "num_steps=10" in line and "num_steps=20" in line}),
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
        ("train-gates --out under an existing file", [*train, "--out", f["a_file"] + "/g"], "error", None),
        ("sample-many --image-size 28 (its own value)", ["sample-many", "--steps", "4", "--num-images", "2",
                                                         "--image-size", "28", "--out", out("sm")], "ok",
         lambda: os.path.exists(out("sm") + "/samples.npz")),
        ("sample-many --out an existing file", ["sample-many", "--steps", "4", "--num-images", "2",
                                                "--out", f["a_file"]], "error", None),
        ("sample-many --out whose samples.npz is a folder", ["sample-many", "--steps", "4", "--num-images", "2",
                                                             "--out", f["npz_is_dir"]], "error",
         lambda: untouched(f["npz_is_dir"])),
        ("freeze --out under an existing file", ["freeze", f["gates"], "--out", f["a_file"] + "/s.safetensors"],
         "error", None),
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


TRAIN_TINY = ["train-gates", "--mode", "onpolicy", "--steps", "4", "--iters", "3", "--batch-size", "1",
              "--calib-images", "2", "--rollout-every", "1", "--ckpt-every", "1", "--no-calibrate"]


def no_temp_files(folder: str) -> bool:
    return not glob.glob(os.path.join(folder, "**", ".tmp-*"), recursive=True)


def mount_tmpfs(d: str) -> tuple[str | None, str]:
    """A 2 MiB tmpfs to fill for real, or None and the reason it cannot be mounted here."""
    mnt = os.path.join(d, "tmpfs")
    os.makedirs(mnt)
    try:
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt], capture_output=True, text=True)
    except OSError as e:
        return None, f"no mount command ({e.strerror})"
    return (mnt, "") if p.returncode == 0 else (None, (p.stderr.strip() or f"mount exited {p.returncode}").splitlines()[0])


def leave_free(mnt: str, blocks: int):
    """Fill the tmpfs `mnt` with a filler file until only `blocks` blocks (pages) are free."""
    filler, unit = os.path.join(mnt, "filler"), os.statvfs(mnt).f_frsize
    with open(filler, "ab", buffering=0) as f:
        try:
            while f.write(b"\0" * unit):
                pass
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    os.truncate(filler, max(0, os.path.getsize(filler) - blocks * unit))
    assert os.statvfs(mnt).f_bavail == blocks, os.statvfs(mnt)


def free_space(mnt: str):
    os.remove(os.path.join(mnt, "filler"))


def disk_full_cases(d: str, mnt: str | None) -> list:
    """Out of space mid-write: one line naming the file, no temp file left, the previous artefact
    intact, and the rerun (after space is freed) finishes: sample-many regenerates the missing
    shard, train-gates resumes from its last complete checkpoint, bit-identical to a run that
    never stopped. File-size limits (EFBIG, ulimit -f) everywhere; a full tmpfs (ENOSPC) where mountable."""
    previous = b"a previous run's samples"

    def plant(folder):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "samples.npz"), "wb") as h:
            h.write(previous)

    def kept(folder):
        return open(os.path.join(folder, "samples.npz"), "rb").read() == previous and no_temp_files(folder)

    def mentions(folder):  # the error names a file in the run's folder, not a temp file
        return lambda err: f"writing {folder}/" in err and "/.tmp-" not in err

    fs = os.path.join(d, "efbig")
    c = [("disk full: sample, file-size limit (EFBIG)", [*QUICK_SAMPLE, "--out", os.path.join(fs, "s")], "error",
          lambda: kept(os.path.join(fs, "s")),
          {"fsize_kib": 1, "before": lambda: plant(os.path.join(fs, "s")), "message": mentions(fs)}),
         ("disk full: train-gates checkpoint, file-size limit (EFBIG)", [*TRAIN_TINY, "--out", os.path.join(fs, "g")],
          "error", lambda: no_temp_files(fs) and not os.path.exists(os.path.join(fs, "g", "checkpoint.safetensors")),
          {"fsize_kib": 8, "message": mentions(fs)})]
    if mnt is None:
        return c
    ref, g = os.path.join(d, "gates_ref"), os.path.join(mnt, "g")
    s, m = os.path.join(mnt, "s"), os.path.join(mnt, "m")

    def ckpt_blocks():  # room for the config, the log and one checkpoint, not for a second one beside it
        return -(-os.path.getsize(os.path.join(ref, "checkpoint.safetensors")) // os.statvfs(mnt).f_frsize) + 4

    def same_gates():
        a, b = load_file(os.path.join(ref, "gates.safetensors")), load_file(os.path.join(g, "gates.safetensors"))
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) and no_temp_files(mnt)

    def merged():
        with np.load(os.path.join(m, "samples.npz")) as z:
            return z["arr_0"].shape[0] == 2 and list(z["labels"]) == [0, 1] and no_temp_files(mnt)
    many = ["sample-many", "--steps", "4", "--num-images", "2", "--batch-size", "1", "--out", m]
    c += [
        ("disk full: sample on a full tmpfs (ENOSPC)", [*QUICK_SAMPLE, "--out", s], "error", lambda: kept(s),
         {"before": lambda: (plant(s), leave_free(mnt, 1)), "message": mentions(s)}),
        ("disk full: sample rerun after freeing space", [*QUICK_SAMPLE, "--out", s], "ok",
         lambda: np.load(os.path.join(s, "samples.npz"))["arr_0"].shape[0] == 2 and no_temp_files(s),
         {"before": lambda: free_space(mnt)}),
        ("disk full: train-gates reference run (not full)", [*TRAIN_TINY, "--out", ref], "ok",
         lambda: os.path.exists(os.path.join(ref, "gates.safetensors")), {}),
        ("disk full: train-gates, second checkpoint on a full tmpfs", [*TRAIN_TINY, "--out", g], "error",
         lambda: os.path.exists(os.path.join(g, "checkpoint.safetensors")) and no_temp_files(mnt),
         {"before": lambda: leave_free(mnt, ckpt_blocks()), "message": mentions(g)}),
        ("disk full: train-gates --resume after freeing space", [*TRAIN_TINY, "--out", g, "--resume"], "ok",
         same_gates, {"before": lambda: free_space(mnt)}),
        ("disk full: sample-many, second shard on a full tmpfs", many, "error",
         lambda: os.listdir(os.path.join(m, "shards")) == ["shard-0-0.npz"] and no_temp_files(mnt),
         {"before": lambda: leave_free(mnt, 2), "message": mentions(m)}),
        ("disk full: sample-many rerun regenerates the shard and merges", many, "ok", merged,
         {"before": lambda: free_space(mnt)}),
    ]
    return c


def setup_resume_target(f: dict, d: str):
    """A folder whose checkpoint.safetensors is really a gate file."""
    os.makedirs(os.path.join(d, "rg"), exist_ok=True)
    import shutil
    shutil.copy(f["gates"], os.path.join(d, "rg", "checkpoint.safetensors"))


def run_case(argv: list, timeout: float, fsize_kib: int | None = None) -> tuple[int, str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, *argv[1:]] if argv[0] == "python" else [sys.executable, "-m", "lazydit.cli", *argv]
    if fsize_kib is not None:  # RLIMIT_FSIZE for the command only; python ignores SIGXFSZ, so writes get EFBIG
        cmd = ["bash", "-c", f'ulimit -f {fsize_kib} && exec "$@"', "bash", *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    return p.returncode, p.stderr


def classify(code: int, err: str, expected: str, check, message=None) -> str:
    """`check` verifies the output of an 'ok' case, and what an 'error' case left behind;
    `message(line)`, where given, the error line."""
    if "Traceback" in err:
        return "traceback"
    if code == 0:
        if expected == "error":
            return "silent (accepted)"
        return "ok" if passes(check) else "silent wrong result"
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("usage:") and not ln.startswith(" ")
             and not PROGRESS_BAR.search(ln)]
    one_line = code == 2 and len(lines) == 1 and "error" in lines[0]
    if expected == "ok":
        return "refused a valid input"
    if not one_line:
        return f"exit {code}, {len(lines)} lines"
    if message is not None and not message(lines[0]):
        return "error, wrong message"
    return "error" if check is None or passes(check) else "error, but damage left behind"


def passes(check) -> bool:
    try:
        return bool(check())
    except (OSError, ValueError, KeyError) as e:  # the output is missing or unreadable
        print(f"check failed: {type(e).__name__}: {e}", file=sys.stderr)
        return False


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
        mnt, why = mount_tmpfs(d)
        try:
            return run_all(todo + disk_full_cases(d, mnt), a, why)
        finally:
            if mnt is not None:
                subprocess.run(["umount", mnt], check=False)


def run_all(todo: list, a, why_no_tmpfs: str) -> int:
    if a.only:
        todo = [cs for cs in todo if cs[0].startswith(tuple(a.only.split(",")))]
    if why_no_tmpfs:
        print(f"disk-full cases on a real tmpfs skipped: cannot mount one here ({why_no_tmpfs})")
    failed = 0
    print(f"| case | expected | outcome | seconds | message |\n|---|---|---|---|---|")
    for name, argv, expected, check, *more in todo:
        opts = more[0] if more else {}
        t = time.perf_counter()
        try:
            if "before" in opts:
                opts["before"]()
            code, err = run_case(argv, a.timeout, opts.get("fsize_kib"))
            outcome = classify(code, err, expected, check, opts.get("message"))
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
