"""Frozen sampling in torch: the deploy sampler over torch pieces equals the controller's forced
path, and under torch.compile it traces each block variant once, without graph breaks, and
never recompiles from one step or generation to the next."""
import os

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from conftest import tiny_dit
from lazydit.deploy import sample
from lazydit.export.compiled import TorchBackend, frozen_plan
from lazydit.core.lazy import apply_lazy, remove_lazy
from lazydit.core.lazy.skip_schedule_file import read_skip_schedule
from lazydit.pipeline import SeededNoise, generate
from test_deploy import write_skip_schedule

STEPS = 8


def rel_diff(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())  # random weights: values in the hundreds


@pytest.fixture
def frozen(tmp_path):
    model = tiny_dit(depth=2)
    ctrl, meta = read_skip_schedule(write_skip_schedule(tmp_path / "s.safetensors", "DiT", 2, 32))
    noise = SeededNoise([0, 1], (4, 8, 8)).draw()
    apply_lazy(model, STEPS, controller=ctrl)
    want = generate(model, [1, 2], [0, 1], steps=STEPS, cfg_scale=3.0, noise=noise).images.numpy()
    remove_lazy(model)
    return model, ctrl, frozen_plan(model, ctrl, meta), noise.numpy(), want


def test_frozen_torch_pieces_sample_as_the_controller(frozen):
    model, ctrl, plan, noise, want = frozen
    got = sample(TorchBackend(model, ctrl.forced, corrected=True), plan, [1, 2], noise)
    assert rel_diff(got, want) <= 1e-5


def _compiled_run(model, ctrl, plan, noise, backend):
    torch._dynamo.reset()
    counters.clear()
    be = TorchBackend(model, ctrl.forced, corrected=True, compile=True, backend=backend)
    first = sample(be, plan, [1, 2], noise)
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    counters.clear()
    sample(be, plan, [1, 2], noise)
    return first, graphs, breaks, counters["stats"]["unique_graphs"], len(be.steps)


def test_compiled_frozen_sampling_traces_each_block_variant_once_without_breaks(frozen):
    """dynamo's own tracing (backend="eager": no C++ compile, so it is cheap)."""
    model, ctrl, plan, noise, want = frozen
    first, graphs, breaks, again, variants = _compiled_run(model, ctrl, plan, noise, "eager")
    assert breaks == 0 and again == 0
    assert 3 <= graphs <= variants + 2  # embedders, final layer, block variants: not one per step
    assert variants < STEPS * 2 and rel_diff(first, want) <= 1e-5


@pytest.mark.skipif(not os.environ.get("LAZYDIT_COMPILE_TESTS"),
                    reason="inductor compiles C++ for a minute; set LAZYDIT_COMPILE_TESTS=1")
def test_inductor_compiled_frozen_sampling_matches_eager(frozen):
    model, ctrl, plan, noise, want = frozen
    first, graphs, breaks, again, variants = _compiled_run(model, ctrl, plan, noise, "inductor")
    assert breaks == 0 and again == 0 and graphs <= variants + 2
    assert rel_diff(first, want) <= 1e-4
