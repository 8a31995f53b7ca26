"""What a sample is worth and what it cost, one module per metric family:

- `psnr`: per-image PSNR against full compute and its bootstrap interval, torch only, so that the
  placement search and every evaluation share one definition (imported here);
- `quality`: FD/KID over EfficientNet-Lite0 features, SSIM, class accuracy (torchmetrics);
- the networks they run: `effnet`, `inception_net` (FID's Inception-v3), `classifier`;
- `macs`: multiply-accumulates from module shapes, DDIM-k at matched compute, `lazydit macs`;
- `npz` (ADM sample batches, streamed) and `plots`.

Only `psnr` is imported with the package: the others pull in torchmetrics or matplotlib when used.
"""
from .psnr import bootstrap_ci, image_psnr

__all__ = ["bootstrap_ci", "image_psnr"]
