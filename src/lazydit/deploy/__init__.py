"""Torch-free runtime of a frozen lazy schedule: numpy for the sampler, the schedule and the
reuse operator, onnxruntime for the network pieces (`lazydit export --format onnx`).

Nothing in this subpackage imports torch, so a deployment needs only numpy and onnxruntime:

    from lazydit.deploy import load_bundle, sample
    bundle = load_bundle("out/bundle")
    images = sample(bundle.backend(), bundle.plan, labels=[1, 2], noise=noise)  # (B, C, H, W)
"""
from .bundle import Bundle, load_bundle
from .sampler import Plan, sample, seeded_noise

__all__ = ["Bundle", "Plan", "load_bundle", "sample", "seeded_noise"]
