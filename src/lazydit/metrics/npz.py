"""Streaming access to ADM-style `.npz` sample batches (50k images at 256 px are ~10 GB).

`np.load` would read a whole member into memory; these helpers stream `arr_0` in batches and
write it chunk by chunk, in the plain uncompressed layout `np.savez` produces and ADM reads.
"""
from __future__ import annotations

import contextlib
import zipfile
from typing import Iterable, Iterator

import numpy as np

from ..io import atomic_path


@contextlib.contextmanager
def _member(path: str, key: str):
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read {path}: not an .npz file ({e})") from None
    with zf:
        if f"{key}.npy" not in zf.namelist():
            raise ValueError(f"{path} has no {key!r} array (it holds {', '.join(n[:-4] for n in zf.namelist())})")
        with zf.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            if fortran or dtype.hasobject:
                raise ValueError(f"{path}: {key} must be a plain C-ordered array")
            yield f, shape, dtype


def npz_shape(path: str, key: str = "arr_0") -> tuple:
    with _member(path, key) as (_, shape, _dtype):
        return tuple(shape)


def iter_npz_batches(path: str, batch_size: int, key: str = "arr_0") -> Iterator[np.ndarray]:
    """Consecutive batches of the first axis of `key`, read without loading the whole array."""
    with _member(path, key) as (f, shape, dtype):
        row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        for start in range(0, shape[0], batch_size):
            n = min(batch_size, shape[0] - start)
            buf = f.read(n * row)
            if len(buf) != n * row:
                raise ValueError(f"{path} is truncated: {key} ends after {start} rows")
            yield np.frombuffer(buf, dtype=dtype).reshape(n, *shape[1:])


def write_npz_streaming(path: str, key: str, shape: tuple, dtype, chunks: Iterable[np.ndarray],
                        extra: dict | None = None) -> None:
    """Write `key` of `shape` from consecutive `chunks` (plus small `extra` arrays), atomically."""
    dtype = np.dtype(dtype)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            written = 0
            with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
                np.lib.format.write_array_header_1_0(f, header)
                for c in chunks:
                    c = np.ascontiguousarray(c, dtype=dtype)
                    if c.shape[1:] != tuple(shape[1:]):
                        raise ValueError(f"chunk of shape {c.shape} does not fit {key} of shape {shape}")
                    f.write(c.tobytes())
                    written += c.shape[0]
            if written != shape[0]:
                raise ValueError(f"wrote {written} rows of {key}, expected {shape[0]}")
            for name, arr in (extra or {}).items():
                with zf.open(f"{name}.npy", "w") as f:
                    np.lib.format.write_array(f, np.asarray(arr), allow_pickle=False)
