"""Today's diffusers families (FLUX.1/2, SD3, Qwen-Image, Wan, HunyuanVideo) through `pipe(...)`,
on tiny random pipelines built offline (tests/tiny_pipelines.py)."""
import json
import math

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from lazydit.cli import main  # noqa: E402
from lazydit.integrations.diffusers import apply_lazy_to_pipeline, remove_lazy_from_pipeline  # noqa: E402
from lazydit.core.lazy import LazyConfig, get_controller, patterns, save_gates  # noqa: E402
from tiny_pipelines import CALL_KWARGS, FAMILIES  # noqa: E402

N = 4


def _run(pipe, name, **over):
    kw = {**CALL_KWARGS[name], "num_inference_steps": N, "generator": torch.Generator().manual_seed(0),
          "output_type": "pt", **over}
    out = pipe(**kw)
    return out.frames if hasattr(out, "frames") else out.images


@pytest.fixture(scope="module")
def pipes():
    cache = {}

    def get(name):
        if name not in cache:
            pipe = FAMILIES[name](0)
            pipe.set_progress_bar_config(disable=True)
            cache[name] = pipe
        remove_lazy_from_pipeline(cache[name])
        return cache[name]
    return get


SITES = {"flux": ("attn", "ffn", "ffn_text", "proj_out"), "flux2": ("attn", "ffn", "ffn_text", "attn_mlp"),
         "sd3": ("attn", "ffn", "ffn_text"), "qwen_image": ("attn", "ffn", "ffn_text"),
         "wan": ("attn", "cross", "ffn"), "hunyuan_video": ("attn", "ffn", "ffn_text", "proj_out")}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_zero_gates_are_exact_and_forced_patterns_skip(pipes, name):
    pipe = pipes(name)
    ref = _run(pipe, name)
    ctrl = apply_lazy_to_pipeline(pipe, num_inference_steps=N)
    assert ctrl.kinds == SITES[name]
    assert torch.equal(_run(pipe, name), ref)  # zero-init gates compute everything, bit for bit
    assert ctrl.stats().ratio() == 0.0
    ctrl.force(patterns.every_nth(N, ctrl.depth, 2))
    lazy = _run(pipe, name)
    assert ctrl.stats().ratio() == pytest.approx(0.5)
    assert bool(torch.isfinite(lazy).all()) and not torch.equal(lazy, ref)


def test_absent_sites_count_in_no_ratio(pipes):
    pipe = pipes("sd3")  # the last joint block has no text feed-forward
    ctrl = apply_lazy_to_pipeline(pipe, num_inference_steps=N)
    assert ctrl.present[:, 2].tolist() == [True, True, False]
    mask = torch.zeros(N, ctrl.depth, 3, dtype=torch.bool)
    mask[1:, :, 2] = True  # skip every text feed-forward after step 0, the absent cell included
    ctrl.force(mask)
    _run(pipe, "sd3")
    assert ctrl.stats().ratio("ffn_text") == pytest.approx((N - 1) / N)
    assert ctrl.stats().ratio() == pytest.approx(2 * (N - 1) / (8 * N))  # 2 of 8 existing sites per step


@pytest.mark.parametrize("name", ["wan", "qwen_image"])
def test_true_cfg_branches_keep_their_own_histories(pipes, name):
    """Two calls per step: the cond call at a skipped step reuses cond outputs only. Replaying the
    cond call's inputs alone (one branch) must give its outputs exactly."""
    pipe = pipes(name)
    ctrl = apply_lazy_to_pipeline(pipe, num_inference_steps=N)
    ctrl.force(patterns.every_nth(N, ctrl.depth, 2))
    calls = []
    hook = pipe.transformer.register_forward_hook(
        lambda m, a, kw, out: calls.append(({k: v.clone() if torch.is_tensor(v) else v for k, v in kw.items()},
                                            out[0].clone())), with_kwargs=True)
    try:
        _run(pipe, name)
    finally:
        hook.remove()
    assert len(calls) == 2 * N and len(ctrl._branches) == 2
    stepper = pipe.transformer._lazydit_stepper
    stepper_k = stepper.k
    assert stepper_k is None  # the generation finished after the last branch of the last step
    remove_lazy_from_pipeline(pipe)
    from lazydit.core.lazy import apply_lazy
    solo = apply_lazy(pipe.transformer, N)
    solo.force(patterns.every_nth(N, solo.depth, 2))
    solo.reset()
    with torch.no_grad():
        for k in range(N):
            solo.set_step(k)
            kw, out = calls[2 * k]
            assert torch.equal(pipe.transformer(**kw)[0], out), f"step {k}: the cond call saw another branch"
    from lazydit.core.lazy import remove_lazy
    remove_lazy(pipe.transformer)


@pytest.mark.parametrize("name", ["flux", "wan"])
def test_rows_are_independent(pipes, name):
    pipe = pipes(name)
    ctrl = apply_lazy_to_pipeline(pipe, num_inference_steps=N)
    ctrl.force(patterns.every_nth(N, ctrl.depth, 2))
    prompts = ["a red cat", "a blue dog"]
    both = _run(pipe, name, prompt=prompts, generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
    for i, p in enumerate(prompts):
        one = _run(pipe, name, prompt=p, generator=[torch.Generator().manual_seed(i)])
        # batched GEMMs round differently (1e-5); a leak between rows moves outputs by 1e-2
        torch.testing.assert_close(both[i:i + 1], one, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["qwen_image", "hunyuan_video"])
def test_gate_files_round_trip_and_mismatches_are_refused(pipes, tmp_path, name):
    pipe = pipes(name)
    ctrl = apply_lazy_to_pipeline(pipe, num_inference_steps=N, config=LazyConfig(num_steps=N, reuse="taylor1"))
    ctrl.force(patterns.every_nth(N, ctrl.depth, 2))
    first = _run(pipe, name)
    path = str(tmp_path / "g.safetensors")
    save_gates(ctrl, path)
    remove_lazy_from_pipeline(pipe)
    again = apply_lazy_to_pipeline(pipe, path)
    assert again.kinds == ctrl.kinds and torch.equal(again.present, ctrl.present)
    assert torch.equal(_run(pipe, name), first)
    remove_lazy_from_pipeline(pipe)
    with pytest.raises(ValueError, match=f"holds {N}-step gates, not {N + 1}"):
        apply_lazy_to_pipeline(pipe, path, num_inference_steps=N + 1)
    other = pipes("flux")
    with pytest.raises(ValueError, match="is for arch=.*FluxTransformer2DModel"):
        apply_lazy_to_pipeline(other, path)
    remove_lazy_from_pipeline(pipe)
    apply_lazy_to_pipeline(pipe, path)
    with pytest.raises(ValueError, match=f"gates are for {N} steps"):
        _run(pipe, name, num_inference_steps=N + 2)


def test_unknown_transformer_class_is_refused():
    import torch.nn as nn

    class MyTransformer(nn.Module):
        pass
    from lazydit.core.lazy import apply_lazy
    with pytest.raises(ValueError, match="does not know where the modules of MyTransformer are; supported: .*FluxTransformer2DModel"):
        apply_lazy(MyTransformer(), 4)


@pytest.mark.parametrize("name", ["qwen_image", "hunyuan_video", "wan"])
def test_train_gates_fits_the_default_policy_on_a_pipeline_folder(tmp_path, capsys, name):
    """`lazydit train-gates --model PIPELINE_DIR --target-lazy 0.5` (true CFG for Qwen-Image and Wan,
    guidance-distilled HunyuanVideo; flow matching and UniPC), then the gate file drives pipe(...)
    at its ratio. Wan's folder loads only with accelerate (its fp32-kept modules)."""
    pipe = FAMILIES[name](0)
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder)
    out = tmp_path / "gates"
    kw = {k: v for k, v in CALL_KWARGS[name].items() if k not in ("prompt", "height", "width")}
    size = CALL_KWARGS[name]["height"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\na red cat\n\na green tree\n")
    assert 0 == main(["train-gates", "--model", str(folder), "--steps", "6", "--target-lazy", "0.5", "--image-size", str(size),
          "--pipe-kwargs", json.dumps(kw), "--calib-images", "2", "--correction-images", "2",
          "--schedule-candidates", "1", "--correction-ranks", "4", "--prompts", str(prompts), "--out", str(out)])
    from lazydit.core.lazy import read_gates
    _, meta = read_gates(str(out / "gates.safetensors"))
    assert meta["family"] == type(pipe.transformer).__name__ and meta["prompts"] == ["a red cat", "a green tree"]
    assert meta["scheduler_config"]["class"] == type(pipe.scheduler).__name__ and len(meta["timesteps"]) == 6
    pipe.set_progress_bar_config(disable=True)
    ctrl = apply_lazy_to_pipeline(pipe, str(out / "gates.safetensors"))
    pipe(**CALL_KWARGS[name], num_inference_steps=6, output_type="latent")
    assert abs(ctrl.stats().ratio() - 0.5) <= 0.05
    assert main(["train-gates", "--model", str(folder), "--steps", "6", "--target-lazy", "0.5",
                 "--pipe-kwargs", '{"num_inference_steps": 3}', "--out", str(tmp_path / "bad")]) == 2
    assert "set by lazydit" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "bad").exists()


def test_compare_on_a_pipeline_folder_measures_every_row(tmp_path, capsys):
    """`lazydit compare --model PIPELINE_DIR`: the default policy, FORA, TaylorSeer, fewer steps and a
    diffusers hook on one harness, FLOPs measured by what really ran."""
    folder = tmp_path / "flux"
    FAMILIES["flux"](0).save_pretrained(folder)
    out = tmp_path / "cmp"
    kw = {k: v for k, v in CALL_KWARGS["flux"].items() if k not in ("prompt", "height", "width")}
    assert 0 == main(["compare", "--model", str(folder), "--settings", "6:0.5", "--samples", "2", "--train-calib", "2",
                      "--calib-images", "1", "--timing-rounds", "1", "--diffusers-hooks", "FirstBlockCache",
                      "--schedule-candidates", "1",
                      "--image-size", "16", "--pipe-kwargs", json.dumps(kw), "--out", str(out)])
    result = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert {"lazy", "FORA", "TaylorSeer2", "FirstBlockCache"} <= set(rows)
    steps = next(r for name, r in rows.items() if name.startswith("steps-"))
    assert steps["flops_vs_full"] >= rows["lazy"]["flops_vs_full"]  # the fewer-steps rival never gets less compute
    assert 0.4 < rows["FORA"]["flops_vs_full"] < 0.8 and rows["FORA"]["psnr"] < 100
    assert all(math.isfinite(r["psnr"]) for r in rows.values() if "psnr" in r)
    assert rows["full"]["reference"] and rows["full"]["time_b1"] == 1.0
    for r in rows.values():  # every measured row timed at a batch of 1 and of 16
        if "psnr" in r and not r.get("reference"):
            assert r["time_b1"] > 0 and r["time_b16"] > 0 and r["time_b16_range"][0] <= r["time_b16"]
    matches = {v["match"] for v in result["verdicts"]}
    assert matches == {"flops", "time b1", "time b16"}
    assert all(v["best_rival"] != "full" for v in result["verdicts"])
    assert (out / "quality-vs-flops.png").exists() and (out / "quality-vs-time-b16.png").exists()
    assert "FluxTransformer2DModel" in capsys.readouterr().out


def test_single_stream_output_projection_skips_only_with_both_branches(pipes):
    """FLUX's single-stream proj_out reads attention and MLP together: under a (N, L, 2) mask it
    skips where both classes skip; its gate reads its own 5 D-wide input."""
    pipe = pipes("flux")
    ctrl = apply_lazy_to_pipeline(pipe, num_inference_steps=N)
    col = ctrl.kinds.index("proj_out")
    assert ctrl.present[:, col].tolist() == [False, False, True, True]
    assert ctrl.proj_out.shape[-1] == pipe.transformer.single_transformer_blocks[0].proj_out.in_features
    mask = torch.zeros(N, ctrl.depth, 2, dtype=torch.bool)
    mask[1:, :, 0] = True  # attention only
    ctrl.force(mask)
    assert not bool(ctrl.forced[..., col].any())
    mask[1:, :, 1] = True  # and the feed-forward
    ctrl.force(mask)
    assert bool(ctrl.forced[1:, 2:, col].all())
    _run(pipe, "flux")
    assert ctrl.stats().ratio("proj_out") == pytest.approx((N - 1) / N)


def test_sample_a_pipeline_folder_lazily(tmp_path, capsys):
    """`lazydit sample --model PIPELINE_DIR --force-skip every:2`: grid, .npz and options written,
    lazy ratio printed; options of the class-conditional sampler are refused."""
    import numpy as np
    folder = tmp_path / "flux"
    FAMILIES["flux"](0).save_pretrained(folder)
    out = tmp_path / "s"
    args = ["sample", "--model", str(folder), "--steps", "6", "--image-size", "16", "--images", "3",
            "--pipe-kwargs", '{"max_sequence_length": 16}', "--out", str(out)]
    assert 0 == main(args + ["--force-skip", "every:2", "--reuse", "taylor2"])
    assert "lazy ratio 0.500" in capsys.readouterr().out
    with np.load(out / "samples.npz") as f:
        assert f["arr_0"].shape == (3, 16, 16, 3) and list(f["prompts"][:1]) == ["a photo of a cat sitting on a windowsill"]
    assert json.loads((out / "sample_config.json").read_text())["lazy"]["lazy_ratio"] == 0.5
    assert main(args + ["--ckpt", "x.pt"]) == 2
    assert "do not apply" in capsys.readouterr().err
