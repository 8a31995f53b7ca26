"""Smoke tests of the offline tiny pipelines in tiny_pipelines.py: each family builds, runs its standard call with
its own guidance form, and gives a finite output of the expected shape after the expected number of transformer
calls."""
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import tiny_pipelines as tp  # noqa: E402

torch.set_num_threads(1)
STEPS = 3
VIDEO = {"wan", "hunyuan_video"}


def _run(pipe, name, **over):
    rows = []
    hook = pipe.transformer.register_forward_hook(
        lambda mod, args, kwargs, out: rows.append((kwargs.get("hidden_states", args[0] if args else None)).shape[0]),
        with_kwargs=True)
    try:
        out = pipe(**{**tp.CALL_KWARGS[name], **over}, num_inference_steps=STEPS,
                   generator=torch.Generator().manual_seed(0), output_type="pt")
    finally:
        hook.remove()
    return (out.frames if name in VIDEO else out.images), rows


@pytest.mark.parametrize("name", list(tp.FAMILIES))
def test_tiny_pipeline_runs_with_its_guidance_form(name):
    pipe = tp.FAMILIES[name](seed=0)
    pipe.set_progress_bar_config(disable=True)
    out, rows = _run(pipe, name)
    kw = tp.CALL_KWARGS[name]
    h, w = kw["height"], kw["width"]
    expected = (1, kw["num_frames"], 3, h, w) if name in VIDEO else (1, 3, h, w)
    assert tuple(out.shape) == expected
    assert torch.isfinite(out).all() and out.std() > 1e-3
    # flux/flux2/hunyuan: 1 call per step (embedded guidance); sd3: 1 call on [uncond, cond]; qwen/wan: 2 calls
    assert len(rows) == STEPS * tp.CALLS_PER_STEP[name]
    assert rows == [tp.ROWS_PER_CALL[name]] * len(rows)
    assert {"sd3": 2}.get(name, 1) == tp.ROWS_PER_CALL[name]
    assert {"qwen_image": 2, "wan": 2}.get(name, 1) == tp.CALLS_PER_STEP[name]


def test_builders_are_seeded():
    a = [p.detach().clone() for p in tp.tiny_flux(seed=0).transformer.parameters()]
    b = list(tp.tiny_flux(seed=0).transformer.parameters())
    c = list(tp.tiny_flux(seed=1).transformer.parameters())
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_prompt_templates_are_cropped_at_the_prompt():
    """HunyuanVideo and Qwen-Image drop a fixed number of leading template tokens (95, 34, counted with the real
    tokenizers); the tiny tokenizers split alike, so exactly the system part is dropped."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    tok = tp.tiny_hunyuan_video().tokenizer
    ids = tok(DEFAULT_PROMPT_TEMPLATE["template"].format("a red cat")).input_ids
    assert tok.convert_ids_to_tokens(ids[DEFAULT_PROMPT_TEMPLATE["crop_start"]:]) == ["a", " red", " cat", "<|eot_id|>"]
    pipe = tp.tiny_qwen_image()
    ids = pipe.tokenizer(pipe.prompt_template_encode.format("a red cat")).input_ids
    assert pipe.tokenizer.convert_ids_to_tokens(ids[pipe.prompt_template_encode_start_idx:])[:4] == [
        "a", " red", " cat", "<|im_end|>"]


def test_flux_without_guidance_embeds():
    pipe = tp.tiny_flux(seed=0, guidance_embeds=False)
    pipe.set_progress_bar_config(disable=True)
    out, rows = _run(pipe, "flux")
    assert torch.isfinite(out).all() and rows == [1] * STEPS
