"""Data contract and loaders.

Every command reads ``.npz`` files with ``x`` (float32, [N, ...]) and, for labelled data,
``y`` (int64, [N]), loaded with ``allow_pickle=False``. This module also reads the two
standard on-disk formats people have lying around: MNIST idx files and CIFAR-10 python
batches (through a restricted unpickler that only admits numpy arrays and plain containers).
"""

from __future__ import annotations

import gzip
import math
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SnncError
from ..fileio import open_regular, read_regular


@dataclass
class Dataset:
    """Inputs ``x`` (float32 [N, ...]) and optional labels ``y`` (int64 [N])."""

    x: np.ndarray
    y: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batches(self, batch_size: int):
        """Yield (x, y) slices of at most ``batch_size`` samples."""
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield self.x[start:stop], (None if self.y is None else self.y[start:stop])


def validate(x, y=None, *, label: str = "data", require_labels: bool = False) -> Dataset:
    """Check arrays against the data contract and return a :class:`Dataset` (float32 x, int64 y)."""
    x = np.asarray(x)
    if x.dtype.kind not in "f":
        raise SnncError(
            f"{label}: 'x' must be floating point (float32; others are converted), got {x.dtype} "
            "(convert and scale it as in training)"
        )
    if x.ndim < 2:
        raise SnncError(f"{label}: 'x' must have shape [N, ...], got {list(x.shape)}")
    if x.shape[0] == 0:
        raise SnncError(f"{label}: 'x' has no samples")
    x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x)
    if bad.any():
        first = np.unravel_index(int(np.argmax(bad)), x.shape)
        kind = "NaN" if np.isnan(x[first]) else "Inf"
        raise SnncError(f"{label}: 'x' contains {int(bad.sum())} NaN/Inf value(s), first ({kind}) at sample {first[0]}")
    if y is None:
        if require_labels:
            raise SnncError(f"{label}: labels 'y' are required for this command")
        return Dataset(x)
    y = np.asarray(y)
    if y.dtype.kind not in "iu":
        raise SnncError(f"{label}: 'y' must be integer class labels (int64; others are converted), got {y.dtype}")
    if y.shape != (x.shape[0],):
        raise SnncError(f"{label}: 'y' must have shape [{x.shape[0]}] to match 'x', got {list(y.shape)}")
    return Dataset(x, y.astype(np.int64, copy=False))


def _as_array(value) -> np.ndarray:
    """A batch part (numpy array, torch tensor or array-like) as a numpy array; tensors are
    detached and moved to the CPU (read by duck typing: this layer does not import torch)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def is_batch_iterable(data) -> bool:
    """Whether ``data`` is an iterable of batches (a torch DataLoader, a list or generator of
    ``x`` or ``(x, y)`` batches) rather than an array, a tensor, a tuple of arrays or a path."""
    if isinstance(data, (str, bytes, tuple, np.ndarray, Dataset)) or hasattr(data, "__fspath__"):
        return False
    if hasattr(data, "detach") or hasattr(data, "__array__"):  # a tensor, an array-like
        return False
    return hasattr(data, "__iter__")


def from_batches(batches, *, label: str = "data", limit: int | None = None, require_labels: bool = False) -> Dataset:
    """Collect an iterable of batches (a torch DataLoader or any iterable of ``x`` or ``(x, y)``
    batches, arrays or tensors) into one checked :class:`Dataset`; with ``limit`` it stops once
    that many samples are in (a calibration reads only ``calib_samples``)."""
    xs, ys, count = [], [], 0
    for k, batch in enumerate(batches):
        if isinstance(batch, dict):
            batch = (batch["x"], batch["y"]) if "y" in batch else (batch["x"],) if "x" in batch else None
            if batch is None:
                raise SnncError(f"{label}: batch {k} is a dict without 'x'")
        parts = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
        if not 1 <= len(parts) <= 2:
            raise SnncError(f"{label}: batch {k} has {len(parts)} parts; expected x or (x, y)")
        x = _as_array(parts[0])
        if x.ndim < 1:
            raise SnncError(f"{label}: batch {k}: 'x' must have shape [B, ...], got a scalar")
        xs.append(x)
        if len(parts) == 2 and parts[1] is not None:
            ys.append(_as_array(parts[1]).reshape(-1))
        if len(ys) not in (0, len(xs)):
            raise SnncError(f"{label}: batch {k}: some batches have labels and others do not")
        count += len(x)
        if limit is not None and count >= limit:
            break
    if not xs:
        raise SnncError(f"{label}: the iterable of batches is empty")
    shapes = {tuple(x.shape[1:]) for x in xs}
    if len(shapes) > 1:
        raise SnncError(f"{label}: batches of different sample shapes {sorted(shapes)}")
    x = np.concatenate(xs)
    y = np.concatenate(ys) if ys else None
    if limit is not None:
        x, y = x[:limit], (None if y is None else y[:limit])
    return validate(x, y, label=label, require_labels=require_labels)


def load_npz(path, *, require_labels: bool = False, arg: str = "--data") -> Dataset:
    """Read a ``.npz`` under the data contract; errors name the file and the argument."""
    path = Path(path)
    label = f"{arg} {path}"
    arrays = read_npz(path, label, required=("x",), optional=("y",))
    x, y = arrays["x"], arrays.get("y")
    return validate(x, y, label=label, require_labels=require_labels)


#: Room for an .npy member's magic and header on top of its array bytes (numpy caps headers at 10 kB
#: by default; format 2.0 allows more, which no array of ours needs).
_NPY_HEADER_ALLOWANCE = 1 << 16


def read_npz(path, label: str, *, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> dict:
    """The named arrays of an ``.npz`` file, read without pickle and within the size limits.

    Every way such a file can be damaged is a one-line :class:`SnncError` starting with
    ``label``: no zip header, a damaged zip directory, an unknown compression method, a bad
    ``.npy`` header, object arrays, truncated or damaged deflate data, a CRC mismatch. Sizes are
    checked *before* anything is decompressed or allocated: the array size from the ``.npy``
    header and the member's uncompressed size from the zip directory (which also bounds what a
    zip bomb can inflate to) against ``SNNC_MAX_ARRAY_BYTES`` (see :mod:`snncompiler.limits`).
    """
    from ..limits import check_array_bytes

    path = Path(path)
    if not path.exists():
        raise SnncError(f"{label}: no such file")
    if path.is_dir():
        raise SnncError(f"{label}: is a directory, expected an .npz file")
    try:
        with open_regular(path, label) as f:
            magic = f.read(4)
    except OSError as exc:
        raise SnncError(f"{label}: cannot read ({exc.strerror or exc})") from None
    if magic != b"PK\x03\x04":  # numpy would take any other file for a pickle and say so, misleadingly
        raise SnncError(f"{label}: not a .npz file (no zip header; write it with numpy.savez)")
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = {name[:-4]: name for name in archive.namelist() if name.endswith(".npy")}
            missing = [k for k in required if k not in members]
            if missing:
                found = ", ".join(sorted(members)) or "none"
                raise SnncError(f"{label}: no array {', '.join(repr(k) for k in missing)} in the file (found: {found})")
            for key in [k for k in required + optional if k in members]:
                arrays[key] = _read_npy_member(archive, members[key], f"{label}: array '{key}'", check_array_bytes)
    except SnncError:
        raise
    except NotImplementedError as exc:  # zipfile: "That compression method is not supported"
        raise SnncError(f"{label}: unsupported zip compression ({exc}); write it with numpy.savez") from None
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        ValueError,
        RuntimeError,
        struct.error,
        OverflowError,
        MemoryError,
    ) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise SnncError(f"{label}: not a readable .npz file ({type(exc).__name__}: {reason})") from None
    return arrays


def _read_npy_member(archive: zipfile.ZipFile, name: str, what: str, check_array_bytes) -> np.ndarray:
    """One ``.npy`` member: header read and sizes checked first, then the data."""
    from numpy.lib import format as npy

    info = archive.getinfo(name)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise SnncError(
            f"{what}: zip compression method {info.compress_type} is not supported "
            "(numpy.savez and savez_compressed write stored or deflated members)"
        )
    check_array_bytes(max(0, info.file_size - _NPY_HEADER_ALLOWANCE), f"{what} (uncompressed size in the zip)")
    with archive.open(info) as stream:
        try:
            version = npy.read_magic(stream)
            if version == (1, 0):
                shape, fortran, dtype = npy.read_array_header_1_0(stream)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = npy.read_array_header_2_0(stream)
            else:
                raise SnncError(f"{what}: .npy format version {version} is not supported")
        except (SnncError, zlib.error, zipfile.BadZipFile, EOFError, OSError):
            raise
        except Exception as exc:  # numpy parses the header as a Python literal: many ways to fail
            reason = " ".join(str(exc).split())[:120]
            raise SnncError(f"{what}: damaged .npy header ({type(exc).__name__}: {reason})") from None
        if dtype.hasobject:
            raise SnncError(f"{what}: object arrays are refused (they would need pickle)")
        count = math.prod(shape)  # exact: a damaged header can claim more than int64 holds
        nbytes = count * dtype.itemsize
        check_array_bytes(nbytes, f"{what} of shape {list(shape)} and dtype {dtype}")
        header_end = stream.tell()
        if info.file_size - header_end < nbytes:
            raise SnncError(f"{what}: truncated ({info.file_size - header_end} of {nbytes} data bytes)")
        data = bytearray(nbytes)  # writable, unlike bytes: callers may modify the array in place
        view, filled = memoryview(data), 0
        while filled < nbytes:
            got = stream.readinto(view[filled:])
            if not got:
                raise SnncError(f"{what}: truncated ({filled} of {nbytes} data bytes)")
            filled += got
        while stream.read(1 << 16):  # read to the end so that zipfile checks the CRC
            pass
    array = np.frombuffer(data, dtype=dtype, count=count)
    if fortran:
        return array.reshape(shape[::-1]).transpose()
    return array.reshape(shape)


def save_npz(path, x, y=None) -> Path:
    """Write arrays under the data contract (atomically); returns the path written, which, as
    with numpy, ends in ``.npz``."""
    from ..fileio import atomic_write, resolve_output

    target = resolve_output(path, "path", suffix=".npz")
    arrays = {"x": np.asarray(x, dtype=np.float32)}
    if y is not None:
        arrays["y"] = np.asarray(y, dtype=np.int64)
    with atomic_write(target, "wb") as handle:
        np.savez(handle, **arrays)
    return Path(target)


# ---- MNIST idx ---------------------------------------------------------------------------
_IDX_TYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path) -> np.ndarray:
    """Read one idx file (optionally gzipped), e.g. ``train-images-idx3-ubyte``."""
    path = Path(path)
    raw = read_regular(path)
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise SnncError(f"{path}: damaged gzip data ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise SnncError(f"{path}: not an idx file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise SnncError(f"{path}: truncated idx header")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    count = math.prod(dims)  # exact: a damaged header can claim more than int64 holds
    expected = count * dtype.itemsize
    if len(raw) - header < expected:
        raise SnncError(f"{path}: truncated idx data ({len(raw) - header} of {expected} bytes)")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)


def load_mnist(images_path, labels_path=None) -> Dataset:
    """MNIST-style idx images (scaled to [0, 1], shape [N, 1, H, W]) and optional labels."""
    images = read_idx(images_path).astype(np.float32) / 255.0
    if images.ndim == 3:
        images = images[:, None]
    labels = None if labels_path is None else read_idx(labels_path).astype(np.int64)
    if labels is not None and labels.shape[0] != images.shape[0]:
        raise SnncError(f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images")
    return validate(images, labels, label=str(images_path))


# ---- CIFAR-10 python batches -----------------------------------------------------------
class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Admits only what CIFAR batches contain: numpy arrays, dtypes and builtin containers."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_cifar10_batch(path) -> Dataset:
    """One CIFAR-10 python batch (``data_batch_1`` ...): x [N, 3, 32, 32] in [0, 1], y [N]."""
    path = Path(path)
    try:
        with open_regular(path) as fh:
            batch = _ArrayOnlyUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise SnncError(f"{path}: not a CIFAR-10 python batch ({exc})") from exc
    if not isinstance(batch, dict):
        raise SnncError(f"{path}: not a CIFAR-10 python batch (expected a dict)")
    batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise SnncError(f"{path}: CIFAR-10 batch without 'data' and 'labels'")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise SnncError(f"{path}: CIFAR-10 'data' must be [N, 3072], got {list(data.shape)}")
    x = data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return validate(x, np.asarray(batch["labels"], dtype=np.int64), label=str(path))


def load(path, *, require_labels: bool = False, arg: str = "--data") -> Dataset:
    """Load any supported data file: .npz, an idx file (``*-ubyte[.gz]``) or a CIFAR-10 batch."""
    p = Path(path)
    if p.suffix == ".npz":
        return load_npz(p, require_labels=require_labels, arg=arg)
    if "ubyte" in p.name:
        return load_mnist(p)
    if p.name.startswith(("data_batch", "test_batch")):
        return load_cifar10_batch(p)
    return load_npz(p, require_labels=require_labels, arg=arg)


__all__ = [
    "Dataset",
    "validate",
    "load",
    "load_npz",
    "read_npz",
    "save_npz",
    "read_idx",
    "load_mnist",
    "load_cifar10_batch",
]
