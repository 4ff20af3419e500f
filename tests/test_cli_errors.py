"""Every bad-input case: exit status 2, exactly one line on stderr, no traceback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from examples.workloads import DigitsCNN, export_onnx


def snnc(*args):
    proc = subprocess.run([sys.executable, "-m", "snncompiler.cli", *map(str, args)], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line_error(rc, err, *needles):
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    return export_onnx(DigitsCNN(width=4), (1, 8, 8), tmp_path_factory.mktemp("m") / "cnn.onnx")


def test_truncated_onnx(model_path, tmp_path):
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(model_path.read_bytes()[:200])
    rc, _, err = snnc("inspect", bad)
    assert_one_line_error(rc, err, "truncated.onnx")


def test_not_onnx(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model\n" * 10)
    rc, _, err = snnc("eval", bad, "--data", tmp_path / "missing.npz")
    assert rc == 2  # data is checked first or the model: either way one line naming a file
    assert_one_line_error(rc, err)


def test_missing_file(tmp_path):
    rc, _, err = snnc("inspect", tmp_path / "nope.onnx")
    assert_one_line_error(rc, err, "nope.onnx", "no such file")


def test_checker_failure(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("Relu", ["undefined_input"], ["y"], name="broken_relu")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "broken.onnx"
    path.write_bytes(model.SerializeToString())
    rc, _, err = snnc("inspect", path)
    assert_one_line_error(rc, err, "broken.onnx", "checker")


def test_unsupported_op(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("Hardmax", ["x"], ["y"], name="my_hardmax")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "hardmax.onnx"
    path.write_bytes(model.SerializeToString())
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 4), np.float32))
    rc, _, err = snnc("run", path, "--input", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    assert_one_line_error(rc, err, "my_hardmax", "Hardmax", "ai.onnx")
    # inspect still lists it instead of failing
    rc, out, _ = snnc("inspect", path)
    assert rc == 0 and "unsupported" in out


def test_wrong_input_shape(model_path, tmp_path):
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 1, 9, 9), np.float32), y=np.zeros(3, np.int64))
    for engine in ("onnxruntime", "torch"):
        rc, _, err = snnc("eval", model_path, "--data", tmp_path / "x.npz", "--engine", engine)
        assert_one_line_error(rc, err, "'x'", "9")


def test_wrong_dtype(model_path, tmp_path):
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 1, 8, 8), np.int32), y=np.zeros(3, np.int64))
    rc, _, err = snnc("eval", model_path, "--data", tmp_path / "x.npz")
    assert_one_line_error(rc, err, "x.npz", "float32")


def test_npz_without_x(model_path, tmp_path):
    np.savez(tmp_path / "d.npz", inputs=np.zeros((3, 1, 8, 8), np.float32))
    rc, _, err = snnc("run", model_path, "--input", tmp_path / "d.npz", "-o", tmp_path / "y.npz")
    assert_one_line_error(rc, err, "d.npz", "'x'", "--input")


def test_nan_and_inf_in_data(model_path, tmp_path):
    for bad in (np.nan, np.inf):
        x = np.zeros((3, 1, 8, 8), np.float32)
        x[1, 0, 2, 2] = bad
        np.savez(tmp_path / "d.npz", x=x, y=np.zeros(3, np.int64))
        rc, _, err = snnc("eval", model_path, "--data", tmp_path / "d.npz")
        assert_one_line_error(rc, err, "d.npz", "NaN/Inf", "sample 1")


def test_eval_without_labels(model_path, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 1, 8, 8), np.float32))
    rc, _, err = snnc("eval", model_path, "--data", tmp_path / "d.npz")
    assert_one_line_error(rc, err, "'y'")


def test_bad_usage_is_one_line():
    rc, _, err = snnc("eval")
    assert_one_line_error(rc, err, "--data")


def test_debug_shows_traceback(tmp_path):
    rc, _, err = snnc("inspect", tmp_path / "nope.onnx", "--debug")
    assert rc == 2 and "Traceback" in err
    rc, _, err = snnc("--debug", "inspect", tmp_path / "nope.onnx")  # before the command too
    assert rc == 2 and "Traceback" in err


def test_spiking_eval_on_an_unusable_device(model_path, tmp_path):
    """A spiking artifact evaluated with --device cuda where there is no GPU (or a bad device)."""
    import torch

    rng = np.random.default_rng(0)
    x = rng.random((20, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    np.savez(tmp_path / "test.npz", x=x, y=rng.integers(0, 10, 20))
    art = tmp_path / "m.snn.onnx"
    rc, _, err = snnc("compile", model_path, "--calib", tmp_path / "calib.npz", "-o", art)
    assert rc == 0, err
    for device, needle in [
        ("tpu", "--device"),
        ("cuda:0" if not torch.cuda.is_available() else "nonsense", "--device"),
    ]:
        rc, _, err = snnc("eval", art, "--data", tmp_path / "test.npz", "--timesteps", "4", "--device", device)
        assert_one_line_error(rc, err, needle)
        # the ANN runtime checks its device the same way
        rc, _, err = snnc("eval", model_path, "--data", tmp_path / "test.npz", "--engine", "torch", "--device", device)
        assert_one_line_error(rc, err, needle)


def test_nan_weights_stop_compile_at_the_first_neuron_site(model_path, tmp_path):
    """NaN weights would give every threshold (and the artifact) NaNs: compile names the first
    neuron site whose calibration activations are not finite."""
    m = onnx.load(model_path)
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    weight = next(t for t in m.graph.initializer if t.name == conv.input[1])
    w = onnx.numpy_helper.to_array(weight).copy()
    w.flat[0] = np.nan
    weight.CopyFrom(onnx.numpy_helper.from_array(w, weight.name))
    onnx.save(m, tmp_path / "nan.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32))
    rc, _, err = snnc("compile", tmp_path / "nan.onnx", "--calib", tmp_path / "calib.npz", "-o", tmp_path / "o.onnx")
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    assert_one_line_error(rc, err, f"'{relu.name}'", "not finite")
    assert not (tmp_path / "o.onnx").exists()


def test_graph_without_outputs(model_path, tmp_path):
    m = onnx.load(model_path)
    del m.graph.output[:]
    onnx.save(m, tmp_path / "no_out.onnx")
    rc, _, err = snnc("inspect", tmp_path / "no_out.onnx")
    assert_one_line_error(rc, err, "no_out.onnx", "no outputs")


def test_labels_that_are_not_classes_of_the_model(model_path, tmp_path):
    """A label file for another task (or 1-based labels) would give a silent, meaningless 0%."""
    x = np.zeros((4, 1, 8, 8), np.float32)
    for y in (np.array([0, 1, 2, 10]), np.array([-1, 0, 1, 2])):
        np.savez(tmp_path / "d.npz", x=x, y=y)
        rc, _, err = snnc("eval", model_path, "--data", tmp_path / "d.npz")
        assert_one_line_error(rc, err, "'y'", "class indices 0..9", f"from {y.min()} to {y.max()}")


def test_a_file_that_is_not_npz(tmp_path):
    """numpy reads any non-zip file as a pickle and says so; the message must say what is wrong."""
    (tmp_path / "d.npz").write_text("x,y\n0.1,3\n")
    rc, _, err = snnc("eval", tmp_path / "m.onnx", "--data", tmp_path / "d.npz")
    assert_one_line_error(rc, err, "d.npz", "not a .npz file")


def test_bad_numbers_and_output_paths_fail_before_any_work(model_path, tmp_path, capsys):
    """Counts below their minimum, outputs into missing directories and a compile onto its own
    input are refused up front (in-process: the subprocess cases above cover the entry point)."""
    from snncompiler.cli.main import main

    x = np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(8) % 10)
    (tmp_path / "adir").mkdir()
    original = model_path.read_bytes()
    cases = [
        (["eval", model_path, "--data", tmp_path / "d.npz", "--batch-size", "0"], ["--batch-size", "≥ 1"]),
        (
            ["run", model_path, "--input", tmp_path / "d.npz", "-o", tmp_path / "y.npz", "--timesteps", "0"],
            ["--timesteps", "≥ 1"],
        ),
        (
            ["compile", model_path, "--calib", tmp_path / "d.npz", "-o", tmp_path / "c.onnx", "--calib-samples", "0"],
            ["--calib-samples"],
        ),
        (
            ["compile", model_path, "--calib", tmp_path / "d.npz", "-o", tmp_path / "c.onnx", "--iterations", "-1"],
            ["--iterations", "≥ 0"],
        ),
        (
            ["compile", model_path, "--calib", tmp_path / "d.npz", "-o", tmp_path / "missing" / "c.onnx"],
            ["does not exist"],
        ),
        (["compile", model_path, "--calib", tmp_path / "d.npz", "-o", model_path], ["is the input", "itself"]),
        (["compile", model_path, "--calib", tmp_path / "d.npz", "-o", tmp_path / "adir"], ["is a directory"]),
        (["run", model_path, "--input", tmp_path / "d.npz", "-o", tmp_path / "missing" / "y.npz"], ["does not exist"]),
        (["eval", model_path, "--data", tmp_path / "adir"], ["--data", "give --frames T"]),
    ]
    for argv, needles in cases:
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse's own usage errors exit from inside main
            code = exc.code
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1, (argv, err)
        for needle in needles:
            assert needle in lines[0], (argv, lines[0])
    assert model_path.read_bytes() == original
    assert not (tmp_path / "c.onnx").exists()


def test_api_refuses_counts_below_their_minimum(model_path):
    import snncompiler as snnc
    from snncompiler.data import Dataset
    from snncompiler.errors import SnncError

    x = np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)
    for bad in (dict(timesteps=0), dict(calib_samples=0), dict(iterations=-1), dict(chunk=0), dict(timesteps=2.5)):
        with pytest.raises(SnncError, match="must be an integer"):
            snnc.compile(model_path, Dataset(x), **bad)
    model = snnc.compile(model_path, Dataset(x), quiet=True)
    with pytest.raises(SnncError, match="--timesteps: must be ≥ 1"):
        model.run(x, timesteps=0)
    with pytest.raises(SnncError, match="--chunk: must be ≥ 1"):
        model.run(x, timesteps=4, chunk=0)
    with pytest.raises(SnncError, match="--batch-size: must be ≥ 1"):
        model.run(x, timesteps=4, batch_size=0)


def test_compile_refuses_a_model_with_two_inputs(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "z"], ["s"]), helper.make_node("Relu", ["s"], ["y"])], "two_inputs", [x, z], [y]
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "two_in.onnx")
    np.savez(tmp_path / "c.npz", x=np.zeros((4, 4), np.float32))
    rc, _, err = snnc("compile", tmp_path / "two_in.onnx", "--calib", tmp_path / "c.npz", "-o", tmp_path / "o.onnx")
    assert_one_line_error(rc, err, "two_in.onnx", "2 inputs (x, z)")


def test_api_bad_arguments_are_snnc_errors(model_path, tmp_path):
    """The Python API reports bad input as SnncError with the same one-line messages."""
    import snncompiler as snnc
    from snncompiler.data import Dataset
    from snncompiler.errors import SnncError

    x = np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)
    with pytest.raises(SnncError, match="expected a path, bytes or an onnx.ModelProto, got int"):
        snnc.compile(123, Dataset(x))
    model = snnc.compile(model_path, Dataset(x), quiet=True)
    nan = x.copy()
    nan[3, 0, 2, 2] = np.nan
    for call in (lambda: model.run(nan, 2), lambda: model.ann(nan)):
        with pytest.raises(SnncError, match="NaN or Inf"):
            call()
    with pytest.raises(SnncError, match="expected 8 labels"):
        model.evaluate(x, np.arange(5), [2])
    with pytest.raises(SnncError, match="fractional"):
        model.evaluate(x, np.arange(8) * 0.5, [2])
    assert model.evaluate(x, np.arange(8) % 10 * 1.0, [2])["samples"] == 8  # whole-number floats are labels
    with pytest.raises(SnncError, match="m.snn.onnx: directory .* does not exist"):
        model.save(tmp_path / "missing" / "m.snn.onnx")


def test_spiking_only_flags_with_a_plain_ann(model_path, tmp_path, capsys):
    """`snnc eval ann.onnx --timesteps 4` used to print the ANN's accuracy as if T had been used."""
    from snncompiler.cli.main import main

    np.savez(tmp_path / "d.npz", x=np.zeros((4, 1, 8, 8), np.float32), y=np.arange(4))
    for extra in (["--timesteps", "4"], ["--plot", str(tmp_path / "p.png")], ["--backend", "cpu"], ["--layers"]):
        assert main(["eval", str(model_path), "--data", str(tmp_path / "d.npz"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{extra[0]}: only for spiking models" in err, err
    assert (
        main(["run", str(model_path), "--input", str(tmp_path / "d.npz"), "-o", str(tmp_path / "y.npz"), "--ann-mode"])
        == 2
    )
    assert "--ann-mode: only for spiking models" in capsys.readouterr().err
    assert not (tmp_path / "y.npz").exists()
