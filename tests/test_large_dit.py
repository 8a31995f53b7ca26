"""Large-DiT (DiT-Llama): checkpoint layout, reference formulas, and lazy sampling on it.

The `check_*` helpers take any model with registered lazy targets and a `call(x, t)`; the
diffusers tests reuse them.
"""
from dataclasses import replace

import pytest
import torch

from lazydit.core.lazy import apply_lazy, lazy_targets, remove_lazy
from lazydit.core.models import LARGE_DIT_ZOO, build_model
from lazydit.core.models.large_dit import TINY, LargeDiT, apply_rope, large_dit_config, rope_table
from lazydit.pipeline import generate

torch.set_num_threads(1)


def randomize(model, seed=0, std=0.1):
    """Random weights everywhere, so no block is the adaLN-Zero identity."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model.eval()


def tiny(**kw):
    return randomize(LargeDiT(replace(TINY, **kw)))


def steps_inputs(n, shape, seed=1):
    """n similar-but-different inputs and decreasing timesteps, as along a sampling path."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g)
    xs = [x0 + 0.05 * k * torch.randn(shape, generator=g) for k in range(n)]
    ts = [torch.full((shape[0],), 999 - 250 * k, dtype=torch.long) for k in range(n)]
    return xs, ts


def run(call, xs, ts, ctrl=None):
    outs = []
    if ctrl is not None:
        ctrl.reset()
    with torch.no_grad():
        for k, (x, t) in enumerate(zip(xs, ts)):
            if ctrl is not None:
                ctrl.set_step(k)
            outs.append(call(x, t))
    return outs


def hook_reference(model, call, xs, ts, skip):
    """Outputs of the plain model where, via forward hooks, rows that skip (skip[k, l, m, b])
    take the module's output of the previous step instead of the fresh one."""
    last, step, hooks = {}, [0], []

    def hook(key, layer, m):
        def fn(mod, args, out):
            k = step[0]
            if k > 0:
                rows = skip[k, layer, m].view(-1, *([1] * (out.dim() - 1)))
                out = torch.where(rows, last[key], out)
            last[key] = out
            return out
        return fn

    for layer, kind, mod in lazy_targets(model)[0]:
        hooks.append(mod.register_forward_hook(hook((layer, kind), layer, ("attn", "ffn").index(kind))))
    outs = []
    with torch.no_grad():
        for k, (x, t) in enumerate(zip(xs, ts)):
            step[0] = k
            outs.append(call(x, t))
    for h in hooks:
        h.remove()
    return outs


def check_lazy_exact(model, call, xs, ts):
    """Lazy with everything computed equals vanilla; a forced mixed mask equals the hook reference."""
    n, depth, batch = len(xs), len(lazy_targets(model)[0]) // 2, xs[0].shape[0]
    mask = torch.rand(n, depth, 2, batch, generator=torch.Generator().manual_seed(3)) < 0.5
    mask[1, :, :, 0] = True    # a row that skips everything at a step
    mask[2, :, :, :] = True    # a step where no row reaches the modules
    mask[3, 0, :, :] = False   # a layer that computes for every row
    plain = run(call, xs, ts)
    ref_skip = hook_reference(model, call, xs, ts, mask)
    assert max((a - b).abs().max() for a, b in zip(ref_skip[1:], plain[1:])) > 1e-3, "skips must matter"
    ctrl = apply_lazy(model, n)  # zero gates: sigmoid(0) = 0.5 >= 0.5, everything computes
    try:
        full = run(call, xs, ts, ctrl)
        assert max((a - b).abs().max() for a, b in zip(full, plain)) <= 1e-5
        assert ctrl.stats().ratio() == 0.0
        ctrl.force(mask)
        lazy = run(call, xs, ts, ctrl)
        for k in range(n):
            assert (lazy[k] - ref_skip[k]).abs().max() <= 1e-5, f"step {k}"
        assert ctrl.stats().skips[1:].eq(mask[1:]).all()
    finally:
        remove_lazy(model)


def check_soft_training(model, call, x, ts, iters=6):
    """Soft-mode gradients reach only the trained step's gates, and a lazy penalty on the
    soft scores makes hard sampling skip."""
    with torch.no_grad():
        target = call(x, ts[1])
    ctrl = apply_lazy(model, 2)
    opt = torch.optim.Adam([ctrl.attn, ctrl.ffn], lr=0.05)
    try:
        for it in range(iters):
            ctrl.reset()
            ctrl.set_mode("full")
            with torch.no_grad():
                call(x, ts[0])  # fills the caches
            ctrl.set_mode("soft")
            ctrl.set_step(1)
            out = call(x, ts[1])
            lazy = sum(s.sum() for _, _, s in ctrl.state.soft_scores) / x.shape[0]
            loss = (out - target).pow(2).mean() + 1.0 * lazy
            opt.zero_grad()
            loss.backward()
            if it == 0:
                assert ctrl.attn.grad[:, 1].abs().sum() > 0 and ctrl.ffn.grad[:, 1].abs().sum() > 0
                assert ctrl.attn.grad[:, 0].abs().sum() == 0 and ctrl.ffn.grad[:, 0].abs().sum() == 0
            opt.step()
        ctrl.set_mode("hard")
        run(call, [x, x], ts[:2], ctrl)
        assert ctrl.stats().skips[1].float().mean() > 0.5
    finally:
        remove_lazy(model)


# ---- Large-DiT itself ---------------------------------------------------------------------
def spec_keys(depth: int, qk_norm: bool = True) -> set:
    keys = {"x_embedder.weight", "x_embedder.bias", "y_embedder.embedding_table.weight",
            "final_layer.linear.weight", "final_layer.linear.bias",
            "final_layer.adaLN_modulation.1.weight", "final_layer.adaLN_modulation.1.bias"}
    keys |= {f"t_embedder.mlp.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")}
    for i in range(depth):
        p = f"layers.{i}."
        keys |= {f"{p}attention.{n}.weight" for n in ("wq", "wk", "wv", "wo")}
        if qk_norm:
            keys |= {f"{p}attention.{n}.{w}" for n in ("q_norm", "k_norm") for w in ("weight", "bias")}
        keys |= {f"{p}feed_forward.{n}.weight" for n in ("w1", "w2", "w3")}
        keys |= {f"{p}attention_norm.weight", f"{p}ffn_norm.weight"}
        keys |= {f"{p}adaLN_modulation.1.{w}" for w in ("weight", "bias")}
    return keys


def test_state_dict_keys_match_the_reference_layout():
    assert set(LargeDiT(TINY).state_dict()) == spec_keys(TINY.depth)
    assert set(LargeDiT(replace(TINY, qk_norm=False)).state_dict()) == spec_keys(TINY.depth, qk_norm=False)


@pytest.mark.parametrize("name,dim,ffn,depth", [("Large-DiT-600M/2", 1536, 4096, 16),
                                                ("Large-DiT-3B/2", 3072, 8192, 32),
                                                ("Large-DiT-7B/2", 4096, 11008, 32)])
def test_zoo_shapes_without_allocating(name, dim, ffn, depth):
    with torch.device("meta"):
        model = build_model(name)
    assert isinstance(model, LargeDiT) and model.arch_name == name
    sd = model.state_dict()
    cond = min(dim, 1024)
    expect = {"x_embedder.weight": (dim, 16), "t_embedder.mlp.0.weight": (cond, 256),
              "t_embedder.mlp.2.weight": (cond, cond), "y_embedder.embedding_table.weight": (1001, cond),
              "layers.0.attention.wq.weight": (dim, dim), "layers.0.attention.wo.weight": (dim, dim),
              "layers.0.attention.q_norm.weight": (dim,), "layers.0.feed_forward.w1.weight": (ffn, dim),
              "layers.0.feed_forward.w2.weight": (dim, ffn), "layers.0.feed_forward.w3.weight": (ffn, dim),
              "layers.0.attention_norm.weight": (dim,), "layers.0.adaLN_modulation.1.weight": (6 * dim, cond),
              "final_layer.adaLN_modulation.1.weight": (2 * dim, cond), "final_layer.linear.weight": (32, dim)}
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert f"layers.{depth - 1}.ffn_norm.weight" in sd and f"layers.{depth}.ffn_norm.weight" not in sd
    assert model.config.head_dim == dim // 32 and model.config.ffn_hidden == ffn


def test_zoo_errors():
    with pytest.raises(ValueError, match="unknown Large-DiT model"):
        large_dit_config("Large-DiT-1B/2")
    with pytest.raises(ValueError, match="divide"):
        LargeDiT(replace(TINY, num_kv_heads=3))
    assert set(LARGE_DIT_ZOO) <= set(__import__("lazydit.core.models", fromlist=["x"]).model_names())


def test_rope_equals_the_reference_complex_multiply():
    x = torch.randn(2, 5, 3, 8)  # (B, T, H, hd)
    freqs = 1.0 / 10000.0 ** (torch.arange(0, 8, 2)[:4].float() / 8)
    cis = torch.polar(torch.ones(5, 4), torch.outer(torch.arange(5).float(), freqs))  # (T, hd/2)
    ref = torch.view_as_real(torch.view_as_complex(x.reshape(2, 5, 3, 4, 2)) * cis[None, :, None]).flatten(3)
    assert (apply_rope(x, rope_table(5, 8, 10000.0)) - ref).abs().max() <= 1e-6


def test_patchify_token_order():
    model = LargeDiT(TINY)
    x = torch.randn(2, 4, 8, 8)
    tok = model.patchify(x)  # (N, T, C*p*p)
    assert tok.shape == (2, 16, 16)
    r, c = 1, 2  # token r*4 + c holds the patch at row r, column c, features ordered (C, p, p)
    assert torch.equal(tok[:, r * 4 + c], x[:, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2].reshape(2, -1))


def test_gqa_equals_attention_with_repeated_kv_heads():
    gqa = tiny(num_kv_heads=2)
    mha = LargeDiT(TINY).eval()
    sd, hd = gqa.state_dict(), TINY.head_dim
    for k in [k for k in sd if any(n in k for n in ("wk.", "wv.", "k_norm."))]:
        v = sd[k]  # repeat each kv head's rows twice: query heads 2j, 2j+1 read kv head j
        sd[k] = v.unflatten(0, (2, hd)).repeat_interleave(2, dim=0).flatten(0, 1)
    mha.load_state_dict(sd)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([5, 900]), torch.tensor([1, 10])
    with torch.no_grad():
        assert (gqa(x, t, y) - mha(x, t, y)).abs().max() <= 1e-5


def test_output_shape_and_learned_sigma():
    model = tiny()
    out = model(torch.randn(3, 4, 8, 8), torch.tensor([0, 500, 999]), torch.tensor([0, 5, 10]))
    assert out.shape == (3, 8, 8, 8) and torch.isfinite(out).all()


# ---- lazy sampling on Large-DiT -----------------------------------------------------------
def test_lazy_large_dit_exact_and_forced_skips():
    model = tiny()
    y = torch.tensor([1, 4, 10])
    xs, ts = steps_inputs(4, (3, 4, 8, 8))
    check_lazy_exact(model, lambda x, t: model(x, t, y), xs, ts)


def test_lazy_large_dit_soft_training():
    model = tiny()
    y = torch.tensor([1, 4])
    xs, ts = steps_inputs(2, (2, 4, 8, 8))
    check_soft_training(model, lambda x, t: model(x, t, y), xs[0], ts)


def test_lazydit_pipeline_drives_large_dit():
    model = tiny()
    ref = generate(model, [1, 2], [0, 1], steps=3, cfg_scale=1.5)
    apply_lazy(model, 3)
    out = generate(model, [1, 2], [0, 1], steps=3, cfg_scale=1.5)
    assert (out.images - ref.images).abs().max() <= 1e-5 and out.stats.ratio() == 0.0
