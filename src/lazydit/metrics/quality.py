"""Offline sample-quality metrics for the embedded Fashion-MNIST model.

- FD-EffNetLite0 / KID-EffNetLite0: torchmetrics' Fréchet and kernel distances over the 1280-d pooled
  features of ImageNet EfficientNet-Lite0 (see effnet.py for why not Inception). Not comparable with FID.
- PSNR / SSIM of lazy samples against full-compute samples from the same noise.
- Class accuracy of class-conditional samples under the shipped Fashion-MNIST classifier.

Images everywhere are float (N, C, H, W) in [-1, 1], the samplers' output range.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from .classifier import load_classifier, predict
from .effnet import NUM_FEATURES, load_feature_extractor
from .psnr import image_psnr


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float (N, C, H, W) -> uint8 (N, C, H, W), rounded as saved sample files are."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _check_images(images: torch.Tensor, name: str) -> None:
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] not in (1, 3) or not images.is_floating_point():
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"{name} must be float images (N, 1 or 3, H, W) in [-1, 1], got {shape}")


def effnet_features(images: torch.Tensor, resolution: int = 224) -> torch.Tensor:
    """(N, C, H, W) images in [-1, 1] -> (N, 1280) float64 EfficientNet-Lite0 features.

    Compute the reference set's features once and pass them to `fd_kid` in place of images: at 224 px
    the extractor runs at about 30 images/s on one CPU core.
    """
    _check_images(images, "images")
    extractor = load_feature_extractor(resolution)
    device = next(extractor.parameters()).device
    return extractor(to_uint8(images).to(device)).double().cpu()


class _Precomputed(nn.Module):
    """The `feature=` module handed to torchmetrics: the features were already extracted, once per set,
    so FD and KID share one pass of the network instead of running it twice each."""

    num_features = NUM_FEATURES  # torchmetrics reads this instead of probing with a dummy image

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _as_features(x: torch.Tensor, name: str, resolution: int) -> torch.Tensor:
    if torch.is_tensor(x) and x.dim() == 2:
        if x.shape[1] != NUM_FEATURES:
            raise ValueError(f"{name} features must be (N, {NUM_FEATURES}), got {tuple(x.shape)}")
        return x.double()
    return effnet_features(x, resolution)


def fd_kid(real: torch.Tensor, fake: torch.Tensor, kid_subset_size: int = 1000, kid_subsets: int = 100,
           seed: int = 0, resolution: int = 224) -> dict:
    """FD-EffNetLite0 and KID-EffNetLite0 between two sets (lower is better).

    real, fake: images (N, C, H, W) in [-1, 1], or their (N, 1280) features from `effnet_features`.
    KID uses subsets of min(kid_subset_size, N_real, N_fake) samples; `seed` fixes their draw without
    touching the caller's RNG. FD is biased upwards at small N (two disjoint sets of 100 real test images
    score about 70), so compare FD at equal N only; KID is unbiased but noisier.
    """
    if kid_subset_size < 2 or kid_subsets < 1:
        raise ValueError(f"kid_subset_size must be >= 2 and kid_subsets >= 1, got {kid_subset_size} and {kid_subsets}")
    real_f, fake_f = _as_features(real, "real", resolution), _as_features(fake, "fake", resolution)
    if len(real_f) < 2 or len(fake_f) < 2:
        raise ValueError(f"FD/KID need at least 2 images per set, got {len(real_f)} real and {len(fake_f)} fake")
    subset = min(kid_subset_size, len(real_f), len(fake_f))
    fd = FrechetInceptionDistance(feature=_Precomputed())
    with warnings.catch_warnings():  # "KID keeps all features in memory": here they already are
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")
        kid = KernelInceptionDistance(feature=_Precomputed(), subsets=kid_subsets, subset_size=subset)
    for metric in (fd, kid):
        metric.update(real_f, real=True)
        metric.update(fake_f, real=False)
    with torch.random.fork_rng(devices=[]):  # KID draws its subsets from the global RNG
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"FD-EffNetLite0": float(fd.compute()), "KID-EffNetLite0": float(kid_mean),
            "KID-EffNetLite0-std": float(kid_std), "n_real": len(real_f), "n_fake": len(fake_f),
            "kid_subset_size": subset}


def psnr_ssim(x: torch.Tensor, ref: torch.Tensor) -> dict:
    """Per-image PSNR (dB, `image_psnr`: capped at 100 for identical images) and SSIM of `x` against
    `ref`, averaged over the batch. Both are clamped to [-1, 1] (data range 2), as saved samples would be."""
    _check_images(x, "x")
    _check_images(ref, "ref")
    if x.shape != ref.shape:
        raise ValueError(f"x and ref must have the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}")
    x, ref = x.float().clamp(-1, 1), ref.float().clamp(-1, 1).to(x.device)
    psnr = image_psnr(x, ref).mean()
    ssim = structural_similarity_index_measure(x, ref, data_range=2.0, reduction="elementwise_mean")
    return {"psnr": float(psnr), "ssim": float(ssim)}


def class_accuracy(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of (N, 1, 28, 28) images in [-1, 1] that the shipped classifier assigns to `labels`."""
    _check_images(images, "images")
    if images.shape[1:] != (1, 28, 28):
        raise ValueError(f"the classifier takes (N, 1, 28, 28) Fashion-MNIST images, got {tuple(images.shape)}")
    labels = torch.as_tensor(labels).reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    pred = predict(load_classifier(), images.float().clamp(-1, 1).cpu())
    return (pred == labels.cpu()).float().mean().item()
