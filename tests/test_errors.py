"""Bad input gets a one-line error naming the problem, and nothing is half-written."""
import os
import pathlib
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_dit
from lazydit.cli import main
from lazydit.core.lazy import LazyConfig, apply_lazy, get_controller, save_gates
from lazydit.core.models import build_model, load_weights
from lazydit.pipeline import generate

SMALL = ["--model", "DiT-S/8", "--random-init", "--image-size", "16", "--steps", "3", "--labels", "1,2"]


def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("args, message", [
    (["--model", "DiT-Q/2", "--random-init"], "unknown model 'DiT-Q/2'"),
    (SMALL + ["--labels", "1,1000"], "class label 1000 is out of range"),
    (SMALL + ["--cfg-scale", "0.5"], "cfg scale must be a finite number >= 1"),
    (SMALL + ["--cfg-scale", "nan"], "cfg scale must be a finite number >= 1"),
    (SMALL + ["--cfg-scale", "inf"], "cfg scale must be a finite number >= 1"),
    (SMALL + ["--eta", "1.5"], "eta must be in [0, 1]"),
    (SMALL + ["--eta", "nan"], "eta must be in [0, 1]"),
    (SMALL + ["--sampler", "ddpm", "--eta", "0.5"], "eta applies to ddim only"),
    (["--model", "DiT-S/8", "--random-init", "--image-size", "20"], "not divisible by patch size 8"),
    (["--model", "DiT-S/8", "--image-size", "16"], "needs --ckpt"),
    (SMALL + ["--force-skip", "every:x"], "bad skip pattern"),
])
def test_cli_errors_are_one_line_and_write_nothing(args, message, capsys, tmp_path):
    out = tmp_path / "out"
    code, err = run_cli(["sample", *args, "--out", str(out)], capsys)
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def _outputs(tmp_path):
    """A regular file, and a folder whose samples.npz is a folder: paths no command can write to."""
    (tmp_path / "file").write_text("not a folder\n")
    (tmp_path / "d" / "samples.npz").mkdir(parents=True)
    return str(tmp_path / "file"), str(tmp_path / "d")


@pytest.mark.parametrize("argv, message", [
    (["sample", *SMALL, "--out", "{file}/sub"], "cannot write in {file}/sub: {file} exists and is not a folder"),
    (["sample", *SMALL, "--out", "{d}"], "cannot write {d}/samples.npz: a folder of that name is in the way"),
    (["sample-many", "--num-images", "1", "--out", "{d}"], "cannot write {d}/samples.npz: a folder"),
    (["sample-many", "--num-images", "1", "--out", "{file}/a/b"], "{file} exists and is not a folder"),
    (["train-gates", "--out", "{file}/g"], "cannot write in {file}/g: {file} exists and is not a folder"),
    (["pretrain", "--out", "{file}/p"], "cannot write in {file}/p: {file} exists and is not a folder"),
    (["demo", "--out", "{file}/demo"], "cannot write in {file}/demo: {file} exists"),
    (["bench", "--out", "{file}/b"], "cannot write in {file}/b: {file} exists"),
    (["analyze", "--out", "{file}/a"], "cannot write in {file}/a: {file} exists"),
    (["macs", "--model", "DiT-S/2", "--json", "{file}/m.json"], "cannot write {file}/m.json: {file} exists"),
    (["freeze", "g.safetensors", "--out", "{file}/s.safetensors"], "cannot write {file}/s.safetensors"),
    (["export", "--skip-schedule", "s.safetensors", "--out", "{file}/bundle"], "cannot write in {file}: it exists"),
    (["import-gates", "o.pt", "--out", "{file}/g.safetensors"], "cannot write {file}/g.safetensors"),
    (["inception", "s.npz", "--ref", "r.npz", "--weights", "w.pth", "--out", "{file}/i.json"], "cannot write {file}/i"),
    (["bench-deploy", "--out", "{file}/b"], "cannot write in {file}/b: {file} exists"),
])
def test_every_command_checks_its_output_path_before_any_work(argv, message, tmp_path, capsys, monkeypatch):
    file, d = _outputs(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)  # the input files named do not exist: the output check must come first
    # Without the check some of these commands would train or benchmark for minutes before failing.
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the command started work before checking --out"))
    signal.alarm(60)
    try:
        code, err = run_cli([a.format(file=file, d=d) for a in argv], capsys)
    finally:
        signal.alarm(0)
    assert code == 2 and len(err.splitlines()) == 1 and message.format(file=file, d=d) in err, err
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written


def test_output_paths_a_command_can_write_are_accepted(tmp_path):
    from lazydit.io import check_output, check_output_file
    run = tmp_path / "run"
    (run / "shards").mkdir(parents=True)
    (run / "samples.npz").write_bytes(b"a previous run's")  # replaced atomically: not in the way
    check_output(str(run), "shards/", "samples.npz", "lazy_stats.json")
    check_output(str(tmp_path / "new" / "deeper"), "shards/", "samples.npz")  # the writers make the folders
    check_output_file(str(tmp_path / "new" / "x.json"))
    check_output_file(None)  # an optional file not asked for


def test_unwritable_output_folder_is_refused(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    real = os.access
    # root writes anywhere (but on a read-only mount): let access() answer as it would for a user
    monkeypatch.setattr(os, "access", lambda p, mode: real(p, mode) and os.path.normpath(p) != str(ro))
    code, err = run_cli(["sample", *SMALL, "--out", str(ro / "new" / "sub")], capsys)
    assert code == 2 and err.endswith(f"cannot write in {ro}/new/sub: {ro} is not writable")
    code, err = run_cli(["macs", "--model", "DiT-S/2", "--json", str(ro / "m.json")], capsys)
    assert code == 2 and err.endswith(f"cannot write {ro}/m.json: {ro} is not writable")


def test_a_file_where_a_folder_goes_inside_the_output_is_refused(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "shards").write_text("")
    code, err = run_cli(["sample-many", "--num-images", "1", "--out", str(tmp_path / "m")], capsys)
    assert code == 2 and err.endswith(f"cannot write in {tmp_path}/m/shards: it exists and is not a folder")


def test_generate_with_no_labels_and_no_seeds():
    with pytest.raises(ValueError, match="at least one label and one seed"):
        generate(tiny_dit(), labels=[], seeds=[], steps=2)


def test_apply_lazy_refuses_a_config_for_another_step_count():
    m = tiny_dit()
    with pytest.raises(ValueError, match=r"num_steps=10 but config.num_steps=20"):
        apply_lazy(m, num_steps=10, config=LazyConfig(num_steps=20))
    assert get_controller(m) is None  # refused before any module was wrapped
    assert apply_lazy(m, 10, LazyConfig(num_steps=10)).config.num_steps == 10


def test_checkpoint_key_and_shape_mismatch(tmp_path):
    m = build_model("DiT-S/8", input_size=16)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    p = str(tmp_path / "ck.safetensors")
    save_file({k: v for k, v in sd.items() if k != "pos_embed"}, p)
    with pytest.raises(ValueError, match=r"missing \(e.g. pos_embed\)"):
        load_weights(m, p)
    sd2 = dict(sd)
    sd2["y_embedder.embedding_table.weight"] = torch.zeros(11, 384)
    save_file(sd2, p)
    with pytest.raises(ValueError, match="y_embedder.embedding_table.weight has shape"):
        load_weights(m, p)
    save_file({**sd, "extra.weight": torch.zeros(1)}, p)
    with pytest.raises(ValueError, match="unexpected"):
        load_weights(m, p)


def test_truncated_checkpoints(tmp_path):
    m = build_model("DiT-S/8", input_size=16)
    for name in ("ck.safetensors", "ck.pt"):
        p = str(tmp_path / name)
        if name.endswith(".pt"):
            torch.save(m.state_dict(), p)
        else:
            save_file(m.state_dict(), p)
        data = open(p, "rb").read()
        open(p, "wb").write(data[: len(data) // 3])
        with pytest.raises(ValueError, match="truncated"):
            load_weights(m, p)


def test_pt_checkpoint_loads_weights_only(tmp_path):
    torch.manual_seed(0)
    m, ema = build_model("DiT-S/8", input_size=16), build_model("DiT-S/8", input_size=16)
    p = str(tmp_path / "ck.pt")
    torch.save({"model": m.state_dict(), "ema": ema.state_dict()}, p)  # DiT's train.py layout
    got = load_weights(build_model("DiT-S/8", input_size=16), p).state_dict()
    assert all(torch.equal(got[k], v) for k, v in ema.state_dict().items())  # the EMA weights, as DiT samples
    assert not torch.equal(got["x_embedder.proj.weight"], m.state_dict()["x_embedder.proj.weight"])
    torch.save({"model": m.state_dict()}, p)
    got = load_weights(build_model("DiT-S/8", input_size=16), p).state_dict()
    assert all(torch.equal(got[k], v) for k, v in m.state_dict().items())
    # Weights only: a pickle that would call a function on load is refused, and the call never happens.
    flag = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (flag,))
    torch.save({"model": m.state_dict(), "extra": Payload()}, p)
    with pytest.raises(ValueError):
        load_weights(build_model("DiT-S/8", input_size=16), p)
    assert not flag.exists()


def test_gate_file_for_another_model_or_step_count(tmp_path, capsys):
    m = build_model("DiT-S/8", input_size=16)
    g = str(tmp_path / "g.safetensors")
    save_gates(apply_lazy(m, 3), g)
    code, err = run_cli(["sample", *SMALL, "--gates", g, "--steps", "20", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "3-step gates, but the sampler runs 20" in err
    other = build_model("DiT-B/8", input_size=16)
    g2 = str(tmp_path / "g2.safetensors")
    save_gates(apply_lazy(other, 3), g2)
    code, err = run_cli(["sample", *SMALL, "--gates", g2, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "arch=DiT-B/8, but the model has arch=DiT-S/8" in err
    assert not (tmp_path / "o").exists()


def test_nan_noise(tmp_path, capsys):
    noise = np.random.randn(2, 4, 16, 16).astype(np.float32)
    noise[0, 0, 0, 0] = np.nan
    p = str(tmp_path / "n.npy")
    np.save(p, noise)
    code, err = run_cli(["sample", *SMALL, "--noise", p, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "NaN" in err
    with pytest.raises(ValueError, match="NaN"):
        generate(tiny_dit(), [1], [0], steps=2, noise=torch.full((1, 4, 8, 8), float("nan")))


def test_sample_cli_forced_half_writes_grid_and_ratio(tmp_path, capsys):
    out = tmp_path / "s"
    code = main(["sample", *SMALL, "--steps", "4", "--force-skip", "every:2", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "lazy ratio 0.500" in text
    assert sorted(os.listdir(out)) == ["grid.png", "sample_config.json", "samples.npz"]
    data = np.load(out / "samples.npz")
    assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (2, 16, 16, 4)


def test_nan_weights_are_an_error_not_black_images(tmp_path):
    m = tiny_dit()
    with torch.no_grad():
        m.final_layer.linear.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        generate(m, [1], [0], steps=3, cfg_scale=2.0)


@pytest.mark.parametrize("field, value", [("rho_attn", float("nan")), ("rho_ffn", float("inf")),
                                          ("lr", float("inf")), ("lr", 0.0), ("target_lazy", float("nan"))])
def test_non_finite_training_settings_are_refused(field, value, tmp_path):
    from lazydit.train.gates import GateTrainConfig
    with pytest.raises(ValueError):
        GateTrainConfig(num_steps=8, out_dir=str(tmp_path), **{field: value}).validate()


@pytest.mark.parametrize("argv", [["sample", "--labels", ""], ["sample", "--image-size", "0"],
                                  ["sample", "--image-size", "-4"], ["demo", "--threads", "0"],
                                  ["demo", "--threads", "-1"], ["train-gates", "--ckpt-every", "0"],
                                  ["macs", "--image-size", "0"], ["demo", "--settings", ""],
                                  ["sample", "--seed", str(10 ** 23)], ["sample-many", "--seed", "-1"],
                                  ["frontier", "--eval-seed", str(2 ** 40)], ["demo", "--diffusers-hooks", "Foo"]])
def test_bad_numbers_fail_at_parse_time_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith("lazydit") and "error:" in err[-1]


def test_the_embedded_models_own_values_keep_its_weights_and_others_are_refused():
    from lazydit.core.models import EMBEDDED, load_model
    shipped = load_model(EMBEDDED).state_dict()
    same = load_model(EMBEDDED, input_size=28, num_classes=10).state_dict()
    assert all(torch.equal(shipped[k], same[k]) for k in shipped)
    with pytest.raises(ValueError, match="shipped DiT-FMNIST weights are for input_size=28, not 32"):
        load_model(EMBEDDED, input_size=32)
    with pytest.raises(ValueError, match="num_classes=10, not 12"):
        load_model(EMBEDDED, num_classes=12)
    rand = load_model(EMBEDDED, random_init=True, input_size=32).state_dict()  # asked for: random weights
    assert rand["pos_embed"].shape != shipped["pos_embed"].shape


def test_the_zoo_refuses_a_folder_and_points_to_the_loader_that_reads_one(tmp_path):
    from lazydit.core.models import load_model
    with pytest.raises(ValueError, match="is a folder, not a zoo model; .* lazydit.loading.load_any_model"):
        load_model(str(tmp_path))
