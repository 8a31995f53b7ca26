"""Image metrics that need torch alone: per-image PSNR against full compute and its bootstrap
interval. Kept free of torchmetrics and of any model, so training (the schedule search) and every
evaluation share one definition. FD/KID and class accuracy live in `lazydit.eval.metrics`."""
from .psnr import bootstrap_ci, image_psnr

__all__ = ["bootstrap_ci", "image_psnr"]
