"""The IDX loader on tiny synthetic files, its errors, and the shipped reference batch."""
import gzip
import struct

import numpy as np
import pytest
import torch

from lazydit.data import load_fashion_mnist, load_reference, read_idx

HINT = "apt-get install -y dataset-fashion-mnist"


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    """Big-endian IDX: two zero bytes, dtype code, ndim, then each dim as a big-endian uint32."""
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


def write(path, data: bytes, gz: bool) -> None:
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def tiny_set():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), np.array([7, 0, 9], dtype=np.uint8)


@pytest.mark.parametrize("gz", [True, False])
def test_loader_reads_synthetic_idx(tmp_path, tiny_set, gz):
    images, labels = tiny_set
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(images), gz)
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(labels), gz)
    x, y = load_fashion_mnist("test", str(tmp_path))
    assert x.dtype == np.uint8 and np.array_equal(x, images)
    assert y.dtype == np.int64 and y.tolist() == [7, 0, 9]
    assert x.flags.writeable  # torch.from_numpy on it must not warn


def test_big_endian_types_come_back_native(tmp_path):
    values = np.array([[1, -2], [70000, 3]], dtype=">i4")
    (tmp_path / "a-ubyte").write_bytes(idx_bytes(values, code=0x0C))
    out = read_idx(str(tmp_path / "a-ubyte"))
    assert out.tolist() == values.tolist() and out.dtype.isnative
    torch.from_numpy(out)  # torch rejects non-native byte order


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-10], "is corrupt: header says"),
    (lambda b: b[:6], r"truncated \(header\)"),
    (lambda b: b"\x08\x08" + b[2:], "bad magic number"),
    (lambda b: b + b"\x00", "is corrupt: header says"),
])
def test_corrupt_idx_is_a_clear_error(tmp_path, tiny_set, damage, message):
    path = tmp_path / "bad-ubyte"
    path.write_bytes(damage(idx_bytes(tiny_set[0])))
    with pytest.raises(ValueError, match=message) as e:
        read_idx(str(path))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("damage", [lambda b: b[:len(b) // 2], lambda b: b[:20] + bytes(200) + b[220:]])
def test_damaged_gzip_is_a_clear_error(tmp_path, tiny_set, damage):
    good = gzip.compress(idx_bytes(tiny_set[0]))
    path = tmp_path / "bad-ubyte.gz"
    path.write_bytes(damage(good))
    with pytest.raises(ValueError, match="cannot read IDX file"):
        read_idx(str(path))


def test_missing_folder_names_the_debian_package(tmp_path):
    with pytest.raises(ValueError, match="not found") as e:
        load_fashion_mnist("train", str(tmp_path / "nowhere"))
    assert HINT in str(e.value)


def test_image_label_count_mismatch(tmp_path, tiny_set):
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(tiny_set[0]), gz=False)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(tiny_set[1][:2]), gz=False)
    with pytest.raises(ValueError, match="disagree"):
        load_fashion_mnist("train", str(tmp_path))


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load_fashion_mnist("val")


def test_reference_batch_is_the_test_split():
    x, y = load_reference()
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1
    assert y.dtype == torch.int64 and torch.equal(y.bincount(), torch.full((10,), 1000))
    x5, y5 = load_reference(5)
    assert torch.equal(x5, x[:5]) and torch.equal(y5, y[:5])


def test_reference_errors(tmp_path):
    with pytest.raises(ValueError, match="must be positive"):
        load_reference(0)
    bad = tmp_path / "ref.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="make_assets.py reference"):
        load_reference(path=str(bad))
