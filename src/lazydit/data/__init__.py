from .fashion_mnist import CLASSES, load_fashion_mnist, read_idx
from .reference import load_reference

__all__ = ["CLASSES", "load_fashion_mnist", "load_reference", "read_idx"]
