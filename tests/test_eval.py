"""Evaluation tools: MACs, baselines, sample-many shards and .npz, Inception metrics, bench, analyze."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import tiny_dit
from lazydit.rivals import baselines
from lazydit.core.lazy import LazyController, apply_lazy, patterns
from lazydit.loading import SampleConfig
from lazydit.metrics import macs
from lazydit.metrics.macs import (MacsConfig, gate_evaluations, ideal_lazy_macs, lazy_macs, macs_report, module_macs)
from lazydit.core.models.large_dit import TINY, LargeDiT
from lazydit.pipeline import generate


# ---- MACs ------------------------------------------------------------------------------
def test_tiny_dit_macs_equal_a_hand_count():
    # depth 3, D 32, 2 heads, patch 2, 8x8x4 input -> T = 16 tokens, mlp 128, 8 output channels.
    T, D, H, C, p, Co = 16, 32, 128, 4, 2, 8
    embed = T * (C * p * p) * D             # 8192: Conv2d(4, 32, k=2, s=2) on 16 patches
    t_emb = 256 * D + D * D                 # 9216
    ada = 3 * D * 6 * D                     # 18432
    final = D * 2 * D + T * D * p * p * Co  # 2048 + 16384
    attn = T * D * 3 * D + T * D * D        # 65536: qkv + proj
    ffn = 2 * T * D * H                     # 131072
    mm = module_macs(tiny_dit().config, "linear")
    assert (mm.attn, mm.ffn, mm.always, mm.gate) == (attn, ffn, embed + t_emb + ada + final, T * D)
    assert mm.forward == 54272 + 3 * (65536 + 131072) == 644096
    full = module_macs(tiny_dit().config, "full")
    assert full.attn == attn + 2 * T * T * D and full.ffn == ffn and full.always == mm.always


def _traced_linear_macs(model: nn.Module) -> int:
    """thop's rule, per sample: in_features x output elements (Linear), k*k*cin x output (Conv)."""
    total = []

    def hook(m, args, out):
        per = out.numel() // out.shape[0]
        total.append(per * (m.in_features if isinstance(m, nn.Linear) else m.weight[0].numel()))
    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    c = model.config
    with torch.no_grad():
        model(torch.randn(2, c.in_channels, c.input_size, c.input_size), torch.tensor([3, 500]), torch.tensor([1, 2]))
    for h in hs:
        h.remove()
    return sum(total)


@pytest.mark.parametrize("build", [lambda: tiny_dit(), lambda: LargeDiT(TINY).eval()])
def test_shape_count_matches_a_traced_count(build):
    model = build()
    assert module_macs(model.config, "linear").forward == _traced_linear_macs(model)


def test_dit_xl2_matches_the_papers():
    rep = macs_report(MacsConfig(model="DiT-XL/2", image_size=256, steps=50, lazy_ratio=0.5))
    assert rep["input_size"] == 32
    assert round(rep["full"]["modules"]["forward"] / 1e9, 1) == 118.6       # DiT paper, Gflops of XL/2
    assert round(rep["linear"]["generation_no_cfg"] / 1e12, 2) == 5.72     # LazyDiT Table 3, DDIM-50
    assert round(rep["linear"]["lazy_no_cfg"] / 1e12, 2) == 2.87            # LazyDiT Table 3, 50 steps 50%
    assert rep["linear"]["generation_cfg"] == 2 * rep["linear"]["generation_no_cfg"]
    assert rep["linear"]["ddim_matched_steps"] == 25


def test_lazy_macs_from_decisions_equal_the_ideal(model):
    steps, mm = 6, module_macs(model.config, "full")
    ctrl = apply_lazy(model, steps)
    ctrl.force(patterns.target_fraction(steps, 3, 0.5))
    stats = generate(model, [1, 2], [0, 1], steps=steps, cfg_scale=2.0).stats
    assert stats.ratio() == 0.5
    assert lazy_macs(stats.skips, mm, gates=False) == pytest.approx(ideal_lazy_macs(mm, steps, 0.5, gates=False))


def test_gate_cost_counts_every_score_the_controller_computes(model, monkeypatch):
    steps, mm = 5, module_macs(model.config, "linear")
    apply_lazy(model, steps)  # zero gates: s = 0.5, every module computes
    calls = []
    orig = LazyController.gate_weight  # fetched once per gate evaluation (a (B, T, D) x (D,) product)
    monkeypatch.setattr(LazyController, "gate_weight", lambda self, kind: calls.append(kind) or orig(self, kind))
    stats = generate(model, [1, 2, 3], [0, 1, 2], steps=steps, cfg_scale=2.0).stats
    assert len(calls) == gate_evaluations(steps, 3) and stats.skips.shape[-1] == 6
    assert lazy_macs(stats.skips, mm) == ideal_lazy_macs(mm, steps, 0.0) == steps * mm.forward + len(calls) * mm.gate


# ---- baselines -------------------------------------------------------------------------
def test_baseline_schedules():
    m = baselines.fora_mask(6, 2, 3)
    assert m[:, 0, 0].tolist() == [False, True, True, False, True, True] and m.all(-1).eq(m[..., 0]).all()
    skips = torch.zeros(4, 2, 2, 4, dtype=torch.bool)
    skips[1, 0, 0] = torch.tensor([1, 1, 0, 0], dtype=torch.bool)  # mean 0.50 -> skip
    skips[2, 1, 1] = torch.tensor([1, 1, 1, 0], dtype=torch.bool)  # mean 0.75 -> skip
    skips[3, 0, 1] = torch.tensor([1, 0, 0, 0], dtype=torch.bool)  # mean 0.25 -> compute
    skips[0] = True                                                # step 0 can never skip
    want = torch.zeros(4, 2, 2, dtype=torch.bool)
    want[1, 0, 0] = want[2, 1, 1] = True
    assert baselines.static_from_decisions(skips).equal(want)
    # a target of 3/16 ranks by mean skip rate: 0.75, 0.50, then 0.25
    top3 = want.clone()
    top3[3, 0, 1] = True
    assert baselines.static_from_decisions(skips, target_ratio=3 / 16).equal(top3)
    assert baselines.static_from_decisions(skips, target_ratio=1 / 16).sum() == 1
    assert macs.ddim_steps_for_fraction(50, 0.5) == 25 and macs.ddim_steps_for_fraction(10, 0.01) == 1
    assert macs.ddim_steps_for_macs(2.87e12, 114.4e9) == 25
    with pytest.raises(ValueError, match="target ratio"):
        baselines.static_from_decisions(skips, target_ratio=0.9)


# ---- sample-many: shards, resume, .npz ---------------------------------------------------
def _pixel_model():
    m = tiny_dit(in_channels=3)
    apply_lazy(m, 4).force(patterns.target_fraction(4, 3, 0.5))
    return m


def _sm_config(out, batch_size=2):
    from lazydit.eval.sample_many import SampleManyConfig
    s = SampleConfig(model="tiny", steps=4, cfg_scale=1.5, force_skip="fraction:0.5", labels=[])
    return SampleManyConfig(sample=s, num_images=7, batch_size=batch_size, out_dir=str(out))


def test_sample_many_npz_round_trip_resume_and_sharding(tmp_path, monkeypatch):
    from lazydit.eval import sample_many as sm
    path = sm.run_sample_many(_sm_config(tmp_path / "a"), model=_pixel_model())
    with np.load(path) as z:
        arr, labels = z["arr_0"], z["labels"]
    assert arr.dtype == np.uint8 and arr.shape == (7, 8, 8, 3) and labels.tolist() == [i % 10 for i in range(7)]
    stats = json.load(open(tmp_path / "a" / "lazy_stats.json"))
    assert stats["lazy_ratio"] == 0.5 and stats["rows"] == 14
    # resume: only the missing chunk is generated again, and the result is the same
    shards = tmp_path / "a" / "shards"
    mtimes = {f: os.stat(shards / f).st_mtime_ns for f in os.listdir(shards)}
    os.remove(shards / "shard-0-1.npz")
    sm.run_sample_many(_sm_config(tmp_path / "a"), model=_pixel_model())
    assert {f: os.stat(shards / f).st_mtime_ns for f in os.listdir(shards) if f != "shard-0-1.npz"} == \
        {f: t for f, t in mtimes.items() if f != "shard-0-1.npz"}
    assert np.array_equal(np.load(path)["arr_0"], arr)
    with pytest.raises(ValueError, match="different run"):
        sm.run_sample_many(_sm_config(tmp_path / "a", batch_size=3), model=_pixel_model())
    # two ranks take strided chunks; the merged batch equals the single-process one
    monkeypatch.setattr(sm, "_barrier", lambda world: None)
    from lazydit.train import distributed
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for rank in (1, 0):
        monkeypatch.setattr(distributed, "rank", lambda r=rank: r)
        out = sm.run_sample_many(_sm_config(tmp_path / "b"), model=_pixel_model())
        assert (out is None) == (rank == 1)
    assert sorted(os.listdir(tmp_path / "b" / "shards")) == sorted(f"shard-{c % 2}-{c}.npz" for c in range(4))
    assert np.array_equal(np.load(out)["arr_0"], arr)


def test_sample_many_decodes_latents_with_a_local_vae(tmp_path):
    pytest.importorskip("diffusers")
    from diffusers.models import AutoencoderKL
    from lazydit.eval.sample_many import load_vae, run_sample_many
    with pytest.raises(ValueError, match="does not exist"):
        load_vae(str(tmp_path / "none"), "cpu")
    AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                  norm_num_groups=4).save_pretrained(tmp_path / "vae")
    cfg = _sm_config(tmp_path / "s")
    cfg.vae, cfg.num_images = str(tmp_path / "vae"), 2
    model = tiny_dit()  # 4 channels: a latent model
    apply_lazy(model, 4).force(patterns.target_fraction(4, 3, 0.5))
    with np.load(run_sample_many(cfg, model=model)) as z:
        assert z["arr_0"].shape == (2, 16, 16, 3)  # this VAE upsamples 2x


# ---- Inception metrics on random local weights -------------------------------------------
@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    from safetensors.torch import save_file
    from lazydit.metrics.inception_net import InceptionV3
    torch.manual_seed(0)
    net = InceptionV3()
    with torch.no_grad():  # He init keeps random features image-dependent through 90 layers
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
    path = str(tmp_path_factory.mktemp("inc") / "inception.safetensors")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    return path


def test_inception_metrics_plumbing(tmp_path, inception_weights):
    from lazydit.eval.inception import (InceptionConfig, compute_activations, evaluate, reference_statistics,
                                        run_inception)
    from lazydit.metrics.inception_net import load_inception
    rng = np.random.default_rng(0)
    ref, smp = str(tmp_path / "ref.npz"), str(tmp_path / "smp.npz")
    np.savez(ref, arr_0=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    np.savez(smp, arr_0=rng.integers(0, 100, (4, 24, 24, 1), dtype=np.uint8))  # greyscale, another size
    res = run_inception(InceptionConfig(ref=ref, sample=smp, weights=inception_weights, batch_size=3,
                                        out=str(tmp_path / "m.json")))
    assert res["fid"] > 0 and res["sfid"] > 0 and res["inception_score"] >= 1 - 1e-9
    assert 0 <= res["precision"] <= 1 and 0 <= res["recall"] <= 1 and res["num_samples"] == 4
    assert json.load(open(tmp_path / "m.json"))["metrics"]["fid"] == res["fid"]
    acts = compute_activations(load_inception(inception_weights), ref, batch_size=4)
    assert acts.pool.shape == (4, 2048) and acts.spatial.shape == (4, 17 * 17 * 7) and acts.logits.shape == (4, 1008)
    same = evaluate(acts, reference_statistics(ref, acts), acts)
    assert abs(same["fid"]) < 1e-6 and abs(same["sfid"]) < 1e-6 and same["precision"] == same["recall"] == 1.0
    with pytest.raises(ValueError, match="do not exist"):
        run_inception(InceptionConfig(ref=ref, sample=smp, weights=str(tmp_path / "none.pth")))


def test_reference_statistics_and_metric_definitions(tmp_path):
    from lazydit.eval.inception import (Activations, frechet_distance, inception_score, precision_recall,
                                        reference_statistics, statistics)
    rng = np.random.default_rng(1)
    b = rng.normal(1, 2, (40, 6))
    mu, s = statistics(b)
    for n in (4, 30):  # rank-deficient and full-rank sample covariances
        a = rng.normal(size=(n, 6))
        m1, s1 = statistics(a)
        eig = np.linalg.eigvals(s1 @ s)
        want = (m1 - mu) @ (m1 - mu) + np.trace(s1) + np.trace(s) - 2 * np.sqrt(np.clip(eig.real, 0, None)).sum()
        assert frechet_distance(a, mu, s) == pytest.approx(want, rel=1e-6)
    assert inception_score(np.zeros((10, 5))) == pytest.approx(1.0)
    assert inception_score(np.eye(4) * 100) == pytest.approx(4.0)  # confident and uniformly spread
    ref_pts, smp_pts = np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([[0.5], [1.5], [2.5], [20.0]])
    # k=1 radii: 1 around every reference point; the outlier sample's ball (17.5^2) covers all of them
    assert precision_recall(ref_pts, smp_pts, k=1) == (0.75, 1.0)
    path = str(tmp_path / "r.npz")
    np.savez(path, arr_0=np.zeros((1, 2, 2, 3), np.uint8), mu=mu, sigma=s, mu_s=mu[:2], sigma_s=s[:2, :2])
    (m, sg), (ms, _) = reference_statistics(path, Activations(b, b, b))
    assert np.array_equal(m, mu) and np.array_equal(sg, s) and np.array_equal(ms, mu[:2])


def test_tf1_resize_samples_like_tensorflow():
    from lazydit.metrics.inception_net import resize_tf1
    x = torch.tensor([[[[0.0, 1.0]]]]).expand(1, 1, 2, 2)
    # TF1 ResizeBilinear without half-pixel centres samples at 0, 0.5, 1, 1.5 (clamped)
    assert resize_tf1(x, 4)[0, 0, 0].tolist() == [0.0, 0.5, 1.0, 1.0]


# ---- bench and analyze ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_bench_reports_ratios(tmp_path, dtype):
    from lazydit.eval.bench import BenchConfig, run_bench
    from lazydit.eval.bench_report import write_bench
    c = BenchConfig(steps=4, lazy_ratios=[0.5], batch_size=2, warmup=1, repeats=1, dtype=dtype, out_dir=str(tmp_path))
    rep = run_bench(c, model=tiny_dit())
    names = [r["name"] for r in rep["runs"]]
    assert names == ["DDIM-4", "DDIM-2", "lazy-4 forced 50%"]
    assert all(len(r["times_s"]) == 1 for r in rep["runs"])  # the warm-up round is not recorded
    lazy = rep["runs"][2]
    assert lazy["lazy_ratio"] == 0.5 and 0.5 < lazy["macs_ratio"] < 0.6  # the never-skipped part stays
    assert lazy["efficiency"] == pytest.approx(lazy["time_ratio"] / lazy["macs_ratio"])
    jpath, mpath = write_bench(rep, str(tmp_path))
    assert json.load(open(jpath))["runs"][0]["efficiency"] == 1.0 and "| lazy-4 forced 50% |" in open(mpath).read()


def test_analyze_writes_similarities(tmp_path, model):
    from lazydit.eval.analyze import AnalyzeConfig, run_analyze
    c = AnalyzeConfig(steps=4, labels=(1, 2), out_dir=str(tmp_path))
    from lazydit.core.lazy import KINDS, lazy_targets
    outs = {}  # (layer, kind) -> every call's output, recorded next to analyze's own hooks
    handles = [m.register_forward_hook(lambda mod, a, out, key=(layer, kind): outs.setdefault(key, []).append(out))
               for layer, kind, m in lazy_targets(model)[0]]
    try:
        summary = run_analyze(model, c)
    finally:
        for h in handles:
            h.remove()
    data = json.load(open(tmp_path / "similarity.json"))
    assert np.array(data["mean"]).shape == (3, 3, 2) and (tmp_path / "similarity.png").stat().st_size > 0
    # Row k-1 is cos(F_k, F_{k-1}) per model row (4 rows: 2 images x CFG), by hand:
    want = torch.stack([torch.stack([torch.stack([torch.nn.functional.cosine_similarity(
        outs[(l, kind)][k].flatten(1), outs[(l, kind)][k - 1].flatten(1), dim=1) for kind in KINDS])
        for l in range(3)]) for k in range(1, 4)])  # (3, L, 2, 4)
    assert torch.allclose(torch.tensor(data["mean"]), want.mean(-1), atol=1e-5)
    assert torch.allclose(torch.tensor(data["min"]), want.amin(-1), atol=1e-5)
    assert summary["attn"]["min"] == pytest.approx(float(want[:, :, 0].min()), abs=1e-5)
    assert summary["ffn"]["mean"] == pytest.approx(float(want[:, :, 1].mean()), abs=1e-5)
    apply_lazy(model, 4)
    with pytest.raises(ValueError, match="without lazy gates"):
        run_analyze(model, c)


# ---- command line ----------------------------------------------------------------------------
def _cli(argv, capsys):
    from lazydit.cli import main
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


def test_cli_macs_and_errors(capsys, tmp_path):
    code, out, _ = _cli(["macs", "--model", "DiT-XL/2", "--image-size", "256", "--steps", "50", "--lazy-ratio", "0.5"],
                        capsys)
    assert code == 0 and "5.720 TMACs" in out and "118.621 GMACs" in out and "2.867 TMACs" in out
    for argv, msg in [(["macs", "--image-size", "250"], "not a multiple of the VAE"),
                      (["macs", "--model", "DiT-Q/2"], "unknown model"),
                      (["sample-many", "--model", "DiT-S/8", "--random-init", "--image-size", "16",
                        "--out", str(tmp_path / "s")], "needs --vae"),
                      (["inception", str(tmp_path / "x.npz"), "--ref", str(tmp_path / "r.npz"), "--weights", "w"],
                       "does not exist")]:
        code, _, err = _cli(argv, capsys)
        assert code == 2 and msg in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_bench_times_the_gates_against_their_own_pattern(tmp_path):
    from lazydit.eval.bench import BenchConfig, run_bench
    from lazydit.eval.bench_report import markdown_table
    from lazydit.core.lazy import LazyConfig, apply_lazy, remove_lazy, save_gates
    model = tiny_dit()
    model.arch_name = "DiT"
    ctrl = apply_lazy(model, 4, LazyConfig(num_steps=4, reuse="taylor1"))
    with torch.no_grad():
        ctrl.attn.normal_(0, 1.0)  # input-dependent decisions, some rows skip
    save_gates(ctrl, str(tmp_path / "g.safetensors"))
    remove_lazy(model)
    c = BenchConfig(steps=4, lazy_ratios=[], batch_size=3, warmup=0, repeats=2, gates=str(tmp_path / "g.safetensors"),
                    match_ddim=False, out_dir=str(tmp_path))
    rep = run_bench(c, model=model)
    runs = {r["name"]: r for r in rep["runs"]}
    same = runs["lazy-4 gates' pattern, forced"]
    assert same["lazy_ratio"] == runs["lazy-4 gates"]["lazy_ratio"] > 0
    assert same["macs_ratio"] < runs["lazy-4 gates"]["macs_ratio"]  # the same skips without gate scores
    assert set(rep["decision_overhead"]) == {"median", "min", "max", "of_fastest"}
    assert "Decision overhead" in markdown_table(rep)


def test_sample_many_failing_late_leaves_no_config_behind(tmp_path):
    from dataclasses import replace
    from lazydit.eval import sample_many as sm
    bad = _sm_config(tmp_path / "c")
    bad = replace(bad, sample=replace(bad.sample, cfg_scale=float("nan")))
    with pytest.raises(ValueError, match="cfg scale"):
        sm.run_sample_many(bad, model=_pixel_model())
    assert not (tmp_path / "c" / "sample_many_config.json").exists()
    assert sm.run_sample_many(_sm_config(tmp_path / "c"), model=_pixel_model()) is not None  # the corrected rerun


def test_sample_many_regenerates_damaged_and_foreign_shards(tmp_path):
    import shutil
    from lazydit.eval import sample_many as sm
    path = sm.run_sample_many(_sm_config(tmp_path / "d"), model=_pixel_model())
    with np.load(path) as z:
        arr = z["arr_0"].copy()
    shards = tmp_path / "d" / "shards"
    (shards / "shard-0-0.npz").write_bytes(b"")                                            # 0 bytes
    data = (shards / "shard-0-1.npz").read_bytes()
    (shards / "shard-0-1.npz").write_bytes(data[: len(data) // 2])                         # truncated
    shutil.copy(shards / "shard-0-3.npz", shards / "shard-0-2.npz")                         # another chunk's
    sm.run_sample_many(_sm_config(tmp_path / "d"), model=_pixel_model())
    with np.load(path) as z:
        assert np.array_equal(z["arr_0"], arr)
