"""`lazydit inception`: FID, sFID, Inception Score and precision/recall of an `.npz` sample batch
against an ADM reference batch, with ADM's definitions (guided-diffusion evaluations/evaluator.py).

- FID: Frechet distance of pool_3 features (2048-d). The reference's statistics come from its
  `mu`/`sigma` arrays when it has them (ADM's reference batches do), else from its images.
- sFID: the same on the first 7 channels of mixed_6/conv (17 x 17 x 7 = 2023-d); `mu_s`/`sigma_s`.
- IS: exp(E KL(p(y|x) || p(y))) on softmax(pool_3 @ W) (no bias), in consecutive splits of 5000.
- Precision / recall: k-NN (k = 3) manifolds of pool_3 features in squared Euclidean distance;
  precision = share of samples inside some reference ball, recall = the converse.
torchmetrics is not used: its InceptionScore shuffles with the global RNG and its FID cannot take
the reference's precomputed statistics, so it would not give ADM's numbers. Distances here are
float32 where ADM tries float16 first, which can move precision/recall in the last digit.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..io import write_json
from ..metrics.inception_net import load_inception
from ..metrics.npz import iter_npz_batches, npz_shape


@dataclass
class InceptionConfig:
    ref: str = ""                 # ADM reference batch .npz (arr_0, optional mu/sigma/mu_s/sigma_s)
    sample: str = ""              # sample batch .npz (arr_0 uint8 NHWC)
    weights: str = ""             # local FID Inception weights (pt_inception-2015-12-05-6726825d.pth)
    batch_size: int = 64
    device: str = "cpu"
    knn: int = 3                  # neighbourhood size of the precision/recall manifolds
    is_split: int = 5000          # Inception Score split size (ADM)
    out: str | None = None        # write the metrics here as JSON


@dataclass
class Activations:
    pool: np.ndarray      # (N, 2048)
    spatial: np.ndarray   # (N, 2023)
    logits: np.ndarray    # (N, 1008)


def compute_activations(net, path: str, batch_size: int = 64, device="cpu", desc: str = "inception") -> Activations:
    from tqdm.auto import tqdm
    n = npz_shape(path)[0]
    if n == 0:
        raise ValueError(f"{path} holds no images")
    outs = []
    with torch.no_grad():
        for batch in tqdm(iter_npz_batches(path, batch_size), total=-(-n // batch_size), desc=desc, leave=False):
            if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] not in (1, 3):
                raise ValueError(f"{path}: arr_0 must be uint8 NHWC with 1 or 3 channels, got {batch.dtype} {batch.shape}")
            outs.append([t.cpu().numpy() for t in net(torch.from_numpy(batch.copy()).to(device))])
    return Activations(*(np.concatenate(col) for col in zip(*outs)))


def statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(feats) < 2:
        raise ValueError("a covariance needs at least 2 images")
    f = feats.astype(np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(feats: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray) -> float:
    """Frechet distance between the Gaussian fit of `feats` (N, d) and N(mu_ref, sigma_ref):
    |mu - mu_ref|^2 + tr(S + S_ref - 2 (S S_ref)^(1/2)).

    tr (S S_ref)^(1/2) is taken from symmetric eigenproblems with the same eigenvalues (scipy's
    sqrtm on S S_ref, as ADM uses, gives the same trace, several times slower): with A = S_ref^(1/2),
    A S A; and when N <= d, where S has rank < d, the N x N matrix Xc S_ref Xc^T / (N - 1).
    """
    x = torch.from_numpy(np.asarray(feats, dtype=np.float64))
    mu_r, s_r = (torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in (mu_ref, sigma_ref))
    n, d = x.shape
    if n < 2:
        raise ValueError("a covariance needs at least 2 images")
    if mu_r.shape != (d,) or s_r.shape != (d, d):
        raise ValueError(f"reference statistics of shape {tuple(mu_r.shape)} do not fit {d}-d features")
    mu = x.mean(0)
    xc = x - mu
    if n <= d:
        m = xc @ s_r @ xc.T / (n - 1)
        tr_s = (xc * xc).sum() / (n - 1)
    else:
        s = xc.T @ xc / (n - 1)
        w, v = torch.linalg.eigh(s_r)
        a = (v * w.clamp_min(0).sqrt()) @ v.T
        m, tr_s = a @ s @ a, s.trace()
    tr_covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    diff = mu - mu_r
    return float(diff @ diff + tr_s + s_r.trace() - 2 * tr_covmean)


def inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    p = torch.from_numpy(logits).double().softmax(1).numpy()
    scores = []
    for i in range(0, len(p), split_size):
        part = p[i:i + split_size]
        kl = part * (np.log(part + 1e-30) - np.log(part.mean(0, keepdims=True) + 1e-30))
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores))


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a * a).sum(1, keepdim=True) - 2 * a @ b.T + (b * b).sum(1)[None]).clamp_min(0)


def knn_radii(feats: torch.Tensor, k: int = 3, block: int = 2048) -> torch.Tensor:
    """Squared distance of each point to its k-th nearest other point (ADM's manifold radii)."""
    if len(feats) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images per batch")
    out = []
    for i in range(0, len(feats), block):
        d = _sq_dists(feats[i:i + block], feats)
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])  # index 0 is the point itself
    return torch.cat(out)


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int = 2048) -> torch.Tensor:
    """For each point, whether it lies in some ball (centre, radius)."""
    return torch.cat([(_sq_dists(points[i:i + block], centres) <= radii[None]).any(1)
                      for i in range(0, len(points), block)])


def precision_recall(ref: np.ndarray, sample: np.ndarray, k: int = 3, device="cpu") -> tuple[float, float]:
    r, s = (torch.from_numpy(x).float().to(device) for x in (ref, sample))
    r_rad, s_rad = knn_radii(r, k), knn_radii(s, k)
    precision = _inside(s, r, r_rad).float().mean().item()
    recall = _inside(r, s, s_rad).float().mean().item()
    return precision, recall


def reference_statistics(path: str, acts: Activations):
    """((mu, sigma), (mu_s, sigma_s)): the reference's own arrays when present, as ADM does."""
    with np.load(path, allow_pickle=False) as z:
        if "mu" in z.files and "mu_s" in z.files:
            return (z["mu"], z["sigma"]), (z["mu_s"], z["sigma_s"])
    return statistics(acts.pool), statistics(acts.spatial)


def evaluate(ref_acts: Activations, ref_stats, sample_acts: Activations, knn: int = 3, is_split: int = 5000,
             device="cpu") -> dict:
    (mu, sigma), (mu_s, sigma_s) = ref_stats
    prec, rec = precision_recall(ref_acts.pool, sample_acts.pool, knn, device)
    return {"inception_score": inception_score(sample_acts.logits, is_split),
            "fid": frechet_distance(sample_acts.pool, mu, sigma),
            "sfid": frechet_distance(sample_acts.spatial, mu_s, sigma_s),
            "precision": prec, "recall": rec, "num_samples": len(sample_acts.pool), "num_ref": len(ref_acts.pool)}


def run_inception(c: InceptionConfig) -> dict:
    for p, what in ((c.ref, "reference batch"), (c.sample, "sample batch")):
        if not p or not os.path.isfile(p):
            raise ValueError(f"{what} {p} does not exist")
    net = load_inception(c.weights, c.device)
    ref_acts = compute_activations(net, c.ref, c.batch_size, c.device, "reference")
    sample_acts = compute_activations(net, c.sample, c.batch_size, c.device, "samples")
    res = evaluate(ref_acts, reference_statistics(c.ref, ref_acts), sample_acts, c.knn, c.is_split, c.device)
    if c.out:
        write_json(c.out, {"config": asdict(c), "metrics": res})
    return res
