"""Event streams from neuromorphic (DVS / ATIS) sensors → frame sequences a sequence model reads.

An event stream is a dict of equal-length arrays ``t`` (microseconds), ``x``, ``y``, ``p``
(polarity, 0 = OFF, nonzero = ON), in the order the sensor wrote them. :func:`to_frames` bins
one into ``frames`` two-channel count images [T, 2, H, W] (channel 0 OFF, 1 ON), split into
equal event counts or equal time spans exactly as SpikingJelly's
``integrate_events_by_fixed_frames_number`` does, so models trained on its frames read ours.
:func:`load_event_folder` turns a dataset laid out as ``root/<class>/<sample>`` into a
:class:`~snncompiler.data.Dataset` of [N, T, 2, H, W] sequences with labels.

Readers (by file suffix):

* ``.bin``: the ATIS format of N-MNIST and N-Caltech101 (Orchard et al., 2015): 5 bytes per
  event, x (8 bits), y (8 bits), polarity (1 bit), timestamp (23 bits, µs). A record with
  y = 240 is a timestamp-overflow marker: later timestamps gain 2^23 µs.
* ``.aedat``: AEDAT 3.1 (DVS128 Gesture and other iniVation recordings): an ASCII header up to
  ``#!END-HEADER``, then packets of a 28-byte header and ``eventCapacity × eventSize`` bytes;
  polarity events (type 1) carry x, y and polarity in a 32-bit word and a 32-bit timestamp
  extended by the packet's overflow counter. Other event types are skipped.
* ``.npz``: arrays ``t``, ``x``, ``y``, ``p`` (what tonic and SpikingJelly save), read
  without pickle.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..errors import SnncError
from ..fileio import read_regular
from ..limits import check_array_bytes, check_sensor_size
from .datasets import Dataset

EVENT_KEYS = ("t", "x", "y", "p")
SPLITS = ("number", "time")
_ATIS_OVERFLOW_Y = 240


def read_atis_bin(path) -> dict:
    """Events of an N-MNIST / N-Caltech101 ``.bin`` file (see the module docstring)."""
    raw = _read_bytes(path)
    if len(raw) % 5:
        raise SnncError(f"{path}: {len(raw)} bytes is not a whole number of 5-byte ATIS events (truncated?)")
    b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 5).astype(np.int64)
    t = ((b[:, 2] & 0x7F) << 16) | (b[:, 3] << 8) | b[:, 4]
    overflow = b[:, 1] == _ATIS_OVERFLOW_Y
    t = t + (np.cumsum(overflow) << 23)
    keep = ~overflow
    return {"t": t[keep], "x": b[keep, 0], "y": b[keep, 1], "p": (b[keep, 2] >> 7)}


def read_aedat3(path) -> dict:
    """Polarity events of an AEDAT 3.1 file (see the module docstring)."""
    raw = _read_bytes(path)
    end = raw.find(b"#!END-HEADER")
    if not raw.startswith(b"#") or end < 0:
        raise SnncError(f"{path}: not an AEDAT 3.1 file (no '#!END-HEADER' line)")
    pos = raw.index(b"\n", end) + 1
    parts: list[np.ndarray] = []
    while pos < len(raw):
        if pos + 28 > len(raw):
            raise SnncError(f"{path}: truncated packet header at byte {pos}")
        e_type, _src, e_size, _ts_offset, overflow, capacity, _number, _valid = struct.unpack_from(
            "<hhiiiiii", raw, pos
        )
        pos += 28
        length = capacity * e_size
        if e_size <= 0 or capacity < 0 or pos + length > len(raw):
            raise SnncError(f"{path}: damaged or truncated packet at byte {pos - 28}")
        if e_type == 1:  # polarity events: [uint32 data, int32 timestamp, ...] each e_size bytes
            if e_size < 8 or e_size % 4:
                raise SnncError(
                    f"{path}: polarity events of {e_size} bytes at byte {pos - 28} (expected a "
                    "multiple of 4, at least 8)"
                )
            words = np.frombuffer(raw, dtype="<u4", count=capacity * e_size // 4, offset=pos).reshape(capacity, -1)
            parts.append(
                np.stack(
                    [
                        words[:, 1].astype(np.int64) | (np.int64(overflow) << 31),
                        (words[:, 0] >> 17) & 0x7FFF,
                        (words[:, 0] >> 2) & 0x7FFF,
                        (words[:, 0] >> 1) & 1,
                    ]
                ).astype(np.int64)
            )
        pos += length
    data = np.concatenate(parts, axis=1) if parts else np.zeros((4, 0), np.int64)
    return dict(zip(EVENT_KEYS, data))


def read_event_npz(path) -> dict:
    """Events saved as an ``.npz`` of arrays t, x, y, p (pickle refused; sizes checked before reading)."""
    from .datasets import read_npz

    arrays = read_npz(path, str(path), required=EVENT_KEYS)
    try:
        return {k: np.asarray(arrays[k]).reshape(-1).astype(np.int64) for k in EVENT_KEYS}
    except (TypeError, ValueError) as exc:
        raise SnncError(f"{path}: event arrays t, x, y, p must be integers ({type(exc).__name__})") from None


READERS = {".bin": read_atis_bin, ".aedat": read_aedat3, ".npz": read_event_npz}


def read_events(path) -> dict:
    """Read one event file, choosing the reader by suffix (``.bin``, ``.aedat``, ``.npz``)."""
    reader = READERS.get(Path(path).suffix.lower())
    if reader is None:
        raise SnncError(f"{path}: unknown event file type; expected one of {', '.join(READERS)}")
    events = reader(path)
    lengths = {len(events[k]) for k in EVENT_KEYS}
    if len(lengths) != 1:
        raise SnncError(f"{path}: arrays t, x, y, p differ in length")
    return events


def _read_bytes(path) -> bytes:
    try:
        return read_regular(path)
    except OSError as exc:
        raise SnncError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def segments(t: np.ndarray, frames: int, split_by: str = "number") -> tuple[np.ndarray, np.ndarray]:
    """Event index ranges [j_l, j_r) of each frame.

    ``number``: ⌊N/T⌋ events per frame, the remainder in the last. ``time``: with
    Δ = ⌊(t_last − t_first)/T⌋, frame j holds the events with t in [t_first + jΔ, t_first + (j+1)Δ),
    and the last frame everything from t_first + (T−1)Δ on (SpikingJelly's segmentation; an empty
    span gives an empty frame where SpikingJelly raises). ``t`` must be sorted for ``time``.
    """
    if split_by not in SPLITS:
        raise SnncError(f"--split-by: expected number or time, got '{split_by}'")
    if frames < 1:
        raise SnncError(f"--frames: must be ≥ 1, got {frames}")
    n = len(t)
    if split_by == "number":
        starts = (n // frames) * np.arange(frames)
        ends = np.append(starts[1:], n)
        return starts, ends
    if n == 0:
        return np.zeros(frames, int), np.zeros(frames, int)
    step = (int(t[-1]) - int(t[0])) // frames
    edges = int(t[0]) + step * np.arange(frames + 1)
    starts = np.searchsorted(t, edges[:-1], side="left")
    ends = np.append(np.searchsorted(t, edges[1:-1], side="left"), n)
    return starts, ends


def to_frames(events: dict, frames: int, sensor_size: tuple[int, int], split_by: str = "number") -> np.ndarray:
    """Bin an event stream into ``frames`` count images, float32 [T, 2, H, W] (OFF, ON)."""
    h, w = (int(s) for s in sensor_size)
    t, x, y = (np.asarray(events[k]) for k in ("t", "x", "y"))
    p = np.asarray(events["p"]) != 0
    if len(x) and (x.min() < 0 or y.min() < 0 or x.max() >= w or y.max() >= h):
        raise SnncError(f"events at x up to {x.max()}, y up to {y.max()} do not fit the sensor size {h}×{w} (H×W)")
    check_sensor_size(h, w, "events")
    check_array_bytes(frames * 2 * h * w * 8, f"events binned into {frames} frames of {h}×{w}")
    if split_by == "time" and len(t) > 1 and bool((np.diff(t) < 0).any()):
        order = np.argsort(t, kind="stable")  # time spans need time order; ties keep the file's order
        t, x, y, p = t[order], x[order], y[order], p[order]
    starts, ends = segments(t, frames, split_by)
    frame_of = np.repeat(np.arange(frames), ends - starts)  # the segments tile [0, N) in order
    index = ((frame_of * 2 + p) * h + y) * w + x
    counts = np.bincount(index, minlength=frames * 2 * h * w)
    return counts.reshape(frames, 2, h, w).astype(np.float32)


def load_event_folder(
    root, frames: int, *, sensor_size: tuple[int, int] | None = None, split_by: str = "number", progress: bool = True
) -> Dataset:
    """A dataset laid out as ``root/<class name>/<event file>``: x [N, T, 2, H, W] float32 frames,
    y int64 class indices in sorted order of the class folder names.

    ``sensor_size`` (H, W) defaults to the largest coordinates found + 1 (N-MNIST: 34×34; DVS128:
    128×128 — give it when a split may not reach the edges). ``progress``: a bar of files read
    on stderr, shown only on a terminal (:mod:`snncompiler.progress`)."""
    root = Path(root)
    if not root.is_dir():
        raise SnncError(f"{root}: not a directory of class folders")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files = [
        (f, label)
        for label, name in enumerate(classes)
        for f in sorted((root / name).iterdir())
        if f.suffix.lower() in READERS
    ]
    if not files:
        raise SnncError(f"{root}: no event files ({', '.join(READERS)}) in class folders")
    from ..progress import progress_bar

    streams = []
    # a bar only on a terminal (as every bar of the project): never in a log file or a pipe
    with progress_bar(len(files), f"reading {root.name}", "file", enabled=None if progress else False) as bar:
        for f, _ in files:
            streams.append(read_events(f))
            bar.update(1)
    if sensor_size is None:
        sensor_size = (
            max(int(e["y"].max(initial=0)) for e in streams) + 1,
            max(int(e["x"].max(initial=0)) for e in streams) + 1,
        )
    height, width = (int(v) for v in sensor_size)
    check_sensor_size(height, width, f"{root}: events (largest coordinates + 1)")
    check_array_bytes(
        len(files) * frames * 2 * height * width * 4,
        f"{root}: {len(files)} recordings binned into {frames} frames of {height}×{width}",
    )
    x = np.empty((len(files), frames, 2, height, width), np.float32)
    for i, ((f, _), events) in enumerate(zip(files, streams)):
        try:
            x[i] = to_frames(events, frames, sensor_size, split_by)
        except SnncError as exc:
            raise SnncError(f"{f}: {exc}") from None
    return Dataset(x, np.array([label for _, label in files], np.int64))


__all__ = [
    "read_atis_bin",
    "read_aedat3",
    "read_event_npz",
    "read_events",
    "segments",
    "to_frames",
    "load_event_folder",
    "READERS",
]
