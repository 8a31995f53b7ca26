"""`lazydit sample-many`: K images for FID-style evaluation, sharded, resumable, ADM `.npz` out.

Image i has label i % num_classes and seed base_seed + i, so the result does not depend on the
batch size, the number of ranks, or on which run of a resumed job produced it. The K indices are
cut into chunks of `batch_size`; under torchrun rank r takes chunks r, r + W, r + 2W, ... and
writes each as `shards/shard-{rank}-{chunk}.npz` (atomically). A chunk already on disk, from any
rank of any earlier run, is skipped. Rank 0 then merges the chunks in order into `samples.npz`
(`arr_0`: uint8 NHWC, `labels`) and writes `lazy_stats.json`.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import zipfile
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from ..images import to_uint8
from ..io import atomic_path, write_json
from ..core.lazy import get_controller
from ..loading import SampleConfig, build_lazy_model
from ..metrics.macs import controller_costs, counted_macs, generation_macs, is_latent, module_macs
from ..metrics.npz import npz_shape, write_npz_streaming
from ..pipeline import generate

VAE_SCALE = 0.18215  # SD VAE latent scale, as DiT's sample.py divides by before decoding


@dataclass
class SampleManyConfig:
    sample: SampleConfig = field(default_factory=SampleConfig)  # model, gates, sampler, base seed; labels unused
    num_images: int = 50_000                # K
    batch_size: int = 32                    # images per generate call (and per shard file)
    vae: str | None = None                  # local diffusers AutoencoderKL folder, for latent models
    out_dir: str = "out/samples"

    def run_identity(self) -> dict:
        """What must not change between a run and its resumption (the device may)."""
        d = asdict(self)
        d["sample"] = self.sample.record()
        d["sample"].pop("device")
        d["sample"].pop("out_dir")
        return d


def load_vae(path: str | None, device):
    """diffusers' AutoencoderKL from a LOCAL folder (nothing is downloaded), in eval mode."""
    if not path:
        raise ValueError("a latent model needs --vae FOLDER (a local diffusers AutoencoderKL, e.g. sd-vae-ft-ema)")
    if not os.path.isdir(path):
        raise ValueError(f"VAE folder {path} does not exist")
    try:
        from diffusers.models import AutoencoderKL
    except ImportError:
        raise ValueError("decoding latents needs diffusers: pip install 'lazydit[diffusers]'") from None
    try:
        vae = AutoencoderKL.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"cannot load a VAE from {path}: {first}") from None
    return vae.to(device).eval()


def decode(images: torch.Tensor, vae) -> np.ndarray:
    """Model output -> uint8 NHWC: latents through the VAE (DiT's 1/0.18215 scale), pixels as they are."""
    if vae is not None:
        with torch.no_grad():
            images = vae.decode(images.to(vae.dtype) / VAE_SCALE).sample
    return to_uint8(images)


def _barrier(world: int):
    if world > 1:
        import torch.distributed as dist
        dist.barrier()


def chunk_indices(chunk: int, batch_size: int, num_images: int) -> range:
    return range(chunk * batch_size, min((chunk + 1) * batch_size, num_images))


def _shard_ok(path: str, chunk: int, batch_size: int, num_images: int) -> bool:
    """A shard counts only if it reads back and holds exactly this chunk's image indices: a
    0-byte or truncated file, or another run's shard under this chunk's name, does not."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return np.array_equal(z["indices"], np.asarray(chunk_indices(chunk, batch_size, num_images)))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False


def _chunk_done(shard_dir: str, chunk: int, batch_size: int, num_images: int) -> bool:
    """True when a valid shard of `chunk` exists; invalid ones are deleted, to be generated again."""
    done = False
    for path in glob.glob(os.path.join(shard_dir, f"shard-*-{chunk}.npz")):
        if _shard_ok(path, chunk, batch_size, num_images):
            done = True
        else:
            os.remove(path)
    return done


def _check_identity(cfg: SampleManyConfig, world: int) -> bool:
    """Refuse to resume into a folder that holds shards of a different run. True when this call
    wrote the folder's config (a new run)."""
    path = os.path.join(cfg.out_dir, "sample_many_config.json")
    created = not os.path.exists(path)
    if created:  # any rank may write it: same content, atomic replace
        write_json(path, cfg.run_identity())
    _barrier(world)
    with open(path) as f:
        old = json.load(f)
    new = json.loads(json.dumps(cfg.run_identity(), default=str))
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ValueError(f"{cfg.out_dir} holds shards of a different run ({', '.join(diff)} differ); use a new --out")
    return created


def run_sample_many(cfg: SampleManyConfig, model: torch.nn.Module | None = None) -> str | None:
    """Generate the missing shards of this rank; rank 0 merges. Returns the merged path on rank 0."""
    if cfg.num_images < 1 or cfg.batch_size < 1:
        raise ValueError("--num-images and --batch-size must be >= 1")
    from ..train import distributed
    s = replace(cfg.sample, device=distributed.init_from_env(cfg.sample.device))
    rank, world = distributed.rank(), distributed.world_size()
    if model is None:
        if s.steps < 2 and (s.gates or s.force_skip):
            raise ValueError("lazy sampling needs at least 2 steps")
        torch.manual_seed(s.seed)  # --random-init weights then agree across ranks (noise is per image)
        model = build_lazy_model(s)
    vae = load_vae(cfg.vae, s.device) if is_latent(model.config) else None
    shard_dir = os.path.join(cfg.out_dir, "shards")
    os.makedirs(shard_dir, exist_ok=True)
    created = _check_identity(cfg, world)
    n_chunks = -(-cfg.num_images // cfg.batch_size)
    todo = [c for c in range(rank, n_chunks, world) if not _chunk_done(shard_dir, c, cfg.batch_size, cfg.num_images)]
    try:
        _generate_chunks(cfg, s, model, vae, shard_dir, todo, rank)
    except BaseException:
        # A run that failed before writing any shard leaves no config behind: the corrected
        # rerun must not be refused as "a different run".
        if created and world == 1 and not glob.glob(os.path.join(shard_dir, "shard-*.npz")):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(cfg.out_dir, "sample_many_config.json"))
        raise
    _barrier(world)
    out = None
    if rank == 0:
        out = merge_shards(cfg, model, n_chunks)
    _barrier(world)
    return out


def _generate_chunks(cfg: SampleManyConfig, s, model, vae, shard_dir: str, todo: list, rank: int):
    from tqdm.auto import tqdm
    for c in tqdm(todo, desc=f"rank {rank} chunks", disable=rank != 0):
        idx = chunk_indices(c, cfg.batch_size, cfg.num_images)
        labels = [i % model.config.num_classes for i in idx]
        gen = generate(model, labels, [s.seed + i for i in idx], steps=s.steps, cfg_scale=s.cfg_scale,
                       method=s.sampler, eta=s.eta, guide_channels=None if s.guide_all_channels else 3)
        arrays = {"arr_0": decode(gen.images, vae), "labels": np.asarray(labels, dtype=np.int64),
                  "indices": np.asarray(idx, dtype=np.int64), "seconds": np.float64(gen.seconds)}
        if gen.stats is not None:  # per (step, layer, module) skip counts, summed over the model rows
            arrays["skip_counts"] = gen.stats.skips[: gen.stats.steps_run].sum(-1).numpy()
            arrays["rows"] = np.int64(gen.stats.skips.shape[-1])
        with atomic_path(os.path.join(shard_dir, f"shard-{rank}-{c}.npz")) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)


def merge_shards(cfg: SampleManyConfig, model, n_chunks: int) -> str:
    """Concatenate the chunks in index order into samples.npz, streaming (50k images do not fit twice)."""
    shard_dir = os.path.join(cfg.out_dir, "shards")
    files = []
    for c in range(n_chunks):
        found = [f for f in sorted(glob.glob(os.path.join(shard_dir, f"shard-*-{c}.npz")))
                 if _shard_ok(f, c, cfg.batch_size, cfg.num_images)]
        if not found:
            raise ValueError(f"chunk {c} is missing or damaged in {shard_dir}; rerun to generate it")
        files.append(found[0])
    labels, counts, rows, seconds = [], None, 0, 0.0
    for fp in files:  # the small arrays first; images stream below
        with np.load(fp, allow_pickle=False) as z:
            labels.append(z["labels"])
            seconds += float(z["seconds"])
            if "skip_counts" in z:
                counts = z["skip_counts"].astype(np.int64) + (0 if counts is None else counts)
                rows += int(z["rows"])
    first = npz_shape(files[0])

    def images():
        for fp in files:
            with np.load(fp, allow_pickle=False) as z:
                yield z["arr_0"]
    path = os.path.join(cfg.out_dir, "samples.npz")
    write_npz_streaming(path, "arr_0", (cfg.num_images, *first[1:]), np.uint8, images(),
                        extra={"labels": np.concatenate(labels)})
    ctrl = get_controller(model)
    costs = controller_costs(ctrl) if ctrl is not None else {"gates": False}
    write_json(os.path.join(cfg.out_dir, "lazy_stats.json"),
               lazy_summary(model.config, cfg, counts, rows, seconds, costs))
    return path


def lazy_summary(mcfg, cfg: SampleManyConfig, counts: np.ndarray | None, rows: int, seconds: float,
                 costs: dict) -> dict:
    """Lazy ratios and the MACs actually spent, from the skip counts of all shards."""
    steps = cfg.sample.steps
    mm = {k: module_macs(mcfg, k) for k in ("linear", "full")}
    out = {"num_images": cfg.num_images, "steps": steps, "sampling_seconds": seconds,
           "macs_note": "per image; no_cfg is the paper's TMACs convention, cfg counts both CFG rows"}
    cfg_rows = 2 if cfg.sample.cfg_scale > 1 else 1
    if counts is None:
        out.update(lazy_ratio=0.0, attn=0.0, ffn=0.0)
        out["tmacs"] = {k: {"no_cfg": generation_macs(m, steps) / 1e12,
                            "cfg": generation_macs(m, steps, cfg=cfg_rows == 2) / 1e12} for k, m in mm.items()}
        return out
    n, total = counts.shape[0], rows * counts.shape[0] * counts.shape[1]
    computed = rows * n * counts.shape[1] - counts.sum(axis=(0, 1))  # (2,) computed calls per module kind
    out.update(lazy_ratio=float(counts.sum() / (2 * total)), attn=float(counts[:, :, 0].sum() / total),
               ffn=float(counts[:, :, 1].sum() / total), rows=rows,
               per_step_layer=(counts / rows).round(4).tolist())
    out["tmacs"] = {}
    for k, m in mm.items():
        per_row = counted_macs(m, n, rows, int(computed[0]), int(computed[1]), **costs)
        out["tmacs"][k] = {"no_cfg": per_row / 1e12, "cfg": cfg_rows * per_row / 1e12}
    return out
