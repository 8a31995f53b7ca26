"""Importing gate weights from the official LazyDiT checkpoint layout (`lazydit import-gates`)."""
import argparse
import os

import pytest
import torch

from conftest import tiny_dit
from lazydit.cli import main
from lazydit.core.diffusion.noise_schedule import NoiseSchedule
from lazydit.integrations.official_gates import official_controller, official_weights, read_official
from lazydit.core.lazy import apply_lazy, read_gates, remove_lazy
from lazydit.pipeline import generate

torch.set_num_threads(1)
N, LABELS, SEEDS = 6, [1, 2, 3], [0, 1, 2]


class _Unsafe:
    def __reduce__(self):
        return (os.system, ("true",))  # harmless if it ever ran; weights-only loading must refuse it


def official_checkpoint(depth, dim, n, seed=0, std=0.05):
    """What the official `save_lazy_learning_weights` writes: per-step Linear(D, 1) weights, plus
    the optimizer state and the argparse options."""
    g = torch.Generator().manual_seed(seed)
    weights = {f"block_{l}_{k}_lazy_learning_weight_{i}": torch.randn(1, dim, generator=g) * std
               for l in range(depth) for k in ("attn", "mlp") for i in range(n)}
    return {"model": weights, "opt": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]},
            "args": argparse.Namespace(model="DiT-XL/2", num_sampling_steps=n), "epoch": 1, "step": 500}


def official_decisions(model, sd, n):
    """The official convention, by hand: a gate is looked up by the raw timestep through the
    respaced timestep_map (index 0 = least noisy), s = sigmoid(sum over tokens of Linear(Z)),
    compute where s >= 0.5, skipped rows reuse the module's last output. Returns the images
    and skips[k, l, m, b] at each sampling step k."""
    tmap = {int(t): i for i, t in enumerate(NoiseSchedule.respaced(n).timestep_map)}
    depth = len(model.blocks)
    skips = torch.zeros(n, depth, 2, 2 * len(LABELS), dtype=torch.bool)
    cur, cache, hooks = {"k": -1}, {}, []

    def on_model(mod, args):
        cur["k"] += 1
        cur["i"] = tmap[int(args[1][0])]  # the official code: timestep_map[t[0].item()]

    def on_module(layer, m, name):
        def fn(mod, args, out):
            if (layer, m) in cache:
                w = sd[f"block_{layer}_{name}_lazy_learning_weight_{cur['i']}"]
                compute = torch.sigmoid((args[0] @ w.T).sum(dim=(-1, -2))) >= 0.5
                skips[cur["k"], layer, m] = ~compute
                out = torch.where(compute.view(-1, 1, 1), out, cache[layer, m])
            cache[layer, m] = out
            return out
        return fn

    hooks.append(model.register_forward_pre_hook(on_model))
    for layer, b in enumerate(model.blocks):
        hooks += [b.attn.register_forward_hook(on_module(layer, 0, "attn")),
                  b.mlp.register_forward_hook(on_module(layer, 1, "mlp"))]
    images = generate(model, LABELS, SEEDS, steps=n, cfg_scale=2.0).images
    for h in hooks:
        h.remove()
    return images, skips


def test_imported_gates_decide_as_the_official_code_and_the_flip_matters(tmp_path):
    model = tiny_dit()
    ckpt = official_checkpoint(3, 32, N)
    path = str(tmp_path / "lazy.pt")
    torch.save(ckpt, path)
    sd = read_official(path)  # weights-only, argparse options included
    ref_images, ref_skips = official_decisions(model, sd, N)
    assert 0.2 < ref_skips[1:].float().mean() < 0.8  # a mixed skip/compute pattern

    ctrl = apply_lazy(model, N, controller=official_controller(sd, arch="DiT"))
    out = generate(model, LABELS, SEEDS, steps=N, cfg_scale=2.0)
    remove_lazy(model)
    assert torch.equal(out.stats.skips, ref_skips)
    assert (out.images - ref_images).abs().max() <= 1e-5
    assert ctrl.meta["timesteps"] == [int(t) for t in NoiseSchedule.respaced(N).timestep_map[::-1]]

    # Official index i taken as step i: the gates of the wrong noise level decide.
    naive = official_controller(sd, arch="DiT")
    with torch.no_grad():
        w = official_weights(sd)
        naive.attn.copy_(w["attn"])
        naive.ffn.copy_(w["ffn"])
    apply_lazy(model, N, controller=naive)
    wrong = generate(model, LABELS, SEEDS, steps=N, cfg_scale=2.0)
    remove_lazy(model)
    changed = (wrong.stats.skips != ref_skips).float().mean()
    assert changed > 0.1 and (wrong.images - ref_images).abs().max() > 1e-3


def test_import_gates_cli(tmp_path, capsys):
    path, out = str(tmp_path / "lazy.pt"), str(tmp_path / "gates.safetensors")
    ckpt = official_checkpoint(8, 128, 4)  # DiT-FMNIST: depth 8, width 128
    torch.save(ckpt, path)
    assert main(["import-gates", path, "--out", out, "--model", "DiT-FMNIST"]) == 0
    tensors, meta = read_gates(out)
    assert meta["arch"] == "DiT-FMNIST" and meta["lazy_config"]["num_steps"] == 4
    # Sampling step 0 (noisiest) holds the official index 3; step 3 holds index 0.
    assert torch.equal(tensors["attn"][5, 0], ckpt["model"]["block_5_attn_lazy_learning_weight_3"][0])
    assert torch.equal(tensors["ffn"][2, 3], ckpt["model"]["block_2_mlp_lazy_learning_weight_0"][0])
    assert main(["sample", "--gates", out, "--steps", "4", "--out", str(tmp_path / "s"), "--labels", "1,2"]) == 0

    # One-line errors, nothing written.
    bad = str(tmp_path / "bad.safetensors")
    assert main(["import-gates", path, "--out", bad, "--model", "DiT-S/2"]) == 2
    assert "are for depth 8 and width 128, but DiT-S/2 has depth 12 and width 384" in capsys.readouterr().err
    del ckpt["model"]["block_7_mlp_lazy_learning_weight_2"]
    torch.save(ckpt, path)
    assert main(["import-gates", path, "--out", bad]) == 2
    assert "missing gate block_7_mlp_lazy_learning_weight_2" in capsys.readouterr().err
    torch.save({"model": {}, "args": _Unsafe()}, path)  # a pickle that would run code is refused
    assert main(["import-gates", path, "--out", bad]) == 2
    assert "cannot read official gate file" in capsys.readouterr().err
    assert not os.path.exists(bad)


def test_one_gate_per_block_needs_the_step_count():
    sd = {f"block_{l}_{k}_lazy_learning_weight": torch.randn(1, 32) for l in range(3) for k in ("attn", "mlp")}
    with pytest.raises(ValueError, match="give the step count"):
        official_weights(sd)
    w = official_weights(sd, num_steps=5)
    assert w["attn"].shape == (3, 5, 32) and torch.equal(w["attn"][1, 4], sd["block_1_attn_lazy_learning_weight"][0])
