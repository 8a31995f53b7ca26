"""Generated images on disk: the uint8 layout of ADM's .npz, PNG grids, and a generation's .npz."""
from __future__ import annotations

import numpy as np
import torch

from .io import atomic_path


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] (B, C, H, W) -> uint8 (B, H, W, C), the ADM .npz layout."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images: torch.Tensor, path: str, ncol: int | None = None, scale: int = 1) -> None:
    """A PNG grid; `scale` enlarges by pixel repetition so that 28 px images stay legible."""
    from PIL import Image
    arr = to_uint8(images[:, :3])  # latents: show their first 3 channels, as a rough preview
    b, h, w, c = arr.shape
    ncol = ncol or min(b, 10)
    nrow = -(-b // ncol)
    grid = np.zeros((nrow * (h + 2) + 2, ncol * (w + 2) + 2, c), dtype=np.uint8)
    for i in range(b):
        r, q = divmod(i, ncol)
        grid[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + q * (w + 2): 2 + q * (w + 2) + w] = arr[i]
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def save_npz(gen, path: str) -> None:
    """A `lazydit.pipeline.Generation` as ADM's .npz: uint8 images, labels and, if lazy, the skips."""
    arrays = {"arr_0": to_uint8(gen.images), "labels": gen.labels.cpu().numpy()}
    if gen.stats is not None:
        arrays["skips"] = gen.stats.skips.numpy()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
