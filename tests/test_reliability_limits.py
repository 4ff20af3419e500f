"""Issue 14, items 6-11: damaged or oversized inputs are refused with one line and exit 2, before
anything big is allocated, and artifacts are read as strictly as the README says.

Every case runs ``snnc`` in-process (``cli.main``) and reads stderr at the file-descriptor level,
so onnxruntime's own C++ logger would be caught too. The untouched inputs run (exit 0): each
failure below comes from the one change the case makes.
"""

from __future__ import annotations

import copy
import io
import json
import struct
import zipfile

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

import snncompiler as snnc
from examples.workloads import DigitsCNN, export_onnx
from snncompiler.cli.main import main
from snncompiler.data import Dataset
from snncompiler.errors import SnncError


def _snnc(capfd, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    _, err = capfd.readouterr()
    return code, err


def assert_one_line(code: int, err: str, *needles: str) -> str:
    """Exit 2, exactly one stderr line, no traceback, no terminal colour codes; needles in it."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, (code, err)
    assert "Traceback" not in err and "\x1b[" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny digits CNN (ONNX), its artifact, and labelled inputs."""
    root = tmp_path_factory.mktemp("rel")
    torch.manual_seed(0)
    onnx_path = export_onnx(DigitsCNN(width=4), (1, 8, 8), root / "cnn.onnx")
    x = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    model = snnc.compile(onnx_path, Dataset(x), quiet=True, timesteps=4)
    model.save(root / "cnn.snn.onnx")
    data = root / "data.npz"
    np.savez(data, x=x, y=np.arange(16) % 10)
    return {"onnx": onnx_path, "artifact": root / "cnn.snn.onnx", "data": data, "x": x}


def test_the_untouched_inputs_run(files, capfd, tmp_path):
    assert _snnc(capfd, "eval", files["onnx"], "--data", files["data"])[0] == 0
    assert _snnc(capfd, "eval", files["artifact"], "--data", files["data"], "--timesteps", "2")[0] == 0


# ---- item 6: damaged or oversized .npz -----------------------------------------------------------
def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _zip_with(name: str, payload: bytes, compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        z.writestr(name, payload)
    return buf.getvalue()


def _npy_with_header(header: dict, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def _bad_deflate() -> bytes:
    raw = bytearray(
        _zip_with(
            "x.npy",
            _npy_with_header({"descr": "<f4", "fortran_order": False, "shape": (64, 4)}, bytes(1024)),
            zipfile.ZIP_DEFLATED,
        )
    )
    start = 30 + len("x.npy")  # local header + name: the deflate stream begins here
    raw[start : start + 8] = b"\xff" * 8
    return bytes(raw)


def _unknown_method() -> bytes:
    raw = bytearray(_npz_bytes(x=np.ones((4, 4), np.float32)))
    struct.pack_into("<H", raw, 8, 99)  # local header's compression method
    cd = raw.rfind(b"PK\x01\x02")
    struct.pack_into("<H", raw, cd + 10, 99)  # and the central directory's
    return bytes(raw)


NPZ_CASES = {
    "bad deflate data": (_bad_deflate, ["--data"]),
    "unknown compression method": (_unknown_method, ["compression"]),
    "bad npy header": (lambda: _zip_with("x.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': <<<<<  }\n"), ["--data"]),
    "header claims a huge shape": (
        lambda: _zip_with(
            "x.npy", _npy_with_header({"descr": "<f4", "fortran_order": False, "shape": (10**12, 4)}, bytes(64))
        ),
        ["shape [1000000000000, 4]", "SNNC_MAX_ARRAY_BYTES"],
    ),
    "header shape overflowing int64": (
        lambda: _zip_with(
            "x.npy", _npy_with_header({"descr": "<f4", "fortran_order": False, "shape": (2**62, 2**62)}, bytes(64))
        ),
        ["SNNC_MAX_ARRAY_BYTES"],
    ),
    "truncated data": (
        lambda: _zip_with(
            "x.npy", _npy_with_header({"descr": "<f4", "fortran_order": False, "shape": (64, 4)}, bytes(100))
        ),
        ["truncated"],
    ),
    "object array": (
        lambda: _zip_with("x.npy", _npy_with_header({"descr": "|O", "fortran_order": False, "shape": (2,)}, bytes(16))),
        ["object arrays are refused"],
    ),
}


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_damaged_npz_is_one_line(case, files, tmp_path, capfd):
    make, needles = NPZ_CASES[case]
    bad = tmp_path / "bad.npz"
    bad.write_bytes(make())
    code, err = _snnc(capfd, "eval", files["onnx"], "--data", bad)
    assert_one_line(code, err, "bad.npz", *needles)


def test_zip_bomb_is_refused_before_decompression(files, tmp_path, capfd, monkeypatch):
    """An 8 MiB array of zeros deflates to a few kB; under a 1 MiB limit it is refused from the
    zip directory's uncompressed size, before a byte is inflated."""
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, x=np.zeros((2**21, 1), np.float32))
    assert bomb.stat().st_size < 64 * 1024
    monkeypatch.setenv("SNNC_MAX_ARRAY_BYTES", str(1 << 20))
    code, err = _snnc(capfd, "eval", files["onnx"], "--data", bomb)
    assert_one_line(code, err, "bomb.npz", "uncompressed size", "SNNC_MAX_ARRAY_BYTES")
    monkeypatch.setenv("SNNC_MAX_ARRAY_BYTES", str(1 << 24))  # raised: read (and then refused for 'y')
    code, err = _snnc(capfd, "eval", files["onnx"], "--data", bomb)
    assert_one_line(code, err, "labels 'y' are required")


def test_npz_reader_reads_fortran_order_and_big_endian(tmp_path):
    from snncompiler.data import read_npz

    x = np.asfortranarray(np.arange(24, dtype=">f4").reshape(2, 3, 4))
    np.savez_compressed(tmp_path / "f.npz", x=x)
    got = read_npz(tmp_path / "f.npz", "f", required=("x",))["x"]
    np.testing.assert_array_equal(got, x)
    got[0, 0, 0] = 1.0  # writable, as np.load's arrays are


# ---- item 7: onnxruntime cannot run the model ---------------------------------------------------
def _set_node_attr(model: onnx.ModelProto, op: str, name: str, value: int) -> None:
    node = next(n for n in model.graph.node if n.op_type == op)
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(name, value)])


@pytest.mark.parametrize("op,attr,value", [("Conv", "group", 99), ("Flatten", "axis", 2**40)])
def test_onnxruntime_failure_is_one_line_without_its_log(op, attr, value, files, tmp_path, capfd):
    model = onnx.load(files["onnx"])
    _set_node_attr(model, op, attr, value)
    path = tmp_path / "broken.onnx"
    onnx.save(model, path)
    code, err = _snnc(capfd, "eval", path, "--data", files["data"])
    assert_one_line(code, err, "broken.onnx", "onnxruntime")


# ---- item 8: T from a file is bounded -------------------------------------------------------------
def _with_meta(files, tmp_path, key, value, name="edited.snn.onnx"):
    proto = onnx.load(files["artifact"])
    props = {p.key: p for p in proto.metadata_props}
    if value is None:
        proto.metadata_props.remove(props[key])
    else:
        props[key].value = value
    path = tmp_path / name
    onnx.save(proto, path)
    return path


def test_artifact_timesteps_above_the_limit_are_refused(files, tmp_path, capfd, monkeypatch):
    settings = json.loads({p.key: p.value for p in onnx.load(files["artifact"]).metadata_props}["snncompiler.settings"])
    path = _with_meta(files, tmp_path, "snncompiler.settings", json.dumps({**settings, "timesteps": 10**12}))
    code, err = _snnc(capfd, "run", path, "--input", files["data"], "-o", tmp_path / "y.npz")
    assert_one_line(code, err, "edited.snn.onnx", "'timesteps'", "SNNC_MAX_TIMESTEPS")
    path = _with_meta(files, tmp_path, "snncompiler.timesteps", str(10**12), name="t.snn.onnx")
    code, err = _snnc(capfd, "run", path, "--input", files["data"], "-o", tmp_path / "y.npz")
    assert_one_line(code, err, "t.snn.onnx", "snncompiler.timesteps", "SNNC_MAX_TIMESTEPS")
    monkeypatch.setenv("SNNC_MAX_TIMESTEPS", "4")  # the artifact's own T=4 fits; the limit holds for --timesteps
    code, err = _snnc(
        capfd, "run", files["artifact"], "--input", files["data"], "-o", tmp_path / "y.npz", "--timesteps", "5"
    )
    assert_one_line(code, err, "--timesteps", "over the limit of 4")
    assert _snnc(capfd, "run", files["artifact"], "--input", files["data"], "-o", tmp_path / "y.npz")[0] == 0
    monkeypatch.setenv("SNNC_MAX_TIMESTEPS", "3")  # below the file's T: the file is refused
    code, err = _snnc(capfd, "run", files["artifact"], "--input", files["data"], "-o", tmp_path / "y.npz")
    assert_one_line(code, err, "cnn.snn.onnx", "SNNC_MAX_TIMESTEPS")


def test_nir_metadata_timesteps_above_the_limit_are_refused(tmp_path, capfd):
    nir = pytest.importorskip("nir")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3))
    path = export_onnx(net, (1, 8, 8), tmp_path / "mlp.onnx")
    x = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    snnc.compile(path, Dataset(x), quiet=True, timesteps=4).save_nir(tmp_path / "m.nir")
    graph = nir.read(str(tmp_path / "m.nir"))
    graph.metadata["timesteps"] = 10**12
    nir.write(str(tmp_path / "huge.nir"), graph)
    np.savez(tmp_path / "x.npz", x=x)
    code, err = _snnc(capfd, "run", tmp_path / "huge.nir", "--input", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    assert_one_line(code, err, "huge.nir", "metadata 'timesteps'", "SNNC_MAX_TIMESTEPS")


# ---- item 9: a flipped byte in metadata --------------------------------------------------------
def test_flipped_byte_in_metadata_names_the_key(files, tmp_path, capfd):
    raw = bytearray(files["artifact"].read_bytes())
    at = raw.find(b'"threshold"')
    raw[at + 3] = 0xFF  # no longer UTF-8
    path = tmp_path / "flipped.snn.onnx"
    path.write_bytes(bytes(raw))
    code, err = _snnc(capfd, "eval", path, "--data", files["data"], "--timesteps", "2")
    assert_one_line(code, err, "flipped.snn.onnx", "metadata 'snncompiler.settings'", "UTF-8")


# ---- item 10: tiny inputs asking for huge allocations ---------------------------------------------
def _event_folder(tmp_path, name, write):
    folder = tmp_path / name / "cls"
    folder.mkdir(parents=True)
    write(folder)
    return tmp_path / name


def test_event_coordinates_beyond_the_sensor_limit(files, tmp_path, capfd):
    def aedat(folder):
        out = b"#!AER-DAT3.1\r\n#!END-HEADER\r\n" + struct.pack("<hhiiiiii", 1, 1, 8, 4, 0, 1, 1, 1)
        out += struct.pack("<Ii", (32767 << 17) | (32767 << 2) | (1 << 1) | 1, 5)  # one event at (32767, 32767)
        (folder / "a.aedat").write_bytes(out)

    def npz(folder):
        np.savez(
            folder / "e.npz", t=np.array([0, 1]), x=np.array([0, 2**31]), y=np.array([0, 2**31]), p=np.array([1, 0])
        )

    for name, write in (("aedat", aedat), ("npz", npz)):
        root = _event_folder(tmp_path, name, write)
        code, err = _snnc(capfd, "eval", files["artifact"], "--data", root, "--frames", "4")
        assert_one_line(code, err, str(root), "sensor size", "SNNC_MAX_SENSOR_SIZE")


def test_calibration_memory_is_estimated_before_running(files, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("SNNC_MAX_CALIB_BYTES", str(1 << 20))
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=files["x"])
    code, err = _snnc(
        capfd,
        "compile",
        files["onnx"],
        "--calib",
        calib,
        "-o",
        tmp_path / "o.snn.onnx",
        "--calibration",
        "light",
        "--timesteps",
        "4096",
    )
    assert_one_line(code, err, "--calib-samples", "--timesteps", "SNNC_MAX_CALIB_BYTES")
    assert not (tmp_path / "o.snn.onnx").exists()


def test_constant_expand_is_capped_before_folding(tmp_path, capfd):
    nodes = [
        helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.array([1.0], np.float32))),
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([20000, 20000], np.int64))),
        helper.make_node("Expand", ["one", "shape"], ["big"], name="big_expand"),
        helper.make_node("ReduceMax", ["big"], ["m"], keepdims=0),
        helper.make_node("Mul", ["x", "m"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "expand.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    assert path.stat().st_size < 9000
    code, err = _snnc(capfd, "inspect", path)
    assert_one_line(code, err, "expand.onnx", "big_expand", "SNNC_MAX_CONSTANT_BYTES")


# ---- item 11: artifacts read as strictly as documented --------------------------------------------
def _edited(files, tmp_path, change):
    proto = copy.deepcopy(onnx.load(files["artifact"]))
    change(proto)
    path = tmp_path / "strict.snn.onnx"
    onnx.save(proto, path)
    return path


def _settings(proto):
    return next(p for p in proto.metadata_props if p.key == "snncompiler.settings")


def _add_setting(proto):
    _settings(proto).value = json.dumps({**json.loads(_settings(proto).value), "turbo": True})


def _drop_version(proto):
    proto.metadata_props.remove(next(p for p in proto.metadata_props if p.key == "snncompiler.artifact"))


def _neuron_attr(proto):
    next(n for n in proto.graph.node if n.op_type == "Neuron").attribute.append(helper.make_attribute("gain", 2.0))


def _nan_conv_bias(proto):
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    tensor = next(t for t in proto.graph.initializer if t.name == conv.input[2])
    value = numpy_helper.to_array(tensor).copy()
    value[0] = np.nan
    tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))


STRICT_CASES = {
    "unknown settings key": (_add_setting, ["'turbo'", "snncompiler.settings"]),
    "missing format version": (_drop_version, ["'snncompiler.artifact'", "missing"]),
    "unknown Neuron attribute": (_neuron_attr, ["Neuron", "'gain'"]),
    "NaN conv bias": (_nan_conv_bias, ["parameter 'bias'", "non-finite"]),
}


@pytest.mark.parametrize("case", list(STRICT_CASES))
def test_artifact_read_strictly(case, files, tmp_path, capfd):
    change, needles = STRICT_CASES[case]
    path = _edited(files, tmp_path, change)
    code, err = _snnc(capfd, "eval", path, "--data", files["data"], "--timesteps", "2")
    assert_one_line(code, err, "strict.snn.onnx", *needles)


def test_opset_above_the_supported_range_is_refused(files, tmp_path, capfd):
    model = onnx.load(files["onnx"])
    next(o for o in model.opset_import if o.domain in ("", "ai.onnx")).version = 99
    path = tmp_path / "opset99.onnx"
    onnx.save(model, path)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=files["x"])
    code, err = _snnc(capfd, "compile", path, "--calib", calib, "-o", tmp_path / "o.snn.onnx")
    assert_one_line(code, err, "opset99.onnx", "opset 99")


# ---- the limits themselves ------------------------------------------------------------------------
def test_limits_read_the_environment(monkeypatch):
    from snncompiler import limits

    assert limits.limit("SNNC_MAX_TIMESTEPS") == limits.DEFAULTS["SNNC_MAX_TIMESTEPS"]
    monkeypatch.setenv("SNNC_MAX_ARRAY_BYTES", "4e9")
    assert limits.limit("SNNC_MAX_ARRAY_BYTES") == 4_000_000_000
    for bad in ("0", "-3", "lots", "1.5", "inf"):
        monkeypatch.setenv("SNNC_MAX_ARRAY_BYTES", bad)
        with pytest.raises(SnncError, match="SNNC_MAX_ARRAY_BYTES"):
            limits.check_array_bytes(1, "x")


def test_input_declared_too_large_is_refused_before_allocation(tmp_path, capfd):
    """The fuzz suite's dims edit: a static input of 2^31 × 64 floats (512 GiB) made the shape
    probe ask torch for it; the declared size is checked against SNNC_MAX_ARRAY_BYTES first."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2**31 - 1, 1, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2**31 - 1, 1, 8, 8])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    path = tmp_path / "huge.onnx"
    path.write_bytes(model.SerializeToString())
    code, err = _snnc(capfd, "inspect", path)
    assert_one_line(code, err, "huge.onnx", "input 'x'", "SNNC_MAX_ARRAY_BYTES")
