"""Nothing lost, nothing read that should not be (issue 14, part A): atomic outputs that survive a
SIGKILL mid-write, output checks against every input (the name really written, same inode,
non-regular targets), ONNX external data confined to the model's folder, HDF5 (.nir) files that
reach other files refused, one stderr line on exit 2, --plot checked before work, and
byte-identical outputs of identical runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

import snncompiler as snnc
from examples.workloads import export_onnx
from snncompiler.cli.main import main
from snncompiler.data import save_npz
from snncompiler.errors import SnncError
from snncompiler.fileio import atomic_write, resolve_output


def _snnc(*args, timeout=300, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "snncompiler.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def _one_line_error(rc, err, *needles):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (rc, err)
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small ANN (16 → 12 → 3), labelled data for it, and its compiled artifact (T=4)."""
    root = tmp_path_factory.mktemp("io")
    torch.manual_seed(0)
    export_onnx(nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)), (16,), root / "ann.onnx")
    x = np.random.default_rng(0).random((96, 16), dtype=np.float32)
    save_npz(root / "data.npz", x, x[:, :3].argmax(1))
    save_npz(root / "val.npz", x[:32], x[:32, :3].argmax(1))
    model = snnc.compile(str(root / "ann.onnx"), x, timesteps=4, quiet=True)
    model.save(root / "m.snn.onnx")
    return root


# ---- 1. atomic writes ----------------------------------------------------------------------------
def test_atomic_write_leaves_the_old_file_and_no_temporary_file_on_an_exception(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="stop"):
        with atomic_write(target) as handle:
            handle.write(b"half of the new")
            raise RuntimeError("stop")
    assert target.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["out.bin"]
    with atomic_write(target) as handle:
        handle.write(b"new")
    assert target.read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["out.bin"]
    with pytest.raises(SnncError, match=r"-o .*missing.*: cannot write") as info:
        with atomic_write(tmp_path / "missing" / "x.bin", flag="-o") as handle:
            handle.write(b"x")
    assert "\n" not in str(info.value)


# A child that writes every file it opens for writing under the test folder in 64-byte pieces,
# 20 ms apart (creating a marker at the first piece), then runs `snnc ARGS`: whatever the command
# writes with (onnx, numpy, h5py through our helper), the write is slow enough to be killed midway.
SLOW_WRITER = r"""
import builtins, io, os, sys, time
marker, folder = sys.argv[1], os.path.realpath(sys.argv[2])
real_open, real_fdopen = builtins.open, os.fdopen

class Slow:
    def __init__(self, handle):
        self._handle = handle
    def write(self, data):
        data = bytes(data)
        for start in range(0, len(data), 64):
            self._handle.write(data[start:start + 64])
            self._handle.flush()
            if not os.path.exists(marker):
                real_open(marker, "w").close()
            time.sleep(0.02)
        return len(data)
    def __getattr__(self, name):
        return getattr(self._handle, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)

def ours(path, mode):
    return "w" in str(mode) and os.path.realpath(str(path)).startswith(folder + os.sep)

def slow_open(file, mode="r", *args, **kwargs):
    handle = real_open(file, mode, *args, **kwargs)
    return Slow(handle) if isinstance(file, (str, os.PathLike)) and ours(file, mode) else handle

def slow_fdopen(fd, mode="r", *args, **kwargs):
    handle = real_fdopen(fd, mode, *args, **kwargs)
    return Slow(handle) if ours(os.readlink(f"/proc/self/fd/{fd}"), mode) else handle

builtins.open = io.open = slow_open
os.fdopen = slow_fdopen
from snncompiler.cli.main import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("command", ["compile", "run", "export"])
def test_a_writer_killed_mid_write_leaves_the_old_file_intact(files, tmp_path, command):
    out = tmp_path / "work"
    out.mkdir()
    target = out / {"compile": "m.snn.onnx", "run": "y.npz", "export": "m.nir"}[command]
    old = snnc.compile(str(files / "ann.onnx"), np.load(files / "data.npz")["x"], timesteps=2, quiet=True)
    if command == "compile":
        old.save(target)
        argv = ["compile", files / "ann.onnx", "--calib", files / "data.npz", "-o", target, "--timesteps", "8"]
    elif command == "run":
        save_npz(target, np.ones((3, 2), np.float32))
        argv = ["run", files / "m.snn.onnx", "--input", files / "data.npz", "-o", target]
    else:
        old.save_nir(target)
        argv = ["export", files / "m.snn.onnx", "-o", target]
    before = target.read_bytes()
    marker = tmp_path / "writing"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(marker), str(out), *map(str, argv)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the writer ended (exit {proc.returncode}) before writing: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the writer never started writing")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert target.read_bytes() == before  # the old file, byte for byte
    if command == "run":
        assert np.load(target)["x"].shape == (3, 2)
    else:
        assert snnc.load(target).options["timesteps"] == 2
    # the kill did land mid-write: the new bytes were going to a temporary sibling, left unfinished
    partial = [p for p in out.iterdir() if p != target]
    assert len(partial) == 1 and partial[0].name.startswith(f".{target.name}.") and partial[0].stat().st_size > 0


# ---- 2, 3. output checks against every input ----------------------------------------------------
def test_run_checks_the_name_numpy_writes(files, tmp_path, capsys):
    data = tmp_path / "data.npz"
    data.write_bytes((files / "data.npz").read_bytes())
    before = data.read_bytes()
    rc = main(["run", str(files / "m.snn.onnx"), "--input", str(data), "-o", str(tmp_path / "data")])
    _one_line_error(rc, capsys.readouterr().err, f"{tmp_path / 'data.npz'}", "is the input")
    assert data.read_bytes() == before
    rc = main(["run", str(files / "m.snn.onnx"), "--input", str(data), "-o", str(tmp_path / "result")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"wrote {tmp_path / 'result.npz'}:" in captured.out  # the file really written
    assert np.load(tmp_path / "result.npz")["y"].shape == (96, 3) and not (tmp_path / "result").exists()


def test_run_refuses_a_device_as_output(files, tmp_path, capsys):
    rc = main(["run", str(files / "m.snn.onnx"), "--input", str(files / "data.npz"), "-o", "/dev/full"])
    _one_line_error(rc, capsys.readouterr().err, "-o /dev/full", "not a regular file")
    assert not os.path.exists("/dev/full.npz")


def _cases(files, tmp_path):
    """(argv, the output that is also an input) for every input of every writing command."""
    ft = ["finetune", files / "m.snn.onnx", "--data", files / "data.npz", "--epochs", "1", "--timesteps", "2"]
    plot = ["eval", files / "m.snn.onnx", "--data", files / "data.npz", "--timesteps", "2"]
    return {
        "compile model": (["compile", files / "ann.onnx", "--calib", files / "data.npz", "-o", files / "ann.onnx"]),
        "compile --calib": (["compile", files / "ann.onnx", "--calib", files / "data.npz", "-o", files / "data.npz"]),
        "run --input": (["run", files / "m.snn.onnx", "--input", files / "data.npz", "-o", files / "data.npz"]),
        "run model": (["run", tmp_path / "model.npz", "--input", files / "data.npz", "-o", tmp_path / "model"]),
        "finetune model": ft + ["-o", files / "m.snn.onnx"],
        "finetune --data": ft + ["-o", files / "data.npz"],
        "finetune --val": ft + ["--val", files / "val.npz", "-o", files / "val.npz"],
        "finetune --val hard link": ft + ["--val", files / "val.npz", "-o", tmp_path / "val_link.npz"],
        "export model": ["export", files / "m.snn.onnx", "--format", "onnx", "-o", files / "m.snn.onnx"],
        "eval --plot --data": plot + ["--plot", tmp_path / "data_link.png"],
        "eval --plot --reference": plot
        + ["--layers", "--reference", files / "ann.onnx", "--plot", tmp_path / "ann_link.png"],
        "report model": ["report", files / "m.snn.onnx", "--data", files / "data.npz", "-o", files / "m.snn.onnx"],
        "report --data": [
            "report",
            files / "m.snn.onnx",
            "--data",
            files / "data.npz",
            "-o",
            tmp_path / "data_link.png",
        ],
    }


@pytest.mark.parametrize(
    "case",
    [
        "compile model",
        "compile --calib",
        "run --input",
        "run model",
        "finetune model",
        "finetune --data",
        "finetune --val",
        "finetune --val hard link",
        "export model",
        "eval --plot --data",
        "eval --plot --reference",
        "report model",
        "report --data",
    ],
)
def test_no_command_writes_over_one_of_its_inputs(files, tmp_path, capsys, case):
    os.link(files / "val.npz", tmp_path / "val_link.npz")  # the same file under another name
    os.link(files / "data.npz", tmp_path / "data_link.png")
    os.link(files / "ann.onnx", tmp_path / "ann_link.png")
    os.link(files / "m.snn.onnx", tmp_path / "model.npz")  # numpy would write `-o model` there
    argv = _cases(files, tmp_path)[case]
    before = {p: p.read_bytes() for p in files.iterdir()}
    rc = main([str(a) for a in argv])
    _one_line_error(rc, capsys.readouterr().err, "is the input")
    assert {p: p.read_bytes() for p in files.iterdir()} == before


def test_resolve_output_names_the_real_file_and_refuses_non_regular_targets(tmp_path):
    (tmp_path / "a.npz").write_bytes(b"x")
    assert resolve_output(tmp_path / "b", "-o", suffix=".npz") == f"{tmp_path / 'b'}.npz"
    with pytest.raises(SnncError, match="is the input"):
        resolve_output(tmp_path / "a", "-o", [tmp_path / "a.npz"], suffix=".npz")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(SnncError, match="not a regular file"):
        resolve_output(tmp_path / "fifo", "-o")


def test_output_on_a_fifo_is_refused_without_blocking(files, tmp_path):
    fifo = tmp_path / "out.snn.onnx"
    os.mkfifo(fifo)
    # before the fix the command compiled, then blocked forever opening the FIFO for writing
    r = _snnc("compile", files / "ann.onnx", "--calib", files / "data.npz", "-o", fifo, timeout=240)
    _one_line_error(r.returncode, r.stderr, str(fifo), "not a regular file")


# ---- 4. ONNX external data -------------------------------------------------------------------------
def _external_model(path, location: str, weight: np.ndarray):
    """A MatMul model x @ W whose W is stored externally at ``location`` (as written by onnx)."""
    tensor = numpy_helper.from_array(weight, "W")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", weight.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", weight.shape[1]])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g", [x], [y], [tensor])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    return path


WEIGHT = np.arange(12, dtype=np.float32).reshape(4, 3)


def test_external_data_is_read_next_to_the_model_from_any_folder(tmp_path, monkeypatch):
    from snncompiler.formats.onnx.ort import OrtModel

    (tmp_path / "models").mkdir()
    (tmp_path / "elsewhere").mkdir()
    model = _external_model(tmp_path / "models" / "m.onnx", "w.bin", WEIGHT)
    (tmp_path / "models" / "w.bin").write_bytes(WEIGHT.tobytes())
    (tmp_path / "elsewhere" / "w.bin").write_bytes((-WEIGHT).tobytes())  # a decoy where the user stands
    monkeypatch.chdir(tmp_path / "elsewhere")
    x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    np.testing.assert_allclose(snnc.load(os.path.relpath(model))(x), x @ WEIGHT, rtol=1e-6)
    np.testing.assert_allclose(OrtModel(model)(x), x @ WEIGHT, rtol=1e-6)  # onnxruntime's input too


def test_a_file_named_like_the_location_in_the_current_folder_is_never_read(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    model = _external_model(tmp_path / "models" / "m.onnx", "secret.bin", WEIGHT)
    (tmp_path / "secret.bin").write_bytes(WEIGHT.tobytes())  # fits the tensor exactly, but is not the model's
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SnncError, match=r"models/m.onnx: tensor 'W', external data file 'secret.bin': no such file"):
        snnc.load_graph(model)


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_external_data_may_not_leave_the_model_folder(tmp_path, how, capsys):
    (tmp_path / "models").mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(WEIGHT.tobytes())
    location = {"dotdot": "../secret.bin", "absolute": str(secret), "symlink": "link.bin"}[how]
    if how == "symlink":
        os.symlink(secret, tmp_path / "models" / "link.bin")
    model = _external_model(tmp_path / "models" / "m.onnx", location, WEIGHT)
    message = {
        "dotdot": "leaves the model's folder",
        "absolute": "an absolute path",
        "symlink": "a symbolic link that leads out of the model's folder",
    }[how]
    with pytest.raises(SnncError, match=message) as info:
        snnc.load_graph(model)
    assert f"tensor 'W', external data file '{location}'" in str(info.value) and "\n" not in str(info.value)
    data = tmp_path / "d.npz"
    save_npz(data, np.ones((2, 4), np.float32), np.zeros(2, np.int64))
    _one_line_error(main(["eval", str(model), "--data", str(data)]), capsys.readouterr().err, message)


def test_external_data_inside_the_folder_through_a_link_and_with_offsets(tmp_path):
    (tmp_path / "models" / "weights").mkdir(parents=True)
    (tmp_path / "models" / "weights" / "all.bin").write_bytes(b"\0" * 8 + WEIGHT.tobytes())
    os.symlink("weights/all.bin", tmp_path / "models" / "link.bin")  # a link that stays inside is fine
    model = _external_model(tmp_path / "models" / "m.onnx", "link.bin", WEIGHT)
    proto = onnx.load(str(model), load_external_data=False)
    proto.graph.initializer[0].external_data.add(key="offset", value="8")
    onnx.save(proto, str(model))
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(snnc.load(model)(x), x @ WEIGHT)
    proto.graph.initializer[0].external_data.add(key="length", value="40")
    onnx.save(proto, str(model))
    with pytest.raises(SnncError, match=r"holds 40 bytes, the tensor's shape \[4, 3\] needs 48"):
        snnc.load_graph(model)
    with pytest.raises(SnncError, match="must be read from its file"):
        snnc.load_graph(model.read_bytes())


# ---- 5. HDF5 files that reach other files ---------------------------------------------------------
def _nir_with(files, tmp_path, how: str):
    """The artifact exported to NIR, with the first layer's bias replaced by one that reads another file."""
    import h5py

    path = tmp_path / f"{how}.nir"
    snnc.load(files / "m.snn.onnx").save_nir(path)
    if how == "plain":
        return path
    with h5py.File(path, "r+") as f:
        name = next(k for k in f["node/nodes"] if "bias" in f["node/nodes"][k])
        bias = f[f"node/nodes/{name}/bias"][()]
        del f[f"node/nodes/{name}/bias"]
        other = tmp_path / "passwd"  # stands for /etc/passwd: any file the user can read
        other.write_bytes(bias.tobytes())
        if how == "external storage":
            f.create_dataset(
                f"node/nodes/{name}/bias", shape=bias.shape, dtype=bias.dtype, external=[(str(other), 0, bias.nbytes)]
            )
        else:
            with h5py.File(tmp_path / "other.h5", "w") as g:
                g["bias"] = bias
            if how == "external link":
                f[f"node/nodes/{name}/bias"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/bias")
            else:
                layout = h5py.VirtualLayout(shape=bias.shape, dtype=bias.dtype)
                layout[:] = h5py.VirtualSource(str(tmp_path / "other.h5"), "bias", shape=bias.shape)
                f.create_virtual_dataset(f"node/nodes/{name}/bias", layout)
    return path, f"/node/nodes/{name}/bias"


@pytest.mark.parametrize(
    "how, message",
    [
        ("external storage", "keeps its data in external file"),
        ("external link", "is an external link into the file"),
        ("virtual dataset", "is a virtual dataset reading"),
    ],
)
def test_nir_files_that_read_other_files_are_refused(files, tmp_path, capsys, how, message):
    assert snnc.load(_nir_with(files, tmp_path, "plain")).options["timesteps"] == 4  # the file as exported loads
    path, dataset = _nir_with(files, tmp_path, how)
    with pytest.raises(SnncError, match=message) as info:
        snnc.load(path)
    assert f"'{dataset}'" in str(info.value) and str(path) in str(info.value)
    _one_line_error(main(["eval", str(path), "--data", str(files / "data.npz")]), capsys.readouterr().err, dataset)


# ---- 13. one stderr line, --plot checked first, reproducible outputs --------------------------------
def test_a_warning_ahead_of_an_error_is_not_printed(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 99)],
    )  # the version converter warns
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 3), np.float32))
    r = _snnc("run", tmp_path / "m.onnx", "--input", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    _one_line_error(r.returncode, r.stderr)


def test_warnings_are_printed_when_the_command_succeeds_only(monkeypatch, capsys):
    import importlib
    import logging

    cli = importlib.import_module("snncompiler.cli.main")  # the module (the package's `main` is the function)

    def warn_then(fail):
        def command(args):
            logging.getLogger("snncompiler.somewhere").warning("a lossy step")
            if fail:
                raise SnncError("the input is bad")
            print("done")
            return 0

        return command

    monkeypatch.setattr(cli, "cmd_env", warn_then(True))
    assert main(["env"]) == 2
    assert capsys.readouterr().err == "snnc: error: the input is bad\n"
    monkeypatch.setattr(cli, "cmd_env", warn_then(False))
    assert main(["env"]) == 0
    assert capsys.readouterr().err == "snnc: WARNING: a lossy step\n"


def test_plot_format_is_checked_before_the_evaluation(files, tmp_path, monkeypatch, capsys):
    from snncompiler.model import CompiledModel

    def evaluate(*args, **kwargs):
        raise AssertionError("the evaluation started")

    monkeypatch.setattr(CompiledModel, "evaluate", evaluate)
    rc = main(
        ["eval", str(files / "m.snn.onnx"), "--data", str(files / "data.npz"), "--plot", str(tmp_path / "acc.onnx")]
    )
    _one_line_error(rc, capsys.readouterr().err, "--plot", "acc.onnx", ".png")
    monkeypatch.undo()
    rc = main(
        [
            "eval",
            str(files / "m.snn.onnx"),
            "--data",
            str(files / "data.npz"),
            "--timesteps",
            "1,2",
            "--plot",
            str(tmp_path / "acc.svg"),
        ]
    )
    assert rc == 0 and (tmp_path / "acc.svg").read_bytes().lstrip().startswith(b"<?xml")


def test_compile_finetune_and_export_write_the_same_bytes_twice(files, tmp_path):
    for k in (1, 2):
        assert (
            main(
                [
                    "compile",
                    str(files / "ann.onnx"),
                    "--calib",
                    str(files / "data.npz"),
                    "--timesteps",
                    "4",
                    "--calibration",
                    "light",
                    "-o",
                    str(tmp_path / f"c{k}.snn.onnx"),
                ]
            )
            == 0
        )
        r = _snnc(
            "finetune",
            files / "m.snn.onnx",
            "--data",
            files / "data.npz",
            "--epochs",
            "2",
            "--timesteps",
            "2",
            "--keep-always",
            "-o",
            tmp_path / f"ft{k}.snn.onnx",
        )
        assert r.returncode == 0, r.stderr
        assert main(["export", str(files / "m.snn.onnx"), "-o", str(tmp_path / f"m{k}.nir")]) == 0
    assert (tmp_path / "c1.snn.onnx").read_bytes() == (tmp_path / "c2.snn.onnx").read_bytes()
    assert (tmp_path / "ft1.snn.onnx").read_bytes() == (tmp_path / "ft2.snn.onnx").read_bytes()
    assert (tmp_path / "m1.nir").read_bytes() == (tmp_path / "m2.nir").read_bytes()
    assert snnc.load(tmp_path / "ft1.snn.onnx").report["finetune"]["epochs"] == 2


# ---- 5. what the audit of 2026-12-07 found -------------------------------------------------------
def test_api_save_refuses_what_the_cli_refuses(files, tmp_path):
    """CompiledModel.save / save_onnx / save_nir wrote over FIFOs (and, run as root, over
    /dev/null itself) and over the model they were compiled from; they check as -o does now."""
    model = snnc.load(files / "m.snn.onnx")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for save in (model.save, model.save_onnx):
        with pytest.raises(SnncError, match="not a regular file"):
            save(fifo)
    assert fifo.is_fifo()
    copy = tmp_path / "ann.onnx"
    copy.write_bytes((files / "ann.onnx").read_bytes())
    compiled = snnc.compile(str(copy), np.random.default_rng(0).random((8, 16), dtype=np.float32), quiet=True)
    with pytest.raises(SnncError, match="is the input"):
        compiled.save(copy)
    assert copy.read_bytes() == (files / "ann.onnx").read_bytes()
    compiled.save(tmp_path / "new.snn.onnx")  # a new name is fine


def test_atomic_write_never_replaces_a_device_or_fifo(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(SnncError, match="not a regular file"):
        with atomic_write(fifo) as handle:
            handle.write(b"x")
    assert fifo.is_fifo()


@pytest.mark.parametrize("command", ["inspect", "eval", "compile"])
def test_a_fifo_or_device_as_input_is_refused_without_blocking(files, tmp_path, command):
    """A FIFO as the model or data file blocked forever; /dev/zero was read until memory ran out."""
    fifo = tmp_path / "in.onnx"
    os.mkfifo(fifo)
    data_fifo = tmp_path / "in.npz"
    os.mkfifo(data_fifo)
    args = {
        "inspect": [fifo],
        "eval": [files / "ann.onnx", "--data", data_fifo],
        "compile": [files / "ann.onnx", "--calib", data_fifo, "-o", tmp_path / "o.snn.onnx"],
    }[command]
    r = _snnc(command, *args, timeout=120)
    _one_line_error(r.returncode, r.stderr, "not a regular file")
    r = _snnc("inspect", "/dev/zero", timeout=120)
    _one_line_error(r.returncode, r.stderr, "/dev/zero", "not a regular file")


def test_output_onto_the_models_external_data_is_refused(files, tmp_path, capsys):
    """-o naming the file that holds the input's weights overwrote them (the model then ran on garbage)."""
    model = _external_model(tmp_path / "m.onnx", "w.bin", WEIGHT)
    (tmp_path / "w.bin").write_bytes(WEIGHT.tobytes())
    x = np.random.default_rng(0).random((8, 4), dtype=np.float32)
    save_npz(tmp_path / "calib.npz", x)
    rc = main(["compile", str(model), "--calib", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "w.bin")])
    _one_line_error(rc, capsys.readouterr().err, "is the input")
    assert (tmp_path / "w.bin").read_bytes() == WEIGHT.tobytes()


def test_output_inside_an_input_folder_is_refused(tmp_path):
    (tmp_path / "events" / "0").mkdir(parents=True)
    with pytest.raises(SnncError, match="inside the input folder"):
        resolve_output(tmp_path / "events" / "0" / "s0.npz", "-o", [tmp_path / "events"], suffix=".npz")
    resolve_output(tmp_path / "out.npz", "-o", [tmp_path / "events"], suffix=".npz")
