"""The README's diffusers example, run exactly as written (extracted from README.md, so the two
cannot drift): offline, through the standard `pipe(...)` call, with real skipping."""
import os
import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def _example() -> str:
    with open(README) as f:
        blocks = [b for b in re.findall(r"```python\n(.*?)```", f.read(), re.S) if "pipe(" in b]
    assert len(blocks) == 1, "README.md must hold exactly one python block with the diffusers example"
    return blocks[0]


def test_readme_diffusers_example_runs_and_skips(capsys):
    torch.set_num_threads(1)
    ns = {}
    exec(compile(_example(), "README.md", "exec"), ns)
    ctrl, pipe = ns["ctrl"], ns["pipe"]
    st = ctrl.stats()
    assert st.steps_run == 20 and st.ratio() == 0.5  # steps 1, 3, ..., 19 reused, every module
    assert len(ns["images"]) == 2 and ns["images"][0].size == (28, 28)
    assert "lazy_ratio" in capsys.readouterr().out
    # The skips changed the images, and the pipeline without gates is the shipped model itself.
    from lazydit.integrations.diffusers import remove_lazy_from_pipeline
    kw = dict(class_labels=[0, 7], num_inference_steps=20, guidance_scale=3.0, output_type="pt")
    lazy = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    remove_lazy_from_pipeline(pipe)
    full = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    psnr = -10 * torch.log10(((lazy - full) ** 2).mean())
    assert 20 < psnr < 80  # reused, but still the same garments


def test_fmnist_pipeline_is_the_shipped_model():
    from lazydit.integrations.diffusers.fmnist import fmnist_transformer
    from lazydit.core.models import EMBEDDED, load_model
    tr, dit = fmnist_transformer(), load_model(EMBEDDED).eval()
    x, t = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([999.0, 500.0, 3.0])
    with torch.no_grad():
        a = tr(x, timestep=t, class_labels=torch.tensor([3, 9, 1000])).sample  # 1000: DiTPipeline's null class
        b = dit(x, t, torch.tensor([3, 9, 10]))
    assert (a - b).abs().max() < 1e-5
    with pytest.raises(ValueError, match="classes 0-9"):
        tr(x, timestep=t, class_labels=torch.tensor([3, 207, 1000]))
