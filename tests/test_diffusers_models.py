"""A diffusers DiT where lazydit expects its own models: `train_transformer_gates` on a bare transformer, and a
local diffusers folder (transformer or whole pipeline) as `--model PATH` of train-gates and sample."""
import json
import os

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from conftest import tiny_dit  # noqa: E402
from test_large_dit import randomize  # noqa: E402
from lazydit.cli import main  # noqa: E402
from lazydit.integrations.diffusers import DiffusersDiT, build_diffusers_dit, use_dit_timestep_embedding  # noqa: E402
from lazydit.train.diffusers_gates import train_transformer_gates  # noqa: E402
from lazydit.core.lazy import apply_lazy, get_controller, read_gates, remove_lazy  # noqa: E402
from lazydit.loading import load_any_model  # noqa: E402
from lazydit.train.gates import GateTrainConfig, train_gates  # noqa: E402

torch.set_num_threads(1)


def _cfg(tmp_path, **kw):
    return GateTrainConfig(num_steps=4, iters=2, batch_size=2, cfg_scale=2.0, rollout_every=2, lr=1e-3,
                           out_dir=str(tmp_path / "g"), mode="onpolicy", calibrate=False, calib_images=2, **kw)


def test_train_transformer_gates_takes_a_bare_diffusers_transformer(tmp_path):
    hf = randomize(build_diffusers_dit(tiny_dit().config))
    with pytest.raises(ValueError, match="train_transformer_gates"):  # training knows no integration
        train_gates(hf, _cfg(tmp_path), progress=False)
    ctrl, summary = train_transformer_gates(hf, _cfg(tmp_path), progress=False)
    assert get_controller(hf) is ctrl and "lazy_ratio" in summary["achieved"]  # the gates stay on the transformer
    assert read_gates(str(tmp_path / "g" / "gates.safetensors"))[1]["arch"] == "DiT"
    before = ctrl.attn.detach().clone()
    again, _ = train_transformer_gates(hf, _cfg(tmp_path), progress=False)  # a gated transformer trains its own gates
    assert again is ctrl and get_controller(hf) is ctrl and not torch.equal(ctrl.attn, before)
    hf2 = randomize(build_diffusers_dit(tiny_dit().config))
    apply_lazy(hf2, 8)
    with pytest.raises(ValueError, match="model has 8-step gates, training asks for 4"):
        train_transformer_gates(hf2, _cfg(tmp_path), progress=False)
    assert get_controller(hf2).config.num_steps == 8  # left as it was


def test_diffusers_folders_as_model(tmp_path, capsys):
    hf = randomize(build_diffusers_dit(tiny_dit().config, dit_timestep_embedding=False))
    hf.save_pretrained(str(tmp_path / "t"))
    loaded = load_any_model(str(tmp_path / "t"))
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y), hf(x, timestep=t, class_labels=y).sample)
    use_dit_timestep_embedding(loaded.transformer)  # not saved in the config: weights in DiT's layout need it again
    assert isinstance(loaded, DiffusersDiT) and loaded.arch_name == "DiT"

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                                  up_block_types=("UpDecoderBlock2D",), layers_per_block=1, latent_channels=4,
                                  norm_num_groups=8)
    pipe_dir = str(tmp_path / "pipe")
    diffusers.DiTPipeline(transformer=hf, vae=vae, scheduler=diffusers.DDIMScheduler()).save_pretrained(pipe_dir)
    gates = str(tmp_path / "g")
    assert main(["train-gates", "--model", pipe_dir, "--steps", "4", "--mode", "onpolicy", "--iters", "2",
                 "--batch-size", "2", "--rollout-every", "2", "--calib-images", "2", "--cfg-scale", "2",
                 "--out", gates]) == 0
    assert main(["sample", "--model", pipe_dir, "--gates", os.path.join(gates, "gates.safetensors"), "--steps", "4",
                 "--labels", "1,2", "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()

    # One-line errors.
    assert main(["sample", "--model", pipe_dir, "--ckpt", "w.safetensors", "--out", str(tmp_path / "s2")]) == 2
    assert "diffusers folder with its own weights" in capsys.readouterr().err
    with open(os.path.join(pipe_dir, "model_index.json")) as f:
        index = json.load(f)
    index["transformer"] = ["diffusers", "PixArtTransformer2DModel"]
    with open(os.path.join(pipe_dir, "model_index.json"), "w") as f:
        json.dump(index, f)
    assert main(["sample", "--model", pipe_dir, "--out", str(tmp_path / "s3")]) == 2
    assert "holds a PixArtTransformer2DModel" in capsys.readouterr().err
    os.makedirs(tmp_path / "empty")
    assert main(["sample", "--model", str(tmp_path / "empty"), "--out", str(tmp_path / "s4")]) == 2
    assert "is not a diffusers folder" in capsys.readouterr().err


def test_rollouts_on_a_diffusers_schedulers_timesteps(tmp_path, capsys):
    from lazydit.core.diffusion.samplers import sample_loop
    from lazydit.integrations.diffusers import sample_dit
    from lazydit.integrations.diffusers.models import noise_schedule_from_scheduler
    from lazydit.train.diffusers_gates import train_gates_on_scheduler
    from lazydit.pipeline import cfg_model_fn
    hf = randomize(build_diffusers_dit(tiny_dit().config))
    ddim = diffusers.DDIMScheduler(clip_sample=False)
    sched = noise_schedule_from_scheduler(ddim, 4)
    assert sched.timestep_map.tolist() == [0, 250, 500, 750]
    # lazydit's DDIM on that noise schedule is the scheduler's own loop.
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = sample_dit(hf, ddim, [1, 2], latents, num_inference_steps=4, guidance_scale=2.0)
    fn = cfg_model_fn(DiffusersDiT(hf), torch.tensor([1, 2]), 2.0, guide_channels=None)
    assert torch.allclose(sample_loop(fn, sched, latents), ref, rtol=1e-5, atol=1e-5)  # float32 rounding
    assert noise_schedule_from_scheduler(diffusers.DPMSolverMultistepScheduler(), 4).timestep_map.tolist() == [250, 500, 749, 999]
    for bad, n, match in [(diffusers.EulerDiscreteScheduler(timestep_spacing="linspace"), 5, "fractional"),  # 749.25
                          (diffusers.DDIMScheduler(timestep_spacing="linspace"), 4, "steps by its stride"),
                          (diffusers.HeunDiscreteScheduler(), 4, "makes 7 model calls for 4 steps"),
                          (diffusers.FlowMatchEulerDiscreteScheduler(), 4, "not an epsilon-prediction"),
                          (diffusers.DDIMScheduler(prediction_type="v_prediction"), 4, "not an epsilon-prediction")]:
        with pytest.raises(ValueError, match=match):
            noise_schedule_from_scheduler(bad, n)

    ctrl, _ = train_gates_on_scheduler(hf, _cfg(tmp_path), diffusers.DDIMScheduler(), progress=False)
    path = str(tmp_path / "g" / "gates.safetensors")
    meta = read_gates(path)[1]
    assert meta["scheduler"] == "DDIMScheduler" and meta["timesteps"] == [750, 500, 250, 0] and meta["arch"] == "DiT"
    assert get_controller(hf) is ctrl
    with pytest.raises(ValueError, match="placement mode searches on lazydit's own sampler"):
        train_gates_on_scheduler(hf, GateTrainConfig(num_steps=4, mode="placement", target_lazy=0.3),
                                 diffusers.DDIMScheduler())

    # Through the CLI, on a pipeline folder's own scheduler; lazydit's sampler refuses such gates.
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                                  up_block_types=("UpDecoderBlock2D",), layers_per_block=1, latent_channels=4,
                                  norm_num_groups=8)
    pipe_dir, out = str(tmp_path / "pipe"), str(tmp_path / "g2")
    remove_lazy(hf)
    diffusers.DiTPipeline(transformer=hf, vae=vae, scheduler=diffusers.DPMSolverMultistepScheduler()).save_pretrained(pipe_dir)
    assert main(["train-gates", "--model", pipe_dir, "--diffusers-scheduler", "--steps", "4", "--mode", "onpolicy",
                 "--iters", "2", "--batch-size", "2", "--rollout-every", "2", "--calib-images", "2",
                 "--cfg-scale", "2", "--out", out]) == 0
    meta = read_gates(os.path.join(out, "gates.safetensors"))[1]
    assert meta["scheduler"] == "DPMSolverMultistepScheduler" and meta["timesteps"] == [999, 749, 500, 250]
    capsys.readouterr()
    assert main(["sample", "--model", pipe_dir, "--gates", os.path.join(out, "gates.safetensors"), "--steps", "4",
                 "--out", str(tmp_path / "s")]) == 2
    assert "made for the timesteps of DPMSolverMultistepScheduler (999, 749, ...)" in capsys.readouterr().err
