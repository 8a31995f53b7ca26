"""Gate training on a tiny random DiT: penalty direction, budget mode, sources, resume, DDP."""
import dataclasses
import os
import re
import socket

import pytest
import torch
import torch.multiprocessing as mp

from conftest import tiny_dit
from lazydit.core.lazy import read_gates
from lazydit.pipeline import generate
from lazydit.train.gates import GateTrainConfig, GateTrainer, train_gates


def cfg(tmp_path, **kw):
    base = dict(num_steps=8, iters=30, batch_size=4, cfg_scale=2.0, rollout_every=2, lr=1e-3,
                out_dir=str(tmp_path / "g"), ckpt_every=10)
    base.update(kw)
    return GateTrainConfig(**base)


def sampled_ratio(model, n=16, seed=500):
    g = generate(model, [i % 10 for i in range(n)], list(range(seed, seed + n)), steps=8, cfg_scale=2.0)
    return g.stats.ratio()


def test_rho_zero_stays_diligent_and_large_rho_gets_lazy(tmp_path):
    m = tiny_dit()
    train_gates(m, cfg(tmp_path, rho_attn=0.0, rho_ffn=0.0, lr=1e-4, step_weights="uniform"), progress=False)
    assert sampled_ratio(m) < 0.05
    # Gain weights price an error by its effect on the sample; the last step's barely moves it,
    # so without a penalty its gates may drift either way. No other step may go lazy.
    m = tiny_dit()
    train_gates(m, cfg(tmp_path, rho_attn=0.0, rho_ffn=0.0, lr=1e-4), progress=False)
    assert sampled_ratio(m) <= 1 / 8 + 0.02
    m2 = tiny_dit()
    train_gates(m2, cfg(tmp_path, rho_attn=10.0, rho_ffn=10.0, out_dir=str(tmp_path / "g2")), progress=False)
    assert sampled_ratio(m2) > 0.5


@pytest.mark.parametrize("target", [0.3, 0.5])
def test_budget_mode_hits_target(tmp_path, target):  # on-policy gates
    m = tiny_dit(std=0.05)
    _, summary = train_gates(m, cfg(tmp_path, mode="onpolicy", target_lazy=target, iters=30, calib_images=128), progress=False)
    assert abs(summary["achieved"]["lazy_ratio"] - target) <= 0.03
    # The reported ratio is the calibration's own measurement at the threshold it kept.
    from lazydit.core.lazy import get_controller
    from lazydit.train.gates import measure_lazy
    whole = measure_lazy(m, get_controller(m), cfg(tmp_path, calib_images=128))
    assert summary["achieved"]["lazy_ratio"] == pytest.approx(whole["lazy_ratio"], abs=1e-6)
    assert abs(sampled_ratio(m, n=128) - target) <= 0.03  # fresh seeds, real thresholded sampling
    _, meta = read_gates(str(tmp_path / "g" / "gates.safetensors"))
    assert meta["achieved"]["lazy_ratio"] == summary["achieved"]["lazy_ratio"]
    assert meta["train_config"]["target_lazy"] == target


def test_paper_mode_sources_run(tmp_path):
    m = tiny_dit()
    _, s = train_gates(m, cfg(tmp_path, mode="paper", iters=6, rho_attn=1.0, rho_ffn=1.0), progress=False)
    # rho 1 outweighs any distillation error: every call after step 0 skips (step 0 has no cache)
    assert 0.8 < s["achieved"]["lazy_ratio"] <= 7 / 8 + 1e-6
    data = (torch.randn(32, 4, 8, 8).clamp(-1, 1), torch.randint(0, 10, (32,)))
    for objective in ("distill", "noise"):
        m = tiny_dit()
        _, s = train_gates(m, cfg(tmp_path, mode="paper", source="dataset", objective=objective, iters=6),
                           dataset=data, progress=False)
        tensors, meta = read_gates(str(tmp_path / "g" / "gates.safetensors"))
        assert meta["train_config"]["objective"] == objective and meta["train_config"]["source"] == "dataset"
        assert tensors["attn"].abs().max() > 0 and tensors["ffn"].abs().max() > 0  # the gates were trained
        assert meta["achieved"] == s["achieved"]


def test_resume_matches_uninterrupted(tmp_path):
    c1 = cfg(tmp_path, mode="onpolicy", iters=16, target_lazy=0.4, calibrate=False, out_dir=str(tmp_path / "a"))
    ctrl_full, _ = train_gates(tiny_dit(), c1, progress=False)
    # A run "killed" after its iteration-8 checkpoint, then resumed by a fresh process.
    c2 = cfg(tmp_path, mode="onpolicy", iters=16, target_lazy=0.4, calibrate=False, out_dir=str(tmp_path / "b"), ckpt_every=8)
    tr = GateTrainer(tiny_dit(), c2)
    for _ in range(8):
        tr.step()
    os.makedirs(c2.out_dir, exist_ok=True)
    tr.save(os.path.join(c2.out_dir, "checkpoint.safetensors"))
    torch.manual_seed(1234)  # the resumed process starts from another global RNG state
    ctrl_res, _ = train_gates(tiny_dit(), c2, resume=True, progress=False)
    assert torch.allclose(ctrl_res.attn, ctrl_full.attn, atol=1e-6)
    assert torch.allclose(ctrl_res.ffn, ctrl_full.ffn, atol=1e-6)


def _ddp_config(out_dir):
    return GateTrainConfig(num_steps=8, iters=6, batch_size=4, cfg_scale=2.0, rollout_every=2, lr=1e-3,
                           out_dir=out_dir, mode="onpolicy", target_lazy=0.4, calibrate=False)


def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    train_gates(tiny_dit(), _ddp_config(out_dir), progress=False)
    torch.distributed.destroy_process_group()


def test_two_process_ddp_matches_single_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp")
    mp.start_processes(_ddp_worker, args=(2, port, out), nprocs=2, start_method="spawn")
    two, _ = read_gates(os.path.join(out, "gates.safetensors"))
    ctrl, _ = train_gates(tiny_dit(), _ddp_config(str(tmp_path / "one")), progress=False)
    assert torch.allclose(ctrl.attn, two["attn"], atol=1e-5) and torch.allclose(ctrl.ffn, two["ffn"], atol=1e-5)
    assert sorted(os.listdir(out)) == ["gates.safetensors", "log.jsonl", "summary.json", "train_config.json"]


@pytest.mark.parametrize("kw, message", [
    (dict(num_steps=1), "N >= 2"),
    (dict(rho_attn=-1.0), "rho must be >= 0"),
    (dict(target_lazy=0.99), r"\[0, 0.95\]"),
    (dict(mode="onpolicy", source="dataset"), "--mode paper"),
    (dict(objective="noise"), "--source dataset"),
])
def test_invalid_training_input(kw, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        cfg(tmp_path, **kw).validate()


@pytest.mark.parametrize("change, message", [(dict(lr=5e-4), "lr: 0.001 -> 0.0005"), (dict(iters=24), "iters: 16 -> 24"),
                                             (dict(seed=3), "seed: 0 -> 3"), (dict(target_lazy=0.5), "target_lazy")])
def test_resume_refuses_a_different_run_naming_the_field(tmp_path, change, message):
    c = cfg(tmp_path, mode="onpolicy", iters=16, target_lazy=0.4, calibrate=False, ckpt_every=8, lr=1e-3)
    tr = GateTrainer(tiny_dit(), c)
    tr.step()
    os.makedirs(c.out_dir, exist_ok=True)
    tr.save(os.path.join(c.out_dir, "checkpoint.safetensors"))
    with pytest.raises(ValueError, match=re.escape(message)):
        train_gates(tiny_dit(), dataclasses.replace(c, **change), resume=True, progress=False)
    with pytest.raises(ValueError, match="another model"):
        train_gates(tiny_dit(depth=2), c, resume=True, progress=False)


def test_resume_from_a_gate_file_is_refused(tmp_path):
    from lazydit.core.lazy import apply_lazy, save_gates
    c = cfg(tmp_path, mode="onpolicy", iters=4, target_lazy=0.4, calibrate=False)
    os.makedirs(c.out_dir, exist_ok=True)
    save_gates(apply_lazy(tiny_dit(), 8), os.path.join(c.out_dir, "checkpoint.safetensors"))
    with pytest.raises(ValueError, match="not a training checkpoint"):
        train_gates(tiny_dit(), c, resume=True, progress=False)


def test_each_torchrun_rank_takes_its_own_gpu(monkeypatch):
    """Read on CPU: under torchrun with --device cuda, rank LOCAL_RANK must run on cuda:LOCAL_RANK."""
    from lazydit.train import distributed
    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.setdefault("device", i))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend: calls.setdefault("backend", backend))
    assert distributed.init_from_env("cuda") == "cuda:3"
    assert calls == {"device": 3, "backend": "nccl"}
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_env("cuda") == "cuda"


def test_resumed_log_has_each_iteration_once(tmp_path):
    import json as js
    c = cfg(tmp_path, mode="onpolicy", iters=6, target_lazy=0.4, calibrate=False, ckpt_every=4,
            step_weights="uniform", calib_images=2)
    train_gates(tiny_dit(), c, progress=False)
    log = os.path.join(c.out_dir, "log.jsonl")
    with open(log, "a") as f:
        f.write('{"iter": 7, "lo')  # a crash mid-line after the last checkpoint (iteration 4)
    train_gates(tiny_dit(), c, resume=True, progress=False)
    iters = [js.loads(line)["iter"] for line in open(log)]
    assert iters == list(range(1, 7))
    train_gates(tiny_dit(), c, progress=False)  # a fresh run in the same folder starts a fresh log
    assert [js.loads(line)["iter"] for line in open(log)] == list(range(1, 7))


@pytest.mark.parametrize("offset", [0.0, 18.0])
def test_threshold_calibration_lands_on_the_target_even_far_from_one_half(tmp_path, offset):
    """Gates whose logits sit near `offset` (in logit space): the calibration must widen its
    bracket from 0.5 until it finds the threshold that skips 40% of calls on real sampling."""
    from lazydit.core.lazy import LazyConfig, apply_lazy
    from lazydit.train.gates import calibrate_threshold, measure_lazy
    m = tiny_dit()
    ctrl = apply_lazy(m, 8, LazyConfig(num_steps=8))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for w in (ctrl.attn, ctrl.ffn):
            w.copy_(torch.randn(w.shape, generator=g) * 0.05)
    c = cfg(tmp_path, calib_images=4)
    base = measure_lazy(m, ctrl, c)["lazy_ratio"]
    if offset:
        ctrl.logit = lambda kind, layer, z, _f=type(ctrl).logit: _f(ctrl, kind, layer, z) + offset
    thr, _ = calibrate_threshold(m, ctrl, c, 0.4)
    got = measure_lazy(m, ctrl, c)["lazy_ratio"]
    assert abs(got - 0.4) < 0.08, (base, thr, got)
    if offset:
        assert thr > 1 - 1e-6  # found beyond logit 14, where a 0.5 start and small steps never reach


def test_training_leaves_the_callers_lazy_config_alone(tmp_path):
    """The trainer sets the operator, the cap and the threshold on its controller by replacing
    the config, so a LazyConfig the caller passed (and may share) keeps its values."""
    from lazydit.core.lazy import LazyConfig, apply_lazy
    m = tiny_dit()
    mine = LazyConfig(num_steps=8)
    before = dataclasses.asdict(mine)
    ctrl = apply_lazy(m, 8, mine)
    train_gates(m, cfg(tmp_path, mode="onpolicy", target_lazy=0.5, iters=2, calib_images=2), progress=False)
    assert dataclasses.asdict(mine) == before
    assert ctrl.config.max_skip_run == 1 and ctrl.config.reuse == "taylor1"


def test_onpolicy_targets_are_full_compute_at_the_pools_states_and_renewed_with_the_pool(tmp_path):
    """Targets are kept per (step, image) while a pool lasts: each must be the full-compute
    guided output at that pool's state, and a new pool must not inherit the old pool's."""
    from lazydit.pipeline import cfg_model_fn
    m = tiny_dit()
    c = cfg(tmp_path, mode="onpolicy", rollout_every=3, iters=6)
    tr = GateTrainer(m, c)

    def check():
        ctrl, ro = tr.ctrl, tr.pool
        assert tr.targets
        for (k, j), target in tr.targets.items():
            ctrl.reset()
            ctrl.finish()  # plain forwards: the model without gates
            x = ro.xs[k, j:j + 1]
            t = tr._t(torch.tensor([k]))
            want = cfg_model_fn(m, ro.labels[j:j + 1], c.cfg_scale)(x, t)[0]
            assert torch.allclose(target, want, atol=1e-5), (k, j)
    for _ in range(3):
        tr.step()
    check()
    first = dict(tr.targets)
    tr.step()  # iteration 3: a new pool of new trajectories
    assert tr.targets is not first and all(tr.targets[p] is not first.get(p) for p in tr.targets)
    check()


def test_resume_on_another_noise_schedule_is_refused(tmp_path):
    """A run rolled out on one noise schedule (e.g. a diffusers scheduler's timesteps) must not go on
    with another: its remaining iterations would train for a sampler it was not started for."""
    from lazydit.core.diffusion.noise_schedule import NoiseSchedule
    c = cfg(tmp_path, mode="onpolicy", iters=4, target_lazy=0.4, calibrate=False, ckpt_every=2,
            step_weights="uniform", calib_images=2)
    first = NoiseSchedule.respaced(8)
    tr = GateTrainer(tiny_dit(), c, noise_schedule=first)
    tr.step()
    os.makedirs(c.out_dir, exist_ok=True)
    ckpt = os.path.join(c.out_dir, "checkpoint.safetensors")
    tr.save(ckpt)
    shifted = dataclasses.replace(first, timestep_map=first.timestep_map + 1)
    with pytest.raises(ValueError, match=r"another noise schedule \(timesteps \[0, "):
        train_gates(tiny_dit(), c, resume=True, progress=False, noise_schedule=shifted)
    noisier = dataclasses.replace(first, betas=first.betas * 1.01)
    with pytest.raises(ValueError, match="same timesteps, other noise levels"):
        train_gates(tiny_dit(), c, resume=True, progress=False, noise_schedule=noisier)
    train_gates(tiny_dit(), c, resume=True, progress=False, noise_schedule=NoiseSchedule.respaced(8))  # the same: resumes
