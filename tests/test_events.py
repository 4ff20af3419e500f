"""Event streams: readers against SpikingJelly's readers on files written here, framing against
SpikingJelly's integrate_events_by_fixed_frames_number, folders, errors, and a sequence model
trained and evaluated on event recordings through `snnc eval --frames`."""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest

from snncompiler.data.events import load_event_folder, read_aedat3, read_atis_bin, read_events, to_frames
from snncompiler.errors import SnncError

sj_utils = pytest.importorskip("spikingjelly.datasets.utils")


def _stream(n, size, seed, t_max=2**23):
    rng = np.random.default_rng(seed)
    return {
        "t": np.sort(rng.integers(0, t_max, n)),
        "x": rng.integers(0, size, n),
        "y": rng.integers(0, size, n),
        "p": rng.integers(0, 2, n),
    }


def write_atis(path, ev, overflow_before=()):
    """N-MNIST's 5-byte records; a record with y = 240 before each index in ``overflow_before``."""
    rows = []
    for i, (t, x, y, p) in enumerate(zip(ev["t"], ev["x"], ev["y"], ev["p"])):
        if i in overflow_before:
            rows.append([0, 240, 0, 0, 0])
        rows.append([x, y, (p << 7) | (t >> 16), (t >> 8) & 255, t & 255])
    path.write_bytes(np.array(rows, dtype=np.uint8).tobytes())


def write_aedat3(path, packets):
    """AEDAT 3.1: header, then (type, overflow, [(t, x, y, p), ...]) packets of 8-byte events."""
    out = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n"
    for e_type, overflow, events in packets:
        out += struct.pack("<hhiiiiii", e_type, 1, 8, 4, overflow, len(events), len(events), len(events))
        for t, x, y, p in events:
            out += struct.pack("<Ii", (x << 17) | (y << 2) | (p << 1) | 1, t)
    path.write_bytes(out)


def test_atis_reader_matches_spikingjelly(tmp_path):
    ev = _stream(400, 34, 0)
    write_atis(tmp_path / "a.bin", ev)
    ours, theirs = read_atis_bin(tmp_path / "a.bin"), sj_utils.load_ATIS_bin(str(tmp_path / "a.bin"))
    for k in "txyp":
        np.testing.assert_array_equal(ours[k], ev[k])
        np.testing.assert_array_equal(ours[k], theirs[k])


def test_atis_overflow_markers_extend_timestamps(tmp_path):
    ev = _stream(50, 34, 1, t_max=2**22)
    write_atis(tmp_path / "o.bin", ev, overflow_before={20, 35})
    got = read_atis_bin(tmp_path / "o.bin")
    expect = ev["t"] + (np.arange(50) >= 20) * 2**23 + (np.arange(50) >= 35) * 2**23
    np.testing.assert_array_equal(got["t"], expect)  # markers are dropped, later times extended
    assert len(got["x"]) == 50 and (np.diff(got["t"]) >= 0).all()


def test_aedat3_reader_matches_spikingjelly(tmp_path):
    a, b = _stream(30, 128, 2, t_max=2**31 - 1), _stream(20, 128, 3, t_max=2**20)
    rows = lambda e: list(zip(e["t"].tolist(), e["x"].tolist(), e["y"].tolist(), e["p"].tolist()))
    # a packet of another event type (special events, type 0) between two polarity packets
    write_aedat3(tmp_path / "g.aedat", [(1, 0, rows(a)), (0, 0, rows(b)[:3]), (1, 1, rows(b))])
    ours, theirs = read_aedat3(tmp_path / "g.aedat"), sj_utils.load_aedat_v3(str(tmp_path / "g.aedat"))
    for k in "txyp":
        np.testing.assert_array_equal(ours[k], theirs[k])
    np.testing.assert_array_equal(ours["t"][30:], b["t"] + 2**31)  # the packet's overflow counter
    np.testing.assert_array_equal(ours["x"][:30], a["x"])


@pytest.mark.parametrize("split_by", ["number", "time"])
@pytest.mark.parametrize("frames", [1, 4, 7])
def test_frames_match_spikingjelly(split_by, frames):
    ev = _stream(997, 34, 4)
    ours = to_frames(ev, frames, (34, 34), split_by)
    theirs = sj_utils.integrate_events_by_fixed_frames_number(ev, split_by, frames, 34, 34)
    assert ours.dtype == np.float32 and ours.shape == (frames, 2, 34, 34)
    np.testing.assert_array_equal(ours, theirs)
    assert ours.sum() == 997


def test_time_split_with_an_empty_span_gives_an_empty_frame():
    ev = {"t": np.array([0, 1, 2, 90, 99]), "x": np.zeros(5, int), "y": np.zeros(5, int), "p": np.ones(5, int)}
    f = to_frames(ev, 4, (1, 1), "time")  # spans of 24 µs: [0,24) [24,48) [48,72) [72,99]
    assert f[:, 1, 0, 0].tolist() == [3, 0, 0, 2]
    with pytest.raises(IndexError):  # SpikingJelly's version cannot do this
        sj_utils.integrate_events_by_fixed_frames_number(ev, "time", 4, 1, 1)


def _moving_bar(n, seed, size=8, steps=8):
    """Recordings of a vertical bar crossing the sensor left→right (class 0) or right→left
    (class 1): every pixel fires equally often in both, so only the order of events tells them apart."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        label = i % 2
        ts, xs, ys = [], [], []
        for step in range(steps):
            col = step if label == 0 else size - 1 - step
            for y in range(size):
                if rng.random() < 0.8:
                    ts.append(step * 1000 + int(rng.integers(0, 1000)))
                    xs.append(col)
                    ys.append(y)
        order = np.argsort(ts, kind="stable")
        yield (
            label,
            {"t": np.array(ts)[order], "x": np.array(xs)[order], "y": np.array(ys)[order], "p": np.ones(len(ts), int)},
        )


def _write_folder(root, n, seed):
    for i, (label, ev) in enumerate(_moving_bar(n, seed)):
        folder = root / ("left_to_right" if label == 0 else "right_to_left")
        folder.mkdir(parents=True, exist_ok=True)
        if i % 3 == 0:
            np.savez(folder / f"{i}.npz", **ev)
        else:
            write_atis(folder / f"{i}.bin", ev)
    return root


def test_folder_loads_classes_and_infers_the_sensor(tmp_path):
    root = _write_folder(tmp_path / "bars", 12, 0)
    data = load_event_folder(root, 4, progress=False)
    assert data.x.shape == (12, 4, 2, 8, 8) and data.x.dtype == np.float32
    assert sorted(data.y.tolist()) == [0] * 6 + [1] * 6
    labels = [0 if "left_to_right" in str(f) else 1 for f in sorted((root / "left_to_right").iterdir())]
    assert data.y[:6].tolist() == labels
    assert data.x[:, :, 0].sum() == 0  # only ON events were written
    assert load_event_folder(root, 4, sensor_size=(10, 12), progress=False).x.shape[-2:] == (10, 12)


def _snnc(*args):
    return subprocess.run([sys.executable, "-m", "snncompiler.cli", *map(str, args)], capture_output=True, text=True)


def test_bad_event_files_are_one_line_errors(tmp_path):
    (tmp_path / "cut.bin").write_bytes(b"\x01\x02\x03\x04\x05\x06")
    (tmp_path / "plain.aedat").write_bytes(b"not aedat")
    write_aedat3(tmp_path / "short.aedat", [(1, 0, [(1, 2, 3, 1), (5, 2, 3, 0)])])
    (tmp_path / "short.aedat").write_bytes((tmp_path / "short.aedat").read_bytes()[:-4])
    (tmp_path / "e.txt").write_text("x")
    write_aedat3(tmp_path / "odd.aedat", [(1, 0, [(1, 2, 3, 1), (5, 2, 3, 0)])])
    odd = bytearray((tmp_path / "odd.aedat").read_bytes())
    start = odd.index(b"#!END-HEADER") + len(b"#!END-HEADER\r\n")
    odd[start + 4 : start + 8] = struct.pack("<i", 6)  # eventSize 6: not whole 32-bit words
    (tmp_path / "odd.aedat").write_bytes(bytes(odd))
    for name, message in [
        ("cut.bin", "not a whole number of 5-byte"),
        ("plain.aedat", "not an AEDAT 3.1 file"),
        ("short.aedat", "truncated packet"),
        ("e.txt", "unknown event file type"),
        ("odd.aedat", "polarity events of 6 bytes"),
    ]:
        with pytest.raises(SnncError, match=message):
            read_events(tmp_path / name)
    ev = _stream(10, 40, 5)
    with pytest.raises(SnncError, match="do not fit the sensor size 34×34"):
        to_frames(ev, 2, (34, 34))
    bad = tmp_path / "data" / "a"
    bad.mkdir(parents=True)
    (bad / "x.bin").write_bytes(b"\x00" * 7)
    from snncompiler.data import save_npz

    save_npz(tmp_path / "d.npz", np.zeros((2, 3), np.float32), np.zeros(2, np.int64))
    for args, message in [
        (["--data", tmp_path / "data", "--frames", "4"], "x.bin: 7 bytes is not a whole number"),
        (["--data", tmp_path / "data"], "give --frames T"),
        (["--data", tmp_path / "d.npz", "--frames", "4"], "only for a directory of event"),
    ]:
        r = _snnc("eval", tmp_path / "model.onnx", *args)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_sequence_model_trained_on_recordings_evaluates_from_the_folder(tmp_path):
    import torch
    import torch.nn as nn

    import snncompiler as snnc
    from snncompiler.train import LIF

    train = load_event_folder(_write_folder(tmp_path / "train", 160, 1), 8, progress=False)
    _write_folder(tmp_path / "test", 40, 2)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(2 * 8 * 8, 32), LIF(), nn.Linear(32, 2))
    snnc.train.fit(net, train, sequence=True, epochs=15, lr=1e-2, progress=False)
    snnc.train.export(net.eval(), tmp_path / "bars.snn.onnx", input_shape=(2, 8, 8), sequence=True)
    r = _snnc("eval", tmp_path / "bars.snn.onnx", "--data", tmp_path / "test", "--frames", "8", "--json")
    assert r.returncode == 0, r.stderr
    import json

    res = json.loads(r.stdout)
    assert res["samples"] == 40
    assert res["snn_accuracy"]["8"] >= 0.9  # the direction is in the event order only:
    assert res["ann_accuracy"] <= 0.75  # the time-mean (the artifact's ANN mode) is near chance
    # a sequence artifact fine-tunes on its sequences (shorter ones: the first 4 frames)
    tuned = snnc.train.finetune(
        tmp_path / "bars.snn.onnx", train, timesteps=4, epochs=2, keep_if_better=False, progress=False
    )
    assert tuned.sequence and tuned.report["finetune"]["sequence"] and tuned.options["timesteps"] == 4


def test_folder_progress_bar_stays_off_a_pipe(tmp_path, capfd):
    """With progress on (the default) and stderr not a terminal, nothing is written: the bar went
    into pipes and log files."""
    root = _write_folder(tmp_path / "bars", 6, 0)
    assert len(load_event_folder(root, 4)) == 6
    assert capfd.readouterr().err == ""
