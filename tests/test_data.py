"""Data contract and the MNIST-idx / CIFAR-10 loaders, on small files the tests write."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest

import snncompiler as snnc
from snncompiler.data import Dataset, load, load_cifar10_batch, load_mnist, load_npz, read_idx, save_npz
from snncompiler.errors import SnncError


def write_idx(path, array: np.ndarray, gz=False):
    code = {np.uint8: 0x08, np.int32: 0x0C}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)


def test_mnist_idx_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5).astype(np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    data = load_mnist(tmp_path / "t10k-images-idx3-ubyte.gz", tmp_path / "t10k-labels-idx1-ubyte")
    assert data.x.shape == (5, 1, 28, 28) and data.x.dtype == np.float32
    np.testing.assert_array_equal(data.x[:, 0], images / np.float32(255.0))
    np.testing.assert_array_equal(data.y, labels)
    np.testing.assert_array_equal(read_idx(tmp_path / "t10k-labels-idx1-ubyte"), labels)


def test_idx_truncated(tmp_path):
    write_idx(tmp_path / "a-ubyte", np.zeros((4, 3, 3), np.uint8))
    raw = (tmp_path / "a-ubyte").read_bytes()
    (tmp_path / "a-ubyte").write_bytes(raw[:-5])
    with pytest.raises(SnncError, match="truncated"):
        read_idx(tmp_path / "a-ubyte")


def test_idx_damaged_headers_and_gzip(tmp_path):
    """Dimensions whose product overflows int64 (a damaged header) and a damaged gzip stream
    are clear errors, not a numpy reshape failure or a zlib exception."""
    write_idx(tmp_path / "a-ubyte", np.zeros((5, 4, 4), np.uint8))
    raw = bytearray((tmp_path / "a-ubyte").read_bytes())
    raw[8:16] = struct.pack(">II", 4160749572, 2601779383)  # 5 x these wraps to a negative int64
    (tmp_path / "a-ubyte").write_bytes(bytes(raw))
    with pytest.raises(SnncError, match="truncated idx data"):
        read_idx(tmp_path / "a-ubyte")
    write_idx(tmp_path / "b-ubyte.gz", np.zeros((5, 4, 4), np.uint8), gz=True)
    damaged = bytearray((tmp_path / "b-ubyte.gz").read_bytes())
    damaged[12:20] = b"\xff" * 8
    (tmp_path / "b-ubyte.gz").write_bytes(bytes(damaged))
    with pytest.raises(SnncError, match="damaged gzip data"):
        read_idx(tmp_path / "b-ubyte.gz")


def test_cifar_batch(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    labels = [3, 1, 4, 1]
    with open(tmp_path / "data_batch_1", "wb") as fh:
        pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"training batch 1 of 5"}, fh, protocol=2)
    ds = load(tmp_path / "data_batch_1")
    assert ds.x.shape == (4, 3, 32, 32)
    np.testing.assert_allclose(ds.x[2, 1, 0, :4], data[2, 1024:1028] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y, labels)


def test_cifar_loader_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "data_batch_9", "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": [0]}, fh)
    with pytest.raises(SnncError, match="refusing"):
        load_cifar10_batch(tmp_path / "data_batch_9")


def test_npz_contract(tmp_path):
    np.savez(tmp_path / "ok.npz", x=np.ones((3, 2), np.float64), y=np.array([0, 1, 2], np.int32))
    ds = load_npz(tmp_path / "ok.npz", require_labels=True)
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64
    np.savez(tmp_path / "obj.npz", x=np.array([object()], dtype=object))
    with pytest.raises(SnncError, match="obj.npz"):
        load_npz(tmp_path / "obj.npz")
    np.savez(tmp_path / "ylen.npz", x=np.ones((3, 2), np.float32), y=np.array([0, 1]))
    with pytest.raises(SnncError, match=r"'y' must have shape \[3\]"):
        load_npz(tmp_path / "ylen.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(SnncError, match="junk.npz"):
        load_npz(tmp_path / "junk.npz")


def test_evaluate_takes_a_dataset_or_a_data_file(small_digits_cnn, tmp_path):
    """``evaluate(test)`` and ``evaluate("test.npz")`` score what ``evaluate(test.x, test.y)`` does;
    without labels it says so in one line."""
    path, train, test = small_digits_cnn
    model = snnc.compile(str(path), train.x[:128])
    expected = model.evaluate(test.x[:64], test.y[:64], [4])
    subset = Dataset(test.x[:64], test.y[:64])
    assert model.evaluate(subset, timesteps=[4]) == expected
    save_npz(tmp_path / "test.npz", subset.x, subset.y)
    assert model.evaluate(tmp_path / "test.npz", timesteps=[4]) == expected
    assert model.evaluate(str(tmp_path / "test.npz"), timesteps=[4]) == expected
    with pytest.raises(SnncError, match="no labels"):
        model.evaluate(Dataset(subset.x), timesteps=[4])
    save_npz(tmp_path / "unlabelled.npz", subset.x)
    with pytest.raises(SnncError, match="unlabelled.npz"):
        model.evaluate(tmp_path / "unlabelled.npz", timesteps=[4])
