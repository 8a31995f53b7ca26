"""Fashion-MNIST from the standard IDX files (MIT-licensed, Zalando Research).

Default location: the Debian package `dataset-fashion-mnist`. Any folder holding the four
`*-ubyte[.gz]` files works through `root=`.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = ("install it with `apt-get update && apt-get install -y dataset-fashion-mnist`, "
                "or pass --data-dir pointing at a folder with the four *-ubyte.gz files")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Parse one IDX file (optionally gzipped), checking its header against its size."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: damaged deflate data inside a .gz
        raise ValueError(f"cannot read IDX file {path}: {e}; {INSTALL_HINT}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number); {INSTALL_HINT}")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path} is truncated (header); {INSTALL_HINT}")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = np.dtype(_DTYPES[data[2]])
    body = data[4 + 4 * ndim:]
    need = int(np.prod(shape)) * dtype.itemsize
    if len(body) != need:
        raise ValueError(f"{path} is corrupt: header says {need} bytes of data, file has {len(body)}; {INSTALL_HINT}")
    # A native-endian, writable copy: frombuffer's view is read-only (torch.from_numpy warns on it) and
    # big-endian for the multi-byte IDX types, which torch cannot take at all.
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        p = os.path.join(root, name)
        if os.path.exists(p):
            return p
    raise ValueError(f"Fashion-MNIST file {stem}[.gz] not found in {root}; {INSTALL_HINT}")


def load_fashion_mnist(split: str = "train", root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of the train or test split."""
    if split not in FILES:
        raise ValueError(f"unknown split {split!r}; choose train or test")
    root = root or DEFAULT_ROOT
    img_stem, lbl_stem = FILES[split]
    images = read_idx(_find(root, img_stem))
    labels = read_idx(_find(root, lbl_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split} files in {root} disagree: images {images.shape}, labels {labels.shape}")
    return images, labels.astype(np.int64)
