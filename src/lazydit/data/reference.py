"""The shipped reference batch: the Fashion-MNIST 10k test split (MIT licence), inside the package.

Shipping it lets FD/KID and class accuracy run with nothing but `pip install lazydit[metrics]`, and pins
the exact real set every score in the project is measured against. Rebuild it with
`python scripts/make_assets.py reference`.
"""
from __future__ import annotations

import importlib.resources
import zipfile

import numpy as np
import torch

from ..io import atomic_path

REFERENCE_FILE = "fmnist_test.npz"


def write_reference(out_path: str, data_dir: str | None = None) -> None:
    """Compress the test split from the IDX files to `out_path` (uint8 images, int64 labels)."""
    from .fashion_mnist import load_fashion_mnist
    images, labels = load_fashion_mnist("test", data_dir)
    with atomic_path(out_path) as tmp, open(tmp, "wb") as f:  # a file object stops numpy appending .npz
        np.savez_compressed(f, images=images, labels=labels.astype(np.int64))


def load_reference(n: int | None = None, path: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """First `n` (default all 10000) test images as float (N, 1, 28, 28) in [-1, 1], and int64 labels (N,)."""
    if n is not None and n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    source = path or importlib.resources.files("lazydit") / "assets" / REFERENCE_FILE
    try:
        with (open(path, "rb") if path else source.open("rb")) as f, np.load(f, allow_pickle=False) as z:
            images, labels = z["images"][:n], z["labels"][:n]
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read reference batch {source} ({e}); rebuild it with "
                         "`python scripts/make_assets.py reference`") from None
    x = torch.from_numpy(images.astype(np.float32)).div(127.5).sub(1).unsqueeze(1)  # same map as training
    return x, torch.from_numpy(labels.astype(np.int64))
