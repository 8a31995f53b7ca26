"""A small Fashion-MNIST CNN, shipped in the package, for the class accuracy of class-conditional samples.

Input: float images (N, 1, 28, 28) in [-1, 1], the DiT's own pixel range, so samples go in unconverted.
Rebuild the shipped weights with `python scripts/make_assets.py classifier`.
"""
from __future__ import annotations

import functools
import importlib.resources
import json
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..io import atomic_path

CLASSIFIER_FILE = "classifier.safetensors"


@dataclass
class ClassifierConfig:
    widths: tuple[int, int, int] = (32, 64, 128)  # channels of the three conv stages (28, 14, 7 px)
    hidden: int = 128                               # fully connected width; pooling to 3x3 first keeps it < 1 MB
    dropout: float = 0.3                            # before the last layer; FMNIST overfits within a few epochs
    num_classes: int = 10


class FashionCNN(nn.Module):
    def __init__(self, cfg: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.cfg = cfg
        c1, c2, c3 = cfg.widths
        layers, cin = [], 1
        for c in (c1, c2, c3):
            layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            cin = c
        self.features = nn.Sequential(*layers)  # 28 -> 14 -> 7 -> 3 px
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c3 * 3 * 3, cfg.hidden), nn.ReLU(),
                                  nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, cfg.num_classes))

    def forward(self, x):
        return self.head(self.features(x))  # (N, 1, 28, 28) in [-1, 1] -> (N, 10) logits


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random mirror (no class changes under it) and a whole-batch shift of up to 2 px."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
    x = F.pad(x, (2, 2, 2, 2), value=-1.0)  # background of [-1, 1] images is -1
    return x[..., 2 + dy:30 + dy, 2 + dx:30 + dx]


def _to_signed(images) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28) in [-1, 1], the same map the DiT is trained on."""
    return torch.from_numpy(images).float().div(127.5).sub(1).unsqueeze(1)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


def train_classifier(out_path: str, data_dir: str | None = None, epochs: int = 6, seed: int = 0,
                     cfg: ClassifierConfig = ClassifierConfig(), batch_size: int = 128, lr: float = 2e-3) -> float:
    """Train on the 60k train split, save weights + config (safetensors) to `out_path`; return test accuracy."""
    from ..data import load_fashion_mnist
    if epochs <= 0 or batch_size <= 0:
        raise ValueError(f"epochs and batch_size must be positive, got {epochs} and {batch_size}")
    xtr, ytr = load_fashion_mnist("train", data_dir)
    xte, yte = load_fashion_mnist("test", data_dir)
    xtr, ytr, xte, yte = _to_signed(xtr), torch.from_numpy(ytr), _to_signed(xte), torch.from_numpy(yte)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = FashionCNN(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(xtr) // batch_size)
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(len(xtr) // batch_size):  # drop the ragged last batch: BatchNorm dislikes tiny ones
            idx = perm[i * batch_size:(i + 1) * batch_size]
            loss = F.cross_entropy(model(_augment(xtr[idx], gen)), ytr[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            one_cycle.step()
        acc = (predict(model, xte) == yte).float().mean().item()
        print(f"epoch {epoch + 1}/{epochs}  loss {loss.item():.3f}  test acc {acc:.4f}  {time.time() - t0:.0f}s", flush=True)
    meta = {"config": json.dumps(asdict(cfg)), "test_accuracy": f"{acc:.4f}",
            "recipe": json.dumps({"epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr})}
    with atomic_path(out_path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp, metadata=meta)
    return acc


def load_classifier_file(path) -> FashionCNN:
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        cfg = json.loads(meta["config"])
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise ValueError(f"cannot read classifier {path} ({type(e).__name__}); rebuild it with "
                         "`python scripts/make_assets.py classifier`") from None
    cfg["widths"] = tuple(cfg["widths"])
    model = FashionCNN(ClassifierConfig(**cfg))
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


@functools.lru_cache(maxsize=1)
def load_classifier() -> FashionCNN:
    """The shipped classifier from the package assets, loaded once per process."""
    with importlib.resources.as_file(importlib.resources.files("lazydit") / "assets" / CLASSIFIER_FILE) as p:
        return load_classifier_file(p)
