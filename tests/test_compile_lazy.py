"""torch.compile of a gated model: the gate decisions run eagerly (lazy_forward is kept out of
dynamo), everything around them compiles once for all steps and generations, and the compiled
model gives the eager model's bits. dynamo only (a counting backend), no inductor: cheap."""
import os
import sys

import torch

from lazydit.core.lazy import apply_lazy, patterns
from lazydit.pipeline import generate

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "scripts"))
from compile_bench import Counting  # noqa: E402  (the benchmark's counting backend)


def _gated(model, steps, forced):
    ctrl = apply_lazy(model, steps)
    if forced:
        ctrl.force(patterns.every_nth(steps, ctrl.depth, 2))
    else:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():  # decisions that differ between rows, steps and modules
            ctrl.attn.copy_(torch.randn(ctrl.attn.shape, generator=g) * 0.3)
            ctrl.ffn.copy_(torch.randn(ctrl.ffn.shape, generator=g) * 0.3)
    return ctrl


def _gen(model, steps):
    return generate(model, [1, 2, 3], [0, 1, 2], steps=steps, cfg_scale=3.0)


def _compiled_run(make_model, steps, forced):
    torch._dynamo.reset()
    model = make_model()
    ctrl = _gated(model, steps, forced)
    backend = Counting()
    model.compile(backend=backend)
    first = _gen(model, steps)
    compiled, backend.calls = backend.compiled, 0
    second = _gen(model, steps)
    return first, second, compiled, backend, ctrl


def _tiny():
    from conftest import tiny_dit
    return tiny_dit(depth=2)


def test_compiled_gated_sampling_equals_eager_and_never_recompiles():
    for forced in (False, True):
        eager_model = _tiny()
        ctrl = _gated(eager_model, 4, forced)
        eager = _gen(eager_model, 4)
        skips = ctrl.stats().skips[1:]
        if not forced:  # rows disagree somewhere: the per-row gather/scatter path ran
            assert (skips.any(-1) & ~skips.all(-1)).any()
        first, second, compiled, backend, cctrl = _compiled_run(_tiny, 4, forced)
        assert torch.equal(first.images, eager.images) and torch.equal(second.images, eager.images)
        assert torch.equal(cctrl.stats().skips, ctrl.stats().skips)
        assert backend.compiled == compiled  # the second generation compiled nothing
        assert backend.calls > 0  # the code around the gated modules did run compiled
    # Twice the steps: the same graphs (nothing specialised on the step index).
    *_, compiled8, _, _ = _compiled_run(_tiny, 8, False)
    assert compiled8 == compiled
    torch._dynamo.reset()
