"""Disk full while writing: one line naming the artefact, nothing half-written, the previous
artefact kept, and the rerun picks up where the full disk stopped it.

The disk is filled by injection, so this runs anywhere: writes of the chosen files put half their
bytes on disk, then fail with ENOSPC. safetensors is made to fail the way its Rust writer does
(SafetensorError "... (os error 28)"). scripts/fault_campaign.py does the same on a real tmpfs.
"""
import builtins
import errno
import io
import json
import os

import numpy as np
import pytest
import safetensors
import torch
from safetensors.torch import save as safetensors_bytes

import lazydit.core.lazy.gatefile
import lazydit.core.lazy.skip_schedule_file
import lazydit.train.checkpoint
from lazydit.cli import main
from lazydit.io import DiskFullError, atomic_path, write_json

NO_SPACE = os.strerror(errno.ENOSPC)


class _Filling:
    """A file on a disk that fills: `writes` writes go through, the next puts half its bytes down
    and fails with ENOSPC."""

    def __init__(self, f, budget):
        self._f, self._budget = f, budget

    def write(self, data):
        if self._budget[0] > 0:
            self._budget[0] -= 1
            return self._f.write(data)
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, NO_SPACE)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny runs: a second intra-op thread only waits on the shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def disk_full(monkeypatch):
    """disk_full(match, files=0, writes=0): of the files opened for writing whose path satisfies
    `match`, the first `files` are written whole; after that the disk is full after `writes` writes."""
    def arm(match, files=0, writes=0):
        real_open, seen, budget = builtins.open, [0], [writes]

        def fake_open(file, mode="r", *args, **kw):
            f = real_open(file, mode, *args, **kw)
            if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+") and match(os.fspath(file)):
                seen[0] += 1
                if seen[0] > files:
                    return _Filling(f, budget)
            return f

        def fake_save_file(tensors, filename, metadata=None):
            try:
                with fake_open(filename, "wb") as f:
                    f.write(safetensors_bytes(tensors, metadata))
            except OSError as e:  # what the Rust writer raises
                raise safetensors.SafetensorError(f"Error while serializing: I/O error: {e.strerror} "
                                                  f"(os error {e.errno})") from None

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)  # zipfile opens through io.open
        for mod in (lazydit.train.checkpoint, lazydit.core.lazy.gatefile, lazydit.core.lazy.skip_schedule_file):
            monkeypatch.setattr(mod, "save_file", fake_save_file)
        return monkeypatch.undo
    return arm


def temp_files(folder):
    return [os.path.join(r, n) for r, _, names in os.walk(folder) for n in names if n.startswith(".tmp-")]


def one_line(capsys, code):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error" in ln or "Traceback" in ln]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert err.rstrip().endswith(lines[0])  # after the progress bar it cut short, not inside it
    return lines[0]


def in_folder(folder, name):
    return lambda p: os.path.dirname(os.path.abspath(p)) == os.path.abspath(folder) and p.endswith(name)


def test_out_of_space_names_the_final_path_and_keeps_the_previous_file(tmp_path):
    path = str(tmp_path / "a.json")
    write_json(path, {"good": 1})
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        with pytest.raises(DiskFullError) as e, atomic_path(path) as tmp, open(tmp, "w") as f:
            f.write("{half")
            raise OSError(code, os.strerror(code))
        assert (e.value.errno, e.value.filename) == (code, path)
    with pytest.raises(DiskFullError, match="No space left"), atomic_path(path):
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    with pytest.raises(PermissionError), atomic_path(path):  # other errors pass through unchanged
        raise PermissionError(errno.EACCES, "denied")
    assert json.load(open(path)) == {"good": 1} and os.listdir(tmp_path) == ["a.json"]


SAMPLE = ["sample", "--steps", "2", "--labels", "1"]


def test_sample_disk_full(tmp_path, disk_full, capsys):
    out = str(tmp_path / "s")
    os.makedirs(out)
    with open(os.path.join(out, "samples.npz"), "wb") as f:
        f.write(b"a previous run's samples")
    disk_full(in_folder(out, ".npz"))
    line = one_line(capsys, main([*SAMPLE, "--out", out]))
    assert line == f"lazydit sample: error: no space left on device writing {out}/samples.npz"
    assert open(os.path.join(out, "samples.npz"), "rb").read() == b"a previous run's samples"
    assert not temp_files(out)


TRAIN = ["train-gates", "--mode", "onpolicy", "--steps", "2", "--iters", "3", "--batch-size", "1",
         "--calib-images", "2", "--rollout-every", "1", "--ckpt-every", "1", "--no-calibrate"]


def test_train_gates_disk_full_then_resume(tmp_path, disk_full, capsys):
    out = str(tmp_path / "g")
    ckpt, log = os.path.join(out, "checkpoint.safetensors"), os.path.join(out, "log.jsonl")
    iters = lambda: [json.loads(ln)["iter"] for ln in open(log)]  # noqa: E731
    # checkpoints after iterations 1 and 2: the second one finds the disk full
    undo = disk_full(in_folder(out, ".safetensors"), files=1)
    line = one_line(capsys, main([*TRAIN, "--out", out]))
    assert line == f"lazydit train-gates: error: no space left on device writing {ckpt}"
    undo()
    first = open(ckpt, "rb").read()
    assert sorted(os.listdir(out)) == ["checkpoint.safetensors", "log.jsonl", "train_config.json"]
    # resumed from iteration 1, still full: the log line of iteration 2 does not fit, and is not half there
    undo = disk_full(lambda p: p == log, writes=0)
    line = one_line(capsys, main([*TRAIN, "--out", out, "--resume"]))
    assert line == f"lazydit train-gates: error: no space left on device writing {log}"
    undo()
    assert iters() == [1] and open(ckpt, "rb").read() == first and not temp_files(out)
    # space freed: the resume finishes from the last complete checkpoint
    assert main([*TRAIN, "--out", out, "--resume"]) == 0
    assert iters() == [1, 2, 3] and os.path.exists(os.path.join(out, "gates.safetensors"))


def test_sample_many_disk_full_then_rerun(tmp_path, disk_full, capsys):
    out = str(tmp_path / "m")
    shards = os.path.join(out, "shards")
    argv = ["sample-many", "--steps", "2", "--num-images", "2", "--batch-size", "1", "--out", out]
    undo = disk_full(in_folder(shards, ".npz"), files=1)  # the second shard does not fit
    line = one_line(capsys, main(argv))
    assert line == f"lazydit sample-many: error: no space left on device writing {shards}/shard-0-1.npz"
    undo()
    assert os.listdir(shards) == ["shard-0-0.npz"] and not temp_files(out)
    kept = os.stat(os.path.join(shards, "shard-0-0.npz")).st_mtime_ns
    undo = disk_full(in_folder(out, ".npz"))  # the missing shard fits, the merge (samples.npz) does not
    line = one_line(capsys, main(argv))
    assert line == f"lazydit sample-many: error: no space left on device writing {out}/samples.npz"
    undo()
    assert sorted(os.listdir(shards)) == ["shard-0-0.npz", "shard-0-1.npz"] and not temp_files(out)
    assert not os.path.exists(os.path.join(out, "samples.npz"))
    assert main(argv) == 0
    assert os.stat(os.path.join(shards, "shard-0-0.npz")).st_mtime_ns == kept
    with np.load(os.path.join(out, "samples.npz")) as z:
        assert z["arr_0"].shape[0] == 2 and list(z["labels"]) == [0, 1]
