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
    node = helper.make_node("Shrink", ["x"], ["y"], name="my_shrink")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "shrink.onnx"
    path.write_bytes(model.SerializeToString())
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 4), np.float32))
    rc, _, err = snnc("run", path, "--input", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    assert_one_line_error(rc, err, "my_shrink", "Shrink", "ai.onnx")
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
    with pytest.raises(SnncError, match="timesteps: must be an integer ≥ 1, got 0"):
        model.run(x, timesteps=0)
    with pytest.raises(SnncError, match="^chunk: must be ≥ 1"):
        model.run(x, timesteps=4, chunk=0)
    with pytest.raises(SnncError, match="^batch_size: must be ≥ 1"):
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


# ---- what the CLI/API audit of 2026-12-07 found: each case failed with a raw exception before


def _tiny_linear(tmp_path, relu: bool = True):
    """A Flatten → Gemm (→ ReLU → Gemm) model of 3 classes, compiled and saved, and 40 samples."""
    import snncompiler as snnc
    from tests.formats.helpers import build, init, rand

    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["h"], transB=1)]
    params = [init("w", rand([8, 50], 1))]
    if relu:
        nodes += [helper.make_node("Relu", ["h"], ["r"]), helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1)]
        params.append(init("w2", rand([3, 8], 3)))
    else:
        nodes[-1] = helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)
        params = [init("w", rand([3, 50], 1))]
    model = build(nodes, [("x", ["N", 2, 5, 5])], ["y"], params)
    x = rand([40, 2, 5, 5], 2)
    snnc.compile(model, x, timesteps=4, calibration="none", quiet=True).save(tmp_path / "m.snn.onnx")
    onnx.save(model, tmp_path / "ann.onnx")
    return tmp_path / "m.snn.onnx", tmp_path / "ann.onnx", x


def _fails(args, needle):
    rc, _, err = snnc(*args)
    assert_one_line_error(rc, err, needle)


def test_finetune_checks_shapes_labels_and_seed_before_training(tmp_path):
    artifact, ann, x = _tiny_linear(tmp_path)
    late = (np.arange(40) % 3).astype(np.int64)
    late[[5, 17, 37]] = 7  # batches of 4: fit checked only its first batch, then cross-entropy raised
    np.savez(tmp_path / "late.npz", x=x, y=late)
    np.savez(tmp_path / "shape.npz", x=x[:, :, :4], y=late % 3)
    np.savez(tmp_path / "neg.npz", x=x, y=(np.arange(40) % 3) - 1)
    out = tmp_path / "o.snn.onnx"
    _fails(("finetune", artifact, "--data", tmp_path / "late.npz", "--batch-size", "4", "-o", out), "labels span 0..7")
    _fails(("finetune", artifact, "--data", tmp_path / "shape.npz", "-o", out), "expected shape [N, 2, 5, 5]")
    _fails(("compile", ann, "--calib", tmp_path / "neg.npz", "--finetune", "1", "-o", out), "class indices 0..2")
    for seed in ("-1", str(2**63)):
        _fails(("compile", ann, "--calib", tmp_path / "late.npz", "--seed", seed, "-o", out), "--seed")
    assert not out.exists()


def test_api_seed_timesteps_and_empty_inputs_are_checked(tmp_path):
    import snncompiler as snnc
    from snncompiler.errors import SnncError
    from snncompiler.train import fit

    artifact, ann, x = _tiny_linear(tmp_path)
    model = snnc.load(artifact)
    y = np.arange(40) % 3
    with pytest.raises(SnncError, match=r"seed: must be an integer in \[0, 2\*\*63 - 1\]"):
        snnc.compile(ann, x, seed=2**64, quiet=True)
    with pytest.raises(SnncError, match="seed: must be"):
        fit(torch_module_of(model), (x, y), epochs=1, seed=-3, progress=False)
    for bad in (1.5, True, 0):
        with pytest.raises(SnncError, match="timesteps: must be an integer ≥ 1"):
            model.run(x, bad)
        with pytest.raises(SnncError, match="timesteps: must be an integer ≥ 1"):
            model.evaluate(x, y, [2, bad])
    with pytest.raises(SnncError, match="timesteps: is empty"):
        model.evaluate(x, y, [])
    with pytest.raises(SnncError, match="input 'x': has no samples"):
        model.run(x[:0], 2)
    assert model.run(x, np.int64(2)).shape == (40, 3)


def torch_module_of(model):
    from snncompiler.train.finetune import GraphNet

    return GraphNet(model.graph)


def test_a_plain_ann_takes_lists_and_float64_as_a_compiled_model_does(tmp_path):
    import onnxruntime as ort

    import snncompiler as snnc

    _, ann, x = _tiny_linear(tmp_path)
    executor = snnc.load(ann)
    expected = ort.InferenceSession(str(ann)).run(None, {"x": x})[0]
    for given in (x.astype(np.float64), x.tolist()):
        np.testing.assert_allclose(executor(given), expected, rtol=1e-5, atol=1e-6)


def test_an_artifact_without_neurons_is_evaluated_as_one_and_not_recompiled(tmp_path):
    artifact, _, x = _tiny_linear(tmp_path, relu=False)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 3)
    rc, out, err = snnc("eval", artifact, "--data", tmp_path / "d.npz", "--timesteps", "1,4", "--json")
    assert rc == 0, err
    import json

    record = json.loads(out)
    assert record["kind"] != "ann" and set(record["snn_accuracy"]) == {"1", "4"}
    rc, _, err = snnc("compile", artifact, "--calib", tmp_path / "d.npz", "-o", tmp_path / "again.onnx")
    assert_one_line_error(rc, err, "already a compiled spiking model")


def test_an_ascii_console_gets_escapes_not_a_crash(tmp_path):
    """θ in help and messages raised UnicodeEncodeError (exit 1) under PYTHONIOENCODING=ascii."""
    import os

    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    done = subprocess.run(
        [sys.executable, "-m", "snncompiler.cli", "compile", "--help"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "\\u03b8" in done.stdout


def test_flags_that_would_change_nothing_are_refused(tmp_path):
    """Each of these ran and silently ignored the flag (or the typo) before."""
    artifact, ann, x = _tiny_linear(tmp_path)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 3)
    data = tmp_path / "d.npz"
    cases = [
        (("eval", artifact, "--data", data, "--timesteps", "1,,2"), "--timesteps: expected comma-separated"),
        (("eval", artifact, "--data", data, "--reference", ann), "--reference: only with --layers"),
        (("eval", artifact, "--data", data, "--layer-samples", "8"), "--layer-samples: only with --layers"),
        (("eval", ann, "--data", data, "--layer-samples", "8"), "--layer-samples: only for spiking models"),
        (
            ("eval", artifact, "--data", data, "--split-by", "time"),
            "--frames/--sensor/--split-by: only for a directory",
        ),
        (("eval", ann, "--data", data, "--device", "cuda"), "add --engine torch"),
        (("compile", ann, "--calib", data, "--iterations", "5", "-o", tmp_path / "c.onnx"), "--calibration advanced"),
        (("export", artifact, "-o", tmp_path / "e.onnx"), "NIR (HDF5) under an .onnx name"),
        (("export", artifact, "--format", "onnx", "-o", tmp_path / "e.nir"), "standard ONNX under a .nir name"),
    ]
    for args, needle in cases:
        _fails(args, needle)
    assert not any((tmp_path / name).exists() for name in ("c.onnx", "e.onnx", "e.nir"))


def test_api_errors_name_the_argument_not_a_flag(tmp_path):
    """The library's messages name its arguments (the CLI turns them into its flags): they said
    `--dt`, `--timesteps`, `--chunk` to Python callers."""
    import snncompiler as snnc
    from snncompiler.errors import SnncError

    artifact, _, x = _tiny_linear(tmp_path)
    model = snnc.load(artifact)
    cases = [
        (lambda: snnc.load(artifact, dt=1e-3), "^dt: only for NIR files"),
        (lambda: model.run(x, 4, checkpoints=[5]), r"^checkpoints: must lie in 1\.\.4"),
        (lambda: model.run(x, 4, chunk=0), "^chunk: must be ≥ 1"),
        (lambda: model.run(x, 4, batch_size=0), "^batch_size: must be ≥ 1"),
    ]
    for call, pattern in cases:
        with pytest.raises(SnncError, match=pattern):
            call()
