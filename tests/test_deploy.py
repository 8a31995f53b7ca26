"""The ONNX bundle and the torch-free onnxruntime sampler: equivalence with torch sampling under
the same schedule and noise, other architectures, torch-free import, bad bundles."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from conftest import tiny_dit  # noqa: E402
from lazydit.deploy import load_bundle, sample  # noqa: E402
from lazydit.export.onnx_export import ExportConfig, export_onnx  # noqa: E402
from lazydit.core.lazy import LazyConfig, LazyController, apply_lazy, patterns, remove_lazy  # noqa: E402
from lazydit.core.lazy.correction import InputCorrection  # noqa: E402
from lazydit.core.lazy.skip_schedule_file import SamplerSettings, read_skip_schedule, save_skip_schedule  # noqa: E402
from lazydit.core.models import load_model  # noqa: E402
from lazydit.pipeline import SeededNoise, generate  # noqa: E402

STEPS = 8  # few steps: float32 rounding differences between kernels grow with the steps and CFG


def write_skip_schedule(path, arch, depth, dim, reuse="fit2", corrected=True, cfg_scale=3.0, seed=0, skip_layers=None):
    """A schedule whose skips sit in different cells (not whole steps) of the first `skip_layers`
    blocks (all: None), with a fitted forecast whose weights differ from Lagrange and a rank-2
    input correction."""
    g = torch.Generator().manual_seed(seed)
    c = LazyController(LazyConfig(num_steps=STEPS, reuse=reuse), depth, dim)
    mask = torch.rand(STEPS, depth, 2, generator=g) < 0.5
    mask[0] = False
    if skip_layers is not None:
        mask[:, skip_layers:] = False
    mask[2:, 0, 1] = True  # a run of 3 skips: the forecast reaches its full order
    c.force(mask)
    if reuse.startswith("fit"):
        p = int(reuse[-1]) + 1
        fitted = torch.randn(STEPS, depth, 2, p, generator=g) * 0.05 + torch.tensor([2.0, -1.5, 0.5][:p])
        fitted[3, 0, 1] = float("nan")  # keeps the Lagrange weights
        c.set_fitted(fitted)
    if corrected:
        c.set_correction(InputCorrection(torch.randn(depth, 2, dim, 2, generator=g) * 0.05,
                                         torch.randn(depth, 2, 2, dim, generator=g) * 0.05))
    save_skip_schedule(c, str(path), arch=arch, sampler=SamplerSettings(cfg_scale=cfg_scale))
    return str(path)


def torch_samples(model, schedule, labels, seeds, noise):
    ctrl, meta = read_skip_schedule(schedule)
    apply_lazy(model, STEPS, controller=ctrl)
    try:
        gen = generate(model, labels, seeds, steps=STEPS, cfg_scale=meta["sampler"].cfg_scale, noise=noise)
    finally:
        remove_lazy(model)
    return gen.images.numpy()


def export(model, schedule, out):
    ctrl, meta = read_skip_schedule(schedule)
    return export_onnx(model, ctrl, meta, ExportConfig(skip_schedule=schedule, out_dir=str(out)))


@pytest.fixture(scope="module")
def fmnist_bundle(tmp_path_factory):
    """DiT-FMNIST (the shipped weights) under a fit2 + correction schedule, exported once."""
    tmp = tmp_path_factory.mktemp("fmnist")
    model = load_model("DiT-FMNIST")
    # Skips in 3 of the 8 blocks: fewer skip graphs to export, the same code paths.
    skip_file = write_skip_schedule(tmp / "s.safetensors", "DiT-FMNIST", model.config.depth, model.config.hidden_size,
                           skip_layers=3)
    export(model, skip_file, tmp / "bundle")
    return model, skip_file, tmp / "bundle"


@pytest.mark.parametrize("arch", ["DiT", "LargeDiT"])
def test_export_works_for_the_dit_zoo_and_large_dit(tmp_path, arch):
    if arch == "DiT":
        model = tiny_dit(learn_sigma=True, in_channels=4, depth=2)
    else:
        from lazydit.core.models.large_dit import TINY, LargeDiT
        torch.manual_seed(0)
        model = LargeDiT(TINY).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.1)  # adaLN-Zero init would make every block an identity
    cfg = model.config
    skip_file = write_skip_schedule(tmp_path / "s.safetensors", arch, cfg.depth, cfg.hidden_size, reuse="taylor1",
                           corrected=False, cfg_scale=1.5)
    export(model, skip_file, tmp_path / "b")
    labels, seeds = [1, 2], [4, 5]
    noise = SeededNoise(seeds, (cfg.in_channels, cfg.input_size, cfg.input_size)).draw()
    bundle = load_bundle(str(tmp_path / "b"))
    got = sample(bundle.backend(threads=1), bundle.plan, labels, noise.numpy())
    want = torch_samples(model, skip_file, labels, seeds, noise)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))  # random weights: large values


BLOCK_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, NoTorch())
import numpy as np
from lazydit.deploy import load_bundle, sample
b = load_bundle(sys.argv[1])
np.save(sys.argv[3], sample(b.backend(threads=1), b.plan, [3, 7], np.load(sys.argv[2])))
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
"""


def test_onnxruntime_samples_match_torch_on_dit_fmnist_with_torch_blocked(fmnist_bundle, tmp_path):
    """The deploy sampler runs in a process where importing torch fails, and its samples match
    torch sampling with the same schedule and noise."""
    model, skip_file, folder = fmnist_bundle
    noise = SeededNoise([0, 1], (1, 28, 28)).draw()
    np.save(tmp_path / "noise.npy", noise.numpy())
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
    run = subprocess.run([sys.executable, "-c", BLOCK_TORCH, str(folder), str(tmp_path / "noise.npy"),
                          str(tmp_path / "out.npy")], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    want = torch_samples(model, skip_file, [3, 7], [0, 1], noise)
    assert np.abs(np.load(tmp_path / "out.npy") - want).max() <= 1e-4
    # The schedule matters at this tolerance: computing everything gives other images.
    full = generate(model, [3, 7], [0, 1], steps=STEPS, cfg_scale=3.0, noise=noise).images.numpy()
    assert np.abs(full - want).max() > 1e-3


@pytest.mark.parametrize("damage, message", [
    ("graph", "graph block0.attn.compute.onnx is missing"),
    ("mask", "skips at step 0"),
    ("json", "unreadable JSON"),
])
def test_damaged_bundles_are_refused_in_one_line(fmnist_bundle, tmp_path, damage, message):
    import shutil
    folder = tmp_path / "b"
    shutil.copytree(fmnist_bundle[2], folder)
    man_path = folder / "manifest.json"
    if damage == "graph":
        os.remove(folder / "block0.attn.compute.onnx")
    elif damage == "json":
        man_path.write_text(man_path.read_text()[:-20])
    else:
        man = json.loads(man_path.read_text())
        man["schedule"]["mask"][0][0][0] = 1
        man_path.write_text(json.dumps(man))
    with pytest.raises(ValueError, match=message) as e:
        load_bundle(str(folder))
    assert "\n" not in str(e.value)


def test_export_refuses_to_overwrite_a_folder_that_is_not_a_bundle(tmp_path):
    model = tiny_dit(depth=1)
    skip_file = write_skip_schedule(tmp_path / "s.safetensors", "DiT", 1, 32, reuse="copy", corrected=False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a bundle"):
        export(model, skip_file, tmp_path / "b")
    assert os.listdir(tmp_path / "b") == ["notes.txt"]


def test_cli_export_refuses_a_gate_file_before_loading_a_model(tmp_path, capsys):
    from lazydit.cli import main
    from lazydit.core.lazy import save_gates
    save_gates(LazyController(LazyConfig(num_steps=4), 8, 128, meta={"arch": "DiT-FMNIST"}), str(tmp_path / "g.safetensors"))
    assert main(["export", "--skip-schedule", str(tmp_path / "g.safetensors"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "is not a lazydit skip-schedule file" in err and err.count("\n") == 1 and not (tmp_path / "b").exists()


def test_bench_ratios_are_paired_per_round():
    from lazydit.export.bench import ratios
    times = {"onnxruntime lazy": [1.0, 3.0, 2.0], "onnxruntime full": [2.0, 4.0, 8.0],
             "torch eager full": [1.0, 1.0, 1.0], "torch eager lazy (controller)": [1.0, 1.0, 1.0],
             "onnxruntime one graph per step, full": [1.0, 2.0, 4.0]}
    r = ratios(times, compiled=False)["onnxruntime lazy / full (time)"]
    assert r == {"paired_median": 0.5, "min": 0.25, "max": 0.75}
