"""IR invariants, readable listing, the Python API and the run/eval/inspect commands."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

import snncompiler as snnc
from examples.workloads import DigitsCNN, export_onnx
from snncompiler.ir import IRError, Node


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    return export_onnx(DigitsCNN(width=4), (1, 8, 8), tmp_path_factory.mktemp("m") / "cnn.onnx")


def test_listing_and_validation(model_path):
    graph = snnc.load_graph(model_path)
    text = str(graph)
    assert text.startswith("graph ") and "conv(" in text and "maxpool(" in text and "linear(" in text
    broken = graph.copy()
    broken.nodes[1].inputs = ["nowhere"]
    with pytest.raises(IRError, match=broken.nodes[1].name):
        broken.validate()
    dup = graph.copy()
    dup.nodes.append(Node("relu", "extra", [dup.nodes[0].outputs[0]], [dup.nodes[0].outputs[0]]))
    with pytest.raises(IRError, match="extra"):
        dup.validate()


def test_load_is_batch_polymorphic(model_path):
    model = snnc.load(model_path)
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        x = np.random.default_rng(n).standard_normal((n, 1, 8, 8)).astype(np.float32)
        np.testing.assert_allclose(model(x), sess.run(None, {"x": x})[0], atol=1e-5)
    out = model(torch.zeros(2, 1, 8, 8))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)


def test_cli_run_eval_inspect(model_path, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 1, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    y = ref.argmax(1)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    cli = [sys.executable, "-m", "snncompiler.cli"]
    subprocess.run(
        cli
        + [
            "run",
            str(model_path),
            "--input",
            str(tmp_path / "d.npz"),
            "-o",
            str(tmp_path / "y.npz"),
            "--batch-size",
            "4",
        ],
        check=True,
        capture_output=True,
    )
    with np.load(tmp_path / "y.npz") as out:
        np.testing.assert_allclose(out["y"], ref, atol=1e-5)
    for engine in ("onnxruntime", "torch"):
        proc = subprocess.run(
            cli + ["eval", str(model_path), "--data", str(tmp_path / "d.npz"), "--json", "--engine", engine],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(proc.stdout)
        assert result["samples"] == 6 and result["ann_accuracy"] == 1.0  # labels are the model's own argmax
    proc = subprocess.run(cli + ["inspect", str(model_path), "--json"], check=True, capture_output=True, text=True)
    info = json.loads(proc.stdout)
    convs = [r for r in info["nodes"] if r["core_op"] == "conv"]
    assert len(convs) == 3 and convs[0]["macs"] == 4 * 8 * 8 * 9
    # the exporter folds BatchNorm into the convs, so exactly the conv and linear parameters remain
    layers = [m for m in DigitsCNN(width=4).modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert info["totals"]["parameters"] == sum(p.numel() for m in layers for p in m.parameters())
    kinds = {r["core_op"]: r["conversion"] for r in info["nodes"]}
    assert kinds["relu"] == "spiking" and kinds["conv"] == "linear"


def test_retain_freed_memory_is_applied_once_and_can_be_turned_off():
    """glibc: the thresholds are raised (True); SNNC_RETAIN_MEMORY=0 leaves malloc alone (False)."""
    import os
    import platform
    import subprocess
    import sys

    code = "from snncompiler.runtime.memory import retain_freed_memory as r; print(r(), r())"
    for env, expected in ((None, "True True"), ("0", "False False")):
        environ = {k: v for k, v in os.environ.items() if k != "SNNC_RETAIN_MEMORY"}
        if env is not None:
            environ["SNNC_RETAIN_MEMORY"] = env
        out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True)
        if env is None and platform.libc_ver()[0] != "glibc":
            expected = "False False"
        assert out.stdout.strip() == expected


class _TwoHeads(torch.nn.Module):
    """Logits and the hidden layer's activations: two outputs, the second a ReLU (a neuron)."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU())
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        z = self.body(x)
        return self.head(z), z


def _two_heads(path):
    import warnings

    torch.manual_seed(0)
    with warnings.catch_warnings():  # the exporter's deprecation notices, as in workloads.export_onnx
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _TwoHeads().eval(),
            torch.zeros(1, 1, 8, 8),
            path,
            input_names=["x"],
            output_names=["logits", "features"],
            dynamic_axes={"x": {0: "n"}},
            dynamo=False,
        )
    return path


def test_run_saves_every_output_of_a_multi_output_ann(tmp_path, caplog):
    """`snnc run` on an ANN with two outputs writes both (y, y1), equal to onnxruntime's, and
    reading the model says that scoring uses the first."""
    import logging

    from snncompiler.cli.main import main

    path = _two_heads(tmp_path / "two.onnx")
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    with caplog.at_level(logging.WARNING):
        assert main(["run", str(path), "--input", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz")]) == 0
    assert "2 outputs (logits, features)" in caplog.text and "'logits'" in caplog.text
    got = np.load(tmp_path / "y.npz")
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert sorted(got.files) == ["y", "y1"]
    np.testing.assert_allclose(got["y"], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["y1"], want[1], rtol=1e-5, atol=1e-5)


def test_spiking_model_simulates_every_output(tmp_path):
    """A compiled two-output model: `snnc run` saves both spiking outputs, each converging to its
    own output of the artifact's ANN mode (the second is the hidden neurons' rate × θ); accuracy
    is scored on the first."""
    import snncompiler as snnc
    from snncompiler.cli.main import main

    path = _two_heads(tmp_path / "two.onnx")
    x = np.random.default_rng(1).random((64, 1, 8, 8), dtype=np.float32)
    model = snnc.compile(str(path), x, timesteps=8, quiet=True)
    logits_ann, features_ann = model.ann(x)
    outs = model.run(x, 256, checkpoints=[4, 256])
    assert isinstance(outs[256], tuple) and len(outs[256]) == 2
    for t, tol in ((4, 0.3), (256, 0.02)):
        logits, features = outs[t]
        scale = np.abs(features_ann).max()
        assert np.abs(features - features_ann).max() <= tol * scale, t
        assert np.abs(logits - logits_ann).mean() <= tol * np.abs(logits_ann).mean(), t
    steps = model.runner().run_steps(torch.from_numpy(x), 3)
    assert isinstance(steps, tuple) and steps[0].shape == (3, 64, 10) and steps[1].shape == (3, 64, 16)
    y = logits_ann.argmax(1)
    assert model.evaluate(x, y, [256])["snn_accuracy"]["256"] >= 0.9
    artifact = tmp_path / "two.snn.onnx"
    model.save(artifact)
    np.savez(tmp_path / "x.npz", x=x)
    assert (
        main(
            [
                "run",
                str(artifact),
                "--input",
                str(tmp_path / "x.npz"),
                "-o",
                str(tmp_path / "y.npz"),
                "--timesteps",
                "256",
            ]
        )
        == 0
    )
    got = np.load(tmp_path / "y.npz")
    assert sorted(got.files) == ["y", "y1"]
    np.testing.assert_allclose(got["y"], outs[256][0], atol=1e-6)
    np.testing.assert_allclose(got["y1"], outs[256][1], atol=1e-6)


def test_every_core_op_has_exactly_one_runtime_implementation():
    """ir.ops is the vocabulary, runtime.ops its torch implementations: the two key sets agree."""
    from snncompiler.ir.ops import KINDS, OPS
    from snncompiler.runtime.ops import IMPLEMENTATIONS

    assert set(IMPLEMENTATIONS) == set(OPS)
    assert all(isinstance(spec.kind, str) and spec.kind in KINDS or callable(spec.kind) for spec in OPS.values())


def test_a_constant_operand_is_named_as_a_constant():
    """A constant made into a node for the op that reads it (Equal's, Where's operand) is listed
    by `snnc inspect` as a Constant, not under the reading op's type (it showed "Equal")."""
    from onnx import helper

    from tests.formats.helpers import build, init

    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Where", ["m", "r", "zero"], ["y"], name="pick")]
    nodes.insert(1, helper.make_node("Greater", ["r", "zero"], ["m"], name="cmp"))
    graph = snnc.load_graph(build(nodes, [("x", ["N", 4])], ["y"], [init("zero", np.float32(0.5))], 17))
    constants = [n for n in graph.nodes if n.op == "constant"]
    assert constants and all(n.source_op == "Constant" for n in constants)
    assert "read by Greater 'cmp'" in constants[0].where
