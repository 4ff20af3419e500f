"""A damaged or hand-edited compiled artifact: one line naming the file and what is wrong, exit 2.

Each case changes one thing in a real artifact the way a truncated download, a bad merge or an
editor would, and runs the commands that read it. The untouched artifact must still work, so
every failure below comes from the change.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

import snncompiler as snnc
from examples.workloads import DigitsCNN, export_onnx
from snncompiler.cli.main import main
from snncompiler.data import Dataset


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """(artifact ModelProto, an .npz of labelled inputs) from an untrained digits CNN."""
    root = tmp_path_factory.mktemp("artifact")
    torch.manual_seed(0)
    path = export_onnx(DigitsCNN(width=4), (1, 8, 8), root / "cnn.onnx")
    x = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    model = snnc.compile(path, Dataset(x), quiet=True)
    model.save(root / "cnn.snn.onnx")
    data = root / "data.npz"
    np.savez(data, x=x, y=np.arange(16) % 10)
    return onnx.load(root / "cnn.snn.onnx"), data


def _neuron(m, i=0):
    return [n for n in m.graph.node if n.domain == "snncompiler" and n.op_type == "Neuron"][i]


def _set_attr(m, name, value):
    node = _neuron(m)
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    if value is not None:
        node.attribute.append(helper.make_attribute(name, value))


def _set_theta(m, value):
    name = _neuron(m).input[1]
    tensor = next(t for t in m.graph.initializer if t.name == name)
    tensor.CopyFrom(numpy_helper.from_array(np.asarray(value), name))


def _add_v_init(m, value):
    node = _neuron(m)
    m.graph.initializer.append(numpy_helper.from_array(value, "v_init_added"))
    node.input.append("v_init_added")


def _set_meta(m, key, value):
    next(p for p in m.metadata_props if p.key == key).value = value


def _set_snn_opset(m, version):
    next(o for o in m.opset_import if o.domain == "snncompiler").version = version


# (what is changed, how, words the message must contain)
CASES = {
    "theta negative": (lambda m: _set_theta(m, np.float32(-1.0)), ["Neuron", "theta must be positive"]),
    "theta zero": (lambda m: _set_theta(m, np.float32(0.0)), ["theta must be positive"]),
    "theta NaN": (lambda m: _set_theta(m, np.float32(np.nan)), ["theta has non-finite values"]),
    "theta inf": (lambda m: _set_theta(m, np.float32(np.inf)), ["theta has non-finite values"]),
    "theta integer": (lambda m: _set_theta(m, np.int64(1)), ["theta must be a float tensor"]),
    "theta wrong size": (
        lambda m: _set_theta(m, np.ones((7, 3), np.float32)),
        ["theta has 21 values", "one per channel (4)"],
    ),
    "theta an activation": (lambda m: _neuron(m).input.__setitem__(1, _neuron(m).input[0]), ["must be a constant"]),
    "v_init wrong shape": (lambda m: _add_v_init(m, np.zeros((3, 5), np.float32)), ["v_init of shape [3, 5]"]),
    "neuron kind": (lambda m: _set_attr(m, "neuron", "xyz"), ["attribute 'neuron'", "expected if or lif"]),
    "reset": (lambda m: _set_attr(m, "reset", "sideways"), ["attribute 'reset'", "'sideways'"]),
    "v0": (lambda m: _set_attr(m, "v0", "lots"), ["attribute 'v0'", "'lots'"]),
    "tau NaN": (lambda m: _set_attr(m, "tau", float("nan")), ["attribute 'tau'", "finite"]),
    "LIF with tau 1": (lambda m: (_set_attr(m, "neuron", "lif"), _set_attr(m, "tau", 1.0)), ["attribute 'tau'", "> 1"]),
    "two outputs": (lambda m: _neuron(m).output.append("extra"), ["one output"]),
    "operator version": (lambda m: _set_snn_opset(m, 7), ["'snncompiler' operators are version 7"]),
    "settings not JSON": (
        lambda m: _set_meta(m, "snncompiler.settings", "{not json"),
        ["metadata 'snncompiler.settings' is not valid JSON"],
    ),
    "settings a list": (lambda m: _set_meta(m, "snncompiler.settings", "[1, 2]"), ["must be a JSON object, got list"]),
    "settings maxpool": (
        lambda m: _set_meta(m, "snncompiler.settings", '{"maxpool": "fastest"}'),
        ["'maxpool' must be one of"],
    ),
    "settings timesteps": (
        lambda m: _set_meta(m, "snncompiler.settings", '{"timesteps": 0}'),
        ["'timesteps' must be a positive integer"],
    ),
    "timesteps metadata": (
        lambda m: _set_meta(m, "snncompiler.timesteps", "lots"),
        ["'snncompiler.timesteps' must be a positive integer"],
    ),
    "report not JSON": (lambda m: _set_meta(m, "snncompiler.report", "}{"), ["metadata 'snncompiler.report'"]),
    "format version": (lambda m: _set_meta(m, "snncompiler.artifact", "99"), ["artifact format '99'"]),
}


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, err


def test_the_untouched_artifact_runs(artifact, tmp_path, capsys):
    proto, data = artifact
    path = tmp_path / "ok.snn.onnx"
    onnx.save(proto, path)
    assert _run(capsys, "eval", path, "--data", data, "--timesteps", "2")[0] == 0
    assert _run(capsys, "run", path, "--input", data, "-o", tmp_path / "y.npz", "--timesteps", "2")[0] == 0


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_artifact_is_one_line_error(case, artifact, tmp_path, capsys):
    proto, data = artifact
    change, needles = CASES[case]
    damaged = copy.deepcopy(proto)
    change(damaged)
    path = tmp_path / "damaged.snn.onnx"
    onnx.save(damaged, path)
    for argv in (
        ["eval", path, "--data", data, "--timesteps", "2"],
        ["run", path, "--input", data, "-o", tmp_path / "y.npz", "--timesteps", "2"],
    ):
        code, err = _run(capsys, *argv)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1, (argv[0], err)
        assert "damaged.snn.onnx" in lines[0], lines[0]
        for needle in needles:
            assert needle in lines[0], lines[0]


def test_missing_neuron_attributes_take_the_documented_defaults(artifact, tmp_path):
    """Omitted attributes are valid ONNX: they read as the compiler's defaults (IF, soft, θ/2)."""
    proto, _ = artifact
    bare = copy.deepcopy(proto)
    for name in ("neuron", "tau", "reset", "v0", "theta_source"):
        _set_attr(bare, name, None)
    onnx.save(bare, tmp_path / "bare.snn.onnx")
    node = snnc.load(tmp_path / "bare.snn.onnx").graph.find("neuron")[0]
    assert {k: node.attrs[k] for k in ("neuron", "tau", "reset", "v0")} == {
        "neuron": "if",
        "tau": 0.0,
        "reset": "soft",
        "v0": "half",
    }


def test_corrupted_bytes_never_reach_an_internal_error(artifact, tmp_path, capsys):
    """Random damage to the file's bytes (bit flips, truncation, zeroed runs; fixed seed): every
    read either works (the damage hit weights) or is a one-line error, exit 2, never exit 1."""
    proto, data = artifact
    raw = proto.SerializeToString()
    rng = np.random.default_rng(1234)
    path = tmp_path / "bytes.snn.onnx"
    outcomes = {0: 0, 2: 0}
    for trial in range(40):
        damaged = bytearray(raw)
        kind = trial % 3
        if kind == 0:
            for j in rng.integers(0, len(damaged), size=int(rng.integers(1, 9))):
                damaged[j] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            damaged = damaged[: int(rng.integers(0, len(damaged)))]
        else:
            j = int(rng.integers(0, len(damaged)))
            damaged[j : j + 16] = bytes(len(damaged[j : j + 16]))
        path.write_bytes(bytes(damaged))
        code, err = _run(capsys, "eval", path, "--data", data, "--timesteps", "2")
        assert code in (0, 2), (trial, err)
        if code == 2:
            assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, (trial, err)
        outcomes[code] += 1
    assert outcomes[2] >= 10  # the damage does get noticed, not only absorbed by the weights


def test_a_failure_inside_the_spiking_runtime_names_the_node(artifact, tmp_path):
    """Whatever goes wrong in a layer while spiking (here a weight cut to the wrong number of
    input channels after loading) is reported against that node, not as a bare torch error."""
    proto, _ = artifact
    onnx.save(proto, tmp_path / "m.snn.onnx")
    model = snnc.load(tmp_path / "m.snn.onnx")
    conv = model.graph.find("conv")[1]
    conv.params["weight"] = conv.params["weight"][:, :1]
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    with pytest.raises(snnc.SnncError, match=rf"node '{conv.name}'.*conv failed in the spiking runtime"):
        model.run(x, 2)


def test_artifact_without_neurons_loads_as_a_compiled_model(tmp_path):
    """Conv → Sigmoid compiles (an analog island, no neuron) and saves; loading it back gave a
    plain ANN executor that ignored the saved settings."""
    from snncompiler.model import CompiledModel
    from tests.formats.helpers import build, init, rand

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Sigmoid", ["c"], ["y"])]
    model = build(nodes, [("x", ["N", 2, 5, 5])], ["y"], [init("w", rand([3, 2, 3, 3], 1))])
    x = rand([4, 2, 5, 5], 2)
    compiled = snnc.compile(model, x, timesteps=6, calibration="none", quiet=True)
    compiled.save(tmp_path / "m.snn.onnx")
    again = snnc.load(tmp_path / "m.snn.onnx")
    assert isinstance(again, CompiledModel)
    assert again.options["timesteps"] == 6
    np.testing.assert_allclose(again.run(x), compiled.run(x), rtol=1e-6)
