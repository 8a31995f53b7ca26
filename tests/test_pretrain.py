"""`lazydit pretrain` on a tiny synthetic Fashion-MNIST folder: checkpoints, resume, export."""
import json

import numpy as np
import torch
from safetensors.torch import load_file

from lazydit.core.models.dit import DiT, DiTConfig
from lazydit.train.pretrain import PretrainConfig, pretrain
from test_data import idx_bytes, write

TINY = DiTConfig(depth=2, hidden_size=32, num_heads=2, patch_size=7, input_size=28, in_channels=1,
                 num_classes=10, learn_sigma=False)


def fake_fmnist(folder):
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (16, 28, 28), dtype=np.uint8), rng.integers(0, 10, 16).astype(np.uint8)
    folder.mkdir()
    write(folder / "train-images-idx3-ubyte", idx_bytes(imgs), gz=True)
    write(folder / "train-labels-idx1-ubyte", idx_bytes(labels), gz=True)
    return str(folder)


def test_pretrain_resume_matches_uninterrupted(tmp_path):
    data = fake_fmnist(tmp_path / "data")
    common = dict(data_dir=data, batch_size=4, warmup=2, ckpt_every=3, threads=1)
    full = pretrain(PretrainConfig(out_dir=str(tmp_path / "a"), steps=6, **common), TINY)
    pretrain(PretrainConfig(out_dir=str(tmp_path / "b"), steps=3, **common), TINY)  # "killed" at 3
    torch.manual_seed(99)  # a new process starts from another RNG state
    resumed = pretrain(PretrainConfig(out_dir=str(tmp_path / "b"), steps=6, **common), TINY, resume=True)
    a, b = load_file(full), load_file(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    DiT(TINY).load_state_dict(a)  # the export is a plain, strict-loadable state dict
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["pretrain"]["steps"] == 6 and cfg["model"]["depth"] == 2
    assert (tmp_path / "a" / "checkpoint.safetensors").exists()


def test_pretrain_resume_refuses_another_run_and_keeps_one_log_record_per_step(tmp_path):
    import os
    import re

    import pytest
    data = fake_fmnist(tmp_path / "data")
    common = dict(data_dir=data, batch_size=4, warmup=2, ckpt_every=50, threads=1, out_dir=str(tmp_path / "r"))
    pretrain(PretrainConfig(steps=50, **common), TINY)  # "killed" at its checkpoint, step 50
    ckpt = tmp_path / "r" / "checkpoint.safetensors"
    before = ckpt.read_bytes()
    for change, message in ((dict(lr=1e-3), "lr: 0.0005 -> 0.001"), (dict(batch_size=8), "batch_size: 4 -> 8"),
                            (dict(seed=3), "seed: 0 -> 3")):
        with pytest.raises(ValueError, match=re.escape(message)):
            pretrain(PretrainConfig(steps=100, **{**common, **change}), TINY, resume=True)
    other = DiTConfig(**{**TINY.to_dict(), "depth": 3})
    with pytest.raises(ValueError, match="another model.*depth: 2 -> 3"):
        pretrain(PretrainConfig(steps=100, **common), other, resume=True)
    assert ckpt.read_bytes() == before  # refused before anything was written
    log = tmp_path / "r" / "log.jsonl"
    with open(log, "a") as f:
        f.write('{"step": 60, "lo')  # a crash mid-line after the checkpoint
    pretrain(PretrainConfig(steps=100, **common), TINY, resume=True)
    assert [json.loads(line)["step"] for line in open(log)] == [50, 100]
    pretrain(PretrainConfig(steps=50, **common), TINY)  # a fresh run in the same folder: a fresh log
    assert [json.loads(line)["step"] for line in open(log)] == [50]
    assert os.path.exists(tmp_path / "r" / "ema.safetensors")
