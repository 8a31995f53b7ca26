"""Datasets for `--source dataset`: images (or latents) in the model's space, with labels."""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F


def load_gate_dataset(spec: str | None, data_dir: str | None, model_cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, C, H, W) float, labels (N,) long) from 'fmnist' or an .npz file."""
    if spec is None:
        raise ValueError("--source dataset needs --dataset fmnist or --dataset FILE.npz")
    if spec == "fmnist":
        from ..data import load_fashion_mnist
        imgs, labels = load_fashion_mnist("train", data_dir)
        x = torch.from_numpy(imgs).float().div(127.5).sub(1).unsqueeze(1)
        pad = (model_cfg.input_size - 28) // 2
        x = F.pad(x, (pad, pad, pad, pad), value=-1.0) if pad > 0 else x
        y = torch.from_numpy(labels)
    else:
        if not os.path.isfile(spec):
            raise ValueError(f"dataset file {spec} does not exist")
        try:
            with np.load(spec, allow_pickle=False) as d:
                x, labels = torch.from_numpy(d["images"]).float(), d["labels"]
        except (KeyError, ValueError, OSError) as e:
            raise ValueError(f"dataset {spec} must be an .npz with 'images' and 'labels' ({e})") from None
        if labels.dtype.kind not in "iu" and not (labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0)):
            raise ValueError(f"dataset {spec} has non-integer labels (dtype {labels.dtype}): class labels are integers")
        if labels.shape != (len(x),):
            raise ValueError(f"dataset {spec} has {labels.shape} labels for {len(x)} images")
        y = torch.from_numpy(labels.astype(np.int64))
    if len(x) == 0:
        raise ValueError(f"dataset {spec} is empty")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"dataset {spec} has NaN or infinite pixel values")
    want = (model_cfg.in_channels, model_cfg.input_size, model_cfg.input_size)
    if tuple(x.shape[1:]) != want:
        raise ValueError(f"dataset images have shape {tuple(x.shape[1:])}, the model expects {want}")
    if y.min() < 0 or y.max() >= model_cfg.num_classes:
        raise ValueError(f"dataset labels fall outside [0, {model_cfg.num_classes - 1}]")
    return x, y
