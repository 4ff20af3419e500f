"""Compiling quantized models: passes/fake_quant.py rewrites each quantize → dequantize pair on an
activation (the ReLU the quantizer removed becomes a neuron again, a kept ReLU takes the grid's
top as its cap, the rest go), and the int8 model converts as well as its float original."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import snncompiler as snnc
from benchmarks.quantized import ort_quantize
from snncompiler.cli.main import main as snnc_main
from snncompiler.formats.onnx import load_graph
from snncompiler.formats.onnx.writer import to_onnx
from snncompiler.passes import PassContext, fake_quant
from snncompiler.runtime import run_graph
from tests.formats.helpers import build, init, rand, run_ort
from tests.formats.test_quantization import export_fake_quant_cnn


def _qdq(x: str, out: str, scale: float, zero: int, elem=np.uint8) -> tuple[list, list]:
    """Nodes and initializers of one quantize → dequantize pair from ``x`` to ``out``."""
    s, z = f"{out}_s", f"{out}_z"
    nodes = [
        helper.make_node("QuantizeLinear", [x, s, z], [f"{out}_q"], name=f"{out}_quant"),
        helper.make_node("DequantizeLinear", [f"{out}_q", s, z], [out], name=f"{out}_dequant"),
    ]
    return nodes, [init(s, np.float32(scale)), init(z, elem(zero))]


def _conv_qdq_model(relu: bool, out_zero: int = 128) -> onnx.ModelProto:
    """x → QDQ → Conv (→ Relu) → QDQ(uint8 from 0) → Flatten → Gemm → QDQ(signed) = y: the
    shape onnxruntime's QDQ quantizer writes (``relu=False``: it removed the ReLU)."""
    g = np.random.default_rng(0)
    nodes, inits = _qdq("x", "xd", 1 / 255, 0)
    inits += [init("w", g.normal(0, 0.5, (4, 1, 3, 3))), init("b", g.normal(0, 0.1, 4))]
    nodes.append(helper.make_node("Conv", ["xd", "w", "b"], ["c"], pads=[1, 1, 1, 1]))
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["r"]))
    more, more_inits = _qdq("r" if relu else "c", "h", 0.01, 0)
    nodes += more + [helper.make_node("Flatten", ["h"], ["f"])]
    inits += more_inits + [init("fw", g.normal(0, 0.2, (3, 4 * 6 * 6))), init("fb", np.zeros(3))]
    nodes.append(helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1))
    more, more_inits = _qdq("logits", "y", 0.05, out_zero)
    return build(nodes + more, [("x", ["N", 1, 6, 6])], [("y", ["N", 3])], inits + more_inits, opset=13)


def test_removed_relu_becomes_a_neuron_capped_at_the_grid_top():
    x = rand([32, 1, 6, 6], 1, 0, 1)
    model = snnc.compile(_conv_qdq_model(relu=False), x, threshold="max")
    ops = [n.op for n in model.graph.nodes]
    assert "quantize" not in ops and "dequantize" not in ops
    assert ops == ["conv", "neuron", "flatten", "linear", "identity"]
    assert model.report["fake_quant_pairs"] == {"neurons": 1, "capped": 0, "removed": 2}
    (neuron,) = model.graph.find("neuron")
    assert float(neuron.params["theta"].max()) <= 255 * 0.01 + 1e-6
    assert model.graph.outputs[0].name == "y"  # the graph output keeps its name


def test_kept_relu_takes_the_cap():
    x = rand([32, 1, 6, 6], 2, 0, 1)
    plain = load_graph(_conv_qdq_model(relu=True))
    model = snnc.compile(plain, x, threshold="max")
    assert model.report["fake_quant_pairs"] == {"neurons": 0, "capped": 1, "removed": 2}
    (neuron,) = model.graph.find("neuron")
    assert "capped by Clip max" in neuron.attrs["theta_source"]
    assert float(neuron.params["theta"].max()) <= 2.55 + 1e-6


def test_snn_converges_to_the_float_network_with_dequantized_weights():
    """Rounding is dropped, clipping kept: at large T the SNN approaches the ANN snnc converts,
    which is onnxruntime's int8 model up to the rounding of activations (a few grid steps)."""
    onnx_model = _conv_qdq_model(relu=False)
    x = rand([64, 1, 6, 6], 3, 0, 1)
    model = snnc.compile(onnx_model, x)
    ann = np.asarray(model.ann(x))
    int8 = run_ort(onnx_model, x)[0]
    assert np.abs(ann - int8).max() <= 0.2  # the logits' grid step is 0.05
    errors = [float(np.abs(np.asarray(model.run(x, timesteps=t)) - ann).mean()) for t in (16, 256)]
    assert errors[1] < errors[0] / 4, errors


def test_signed_grid_in_the_middle_is_removed_and_output_grid_kept_when_integer():
    """A model whose output is the quantized integer itself keeps that quantize (an analog
    island giving uint8), and the artifact saves and loads it."""
    m = _conv_qdq_model(relu=False)
    # drop the final DequantizeLinear: the graph returns y_q, a uint8 tensor
    nodes = [n for n in m.graph.node if n.name != "y_dequant"]
    graph = helper.make_graph(
        nodes,
        "g",
        list(m.graph.input),
        [helper.make_tensor_value_info("y_q", TensorProto.UINT8, ["N", 3])],
        list(m.graph.initializer),
    )
    model = helper.make_model(graph, opset_imports=list(m.opset_import))
    model.ir_version = m.ir_version
    x = rand([16, 1, 6, 6], 4, 0, 1)
    compiled = snnc.compile(model, x)
    assert [n.op for n in compiled.graph.nodes][-1] == "quantize"
    out = np.asarray(compiled.run(x, timesteps=64))
    assert out.dtype == np.uint8
    assert compiled.report["fake_quant_pairs"]["removed"] == 1  # the input's pair


def test_artifact_round_trip(tmp_path):
    m = _conv_qdq_model(relu=False)
    x = rand([16, 1, 6, 6], 5, 0, 1)
    compiled = snnc.compile(m, x)
    path = tmp_path / "q.snn.onnx"
    compiled.save(path)
    again = snnc.load(path)
    np.testing.assert_array_equal(np.asarray(again.run(x, timesteps=8)), np.asarray(compiled.run(x, timesteps=8)))
    assert again.report["fake_quant_pairs"] == compiled.report["fake_quant_pairs"]


def test_torch_fake_quantized_network_compiles(tmp_path):
    """PyTorch's QAT forward exported to ONNX: the ReLU before a uint8 grid is kept and capped."""
    path = export_fake_quant_cnn(tmp_path / "qat.onnx")
    compiled = snnc.compile(path, rand([32, 1, 8, 8], 6, 0, 1), threshold="max")
    assert compiled.report["fake_quant_pairs"] == {"neurons": 0, "capped": 1, "removed": 0}
    (neuron,) = compiled.graph.find("neuron")
    assert float(neuron.params["theta"].max()) <= 255 * 0.02 + 1e-6


@pytest.fixture(scope="module")
def int8_digits(small_digits_cnn, tmp_path_factory):
    """The trained digits CNN quantized by onnxruntime (QDQ, per-channel weights), with the
    float original and the data."""
    float_path, train, test = small_digits_cnn
    calib = train.x[:256].astype(np.float32)
    path = ort_quantize(str(float_path), str(tmp_path_factory.mktemp("int8") / "int8.onnx"), calib)
    return str(float_path), path, calib, test


def test_int8_digits_cnn_converts_like_its_float_original(int8_digits):
    float_path, int8_path, calib, test = int8_digits
    assert "Relu" not in {n.op_type for n in onnx.load(int8_path).graph.node}  # the quantizer removed them
    results = {}
    for label, path in (("float", float_path), ("int8", int8_path)):
        model = snnc.compile(path, calib)
        results[label] = (len(model.graph.find("neuron")), model.evaluate(test.x, test.y, [8, 32]))
    assert results["int8"][0] == results["float"][0]  # every removed ReLU is a neuron again
    for t in ("8", "32"):
        f, q = results["float"][1]["snn_accuracy"][t], results["int8"][1]["snn_accuracy"][t]
        # measured 0.19-0.56 points apart under ATEN_CPU_CAPABILITY=default, avx2 and avx512
        # (this small CNN; the benchmark's 30-epoch ones: 0.2 at T=8, equal at T=32)
        assert abs(f - q) <= 0.02, (t, f, q)
    assert results["int8"][1]["snn_accuracy"]["32"] >= results["int8"][1]["ann_accuracy"] - 0.02


def test_cli_compile_says_what_became_of_the_pairs(int8_digits, tmp_path, capsys):
    _, int8_path, calib, _ = int8_digits
    np.savez(tmp_path / "calib.npz", x=calib[:64])
    rc = snnc_main(["compile", int8_path, "--calib", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "m.snn.onnx")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "quantized model:" in out and "become neurons" in out


def test_inspect_shows_the_model_as_compile_converts_it(tmp_path, capsys):
    """`snnc inspect` on a QDQ model: no analog islands, no 'replace by ReLU' advice."""
    path = tmp_path / "qdq.onnx"
    onnx.save(_conv_qdq_model(relu=False), path)
    assert snnc_main(["inspect", str(path)]) == 0
    captured = capsys.readouterr()
    assert "0 analog islands" in captured.out and "1 become neurons" in captured.out
    assert "warning" not in captured.err
    assert snnc_main(["inspect", str(path), "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)["totals"]
    assert totals["fake_quant_pairs"] == {"neurons": 1, "capped": 0, "removed": 2}
    assert totals["spiking"]["spiking_share"] == 1.0


def _pair_after(op_nodes: list, value: str, inits: list) -> onnx.ModelProto:
    """x → Conv → ``op_nodes`` (ending in ``value``) → QDQ(uint8 from 0) → Flatten → Gemm = y."""
    g = np.random.default_rng(7)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), *op_nodes]
    more, more_inits = _qdq(value, "h", 0.01, 0)
    nodes += more + [helper.make_node("Flatten", ["h"], ["f"]), helper.make_node("Gemm", ["f", "fw"], ["y"], transB=1)]
    inits = (
        inits
        + more_inits
        + [
            init("w", g.normal(0, 0.5, (4, 1, 3, 3))),
            init("b", g.normal(0, 0.1, 4)),
            init("fw", g.normal(0, 0.2, (3, 4 * 6 * 6))),
        ]
    )
    return build(nodes, [("x", ["N", 1, 6, 6])], [("y", ["N", 3])], inits, opset=13)


@pytest.mark.parametrize(
    "case, op_nodes, value, neurons",
    [
        # a sigmoid is never negative: its grid from 0 clips nothing, so no neuron is made of it
        ("sigmoid", [helper.make_node("Sigmoid", ["c"], ["s"])], "s", 0),
        (
            "sigmoid times 2",
            [helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["s", "two"], ["m"])],
            "m",
            0,
        ),
        # spikes minus spikes can be negative: the grid clips them, as the ReLU it replaced did
        (
            "difference of two ReLUs",
            [
                helper.make_node("Relu", ["c"], ["r1"]),
                helper.make_node("Neg", ["c"], ["nc"]),
                helper.make_node("Relu", ["nc"], ["r2"]),
                helper.make_node("Sub", ["r1", "r2"], ["d"]),
            ],
            "d",
            3,
        ),
    ],
)
def test_grid_from_zero_makes_a_neuron_only_where_it_clips(case, op_nodes, value, neurons):
    model = _pair_after(op_nodes, value, [init("two", np.float32(2.0))] if "times" in case else [])
    compiled = snnc.compile(model, rand([32, 1, 6, 6], 8, 0, 1), threshold="max")
    assert len(compiled.graph.find("neuron")) == neurons, [n.op for n in compiled.graph.nodes]
    x = rand([8, 1, 6, 6], 9, 0, 1)
    np.testing.assert_allclose(compiled.ann(x), run_ort(model, x)[0], atol=0.05)


def _four_bit_model(form: str, relu: bool) -> onnx.ModelProto:
    """x → Conv (4-bit weights) [→ Relu] → a 4-bit grid from 0 (15 steps of 0.1) → Flatten →
    Gemm = y, as Brevitas writes it (``qcdq``: int8 weights clipped to −8…7 and a uint8
    QuantizeLinear → Clip(0, 15) → DequantizeLinear) or in opset 21's 4-bit types (``int4``)."""
    g = np.random.default_rng(11)
    weights = g.integers(-8, 8, (4, 1, 3, 3))
    inits = [init("ws", np.float32(0.1)), init("b", g.normal(0, 0.1, 4)), init("s", np.float32(0.1))]
    inits.append(init("fw", g.normal(0, 0.2, (3, 4 * 6 * 6))))
    if form == "qcdq":
        inits += [init("w", weights * 0.1 + g.uniform(-0.04, 0.04, weights.shape)), init("wz", np.int8(0))]
        inits += [init("wlo", np.int8(-8)), init("whi", np.int8(7)), init("z", np.uint8(0))]
        inits += [init("lo", np.uint8(0)), init("hi", np.uint8(15))]
        nodes = [
            helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"]),
            helper.make_node("Clip", ["wq", "wlo", "whi"], ["wc"]),
            helper.make_node("DequantizeLinear", ["wc", "ws", "wz"], ["wd"]),
        ]
    else:
        inits.append(helper.make_tensor("wc", TensorProto.INT4, weights.shape, weights.flatten().tolist()))
        inits += [
            helper.make_tensor("wz", TensorProto.INT4, [], [0]),
            helper.make_tensor("z", TensorProto.UINT4, [], [0]),
        ]
        nodes = [helper.make_node("DequantizeLinear", ["wc", "ws", "wz"], ["wd"])]
    nodes.append(helper.make_node("Conv", ["x", "wd", "b"], ["c"], pads=[1, 1, 1, 1]))
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["r"]))
    nodes.append(helper.make_node("QuantizeLinear", ["r" if relu else "c", "s", "z"], ["q"], name="act_quant"))
    if form == "qcdq":
        nodes.append(helper.make_node("Clip", ["q", "lo", "hi"], ["qc"], name="act_grid"))
    nodes.append(helper.make_node("DequantizeLinear", ["qc" if form == "qcdq" else "q", "s", "z"], ["h"]))
    nodes += [helper.make_node("Flatten", ["h"], ["f"]), helper.make_node("Gemm", ["f", "fw"], ["y"], transB=1)]
    return build(nodes, [("x", ["N", 1, 6, 6])], [("y", ["N", 3])], inits, opset=21 if form == "int4" else 13)


@pytest.mark.parametrize("relu", [False, True], ids=["relu_removed", "relu_kept"])
@pytest.mark.parametrize("form", ["qcdq", "int4"])
def test_4_bit_grid_converts_exactly_at_t15_where_theta_reaches_its_top(form, relu, tmp_path):
    """A grid of 15 steps makes a neuron whose calibrated θ is capped at the grid's top; where
    the calibration data saturates the grid θ is that top, and with v0 = θ/2 the neuron computes
    the grid's rounding from a constant current in T = 15 steps: the SNN equals onnxruntime's
    4-bit model at T = 15."""
    model = _four_bit_model(form, relu)
    x = rand([128, 1, 6, 6], 12, 0, 1)
    compiled = snnc.compile(model, x, timesteps=15, threshold="max")  # this data's max is above the top
    assert [n.op for n in compiled.graph.nodes] == ["conv", "neuron", "flatten", "linear"]
    expected = {"neurons": 0, "capped": 1, "removed": 0} if relu else {"neurons": 1, "capped": 0, "removed": 0}
    assert compiled.report["fake_quant_pairs"] == expected
    assert "quantized_activations" not in compiled.report  # a grid is no trained staircase
    (neuron,) = compiled.graph.find("neuron")
    assert float(neuron.params["theta"].max()) == pytest.approx(1.5, rel=1e-6)
    assert "capped by Clip max" in neuron.attrs["theta_source"]
    (ref,) = run_ort(model, x)
    atol = 1e-5 * float(np.abs(ref).max())
    np.testing.assert_allclose(compiled.run(x, timesteps=15), ref, rtol=0, atol=atol)
    assert float(np.abs(compiled.run(x, timesteps=16) - ref).max()) > 1e-3
    compiled.save(tmp_path / "m.snn.onnx")
    np.testing.assert_allclose(snnc.load(tmp_path / "m.snn.onnx").run(x, timesteps=15), ref, rtol=0, atol=atol)


@pytest.mark.parametrize("form", ["qcdq", "int4"])
def test_narrowed_grid_runs_and_is_written_as_the_model_wrote_it(form):
    """The Clip folded into the quantize (or a 4-bit type held in 8 bits) rounds and saturates as
    onnxruntime does, and written back to ONNX it is a Clip on the integers again."""
    model = _four_bit_model(form, relu=False)
    graph, ctx = load_graph(model), PassContext()
    graph = fake_quant.narrowed_grids(graph, ctx)
    (q,) = graph.find("quantize")
    assert (q.attrs["qmin"], q.attrs["qmax"]) == (0, 15) and not graph.find("clip")
    x = rand([16, 1, 6, 6], 13, 0, 1)
    (ref,) = run_ort(model, x)
    np.testing.assert_allclose(np.asarray(run_graph(graph, x)), ref, rtol=0, atol=1e-6)
    written = to_onnx(graph, {})
    grid_ops = ("QuantizeLinear", "Clip", "DequantizeLinear")
    assert [n.op_type for n in written.graph.node if n.op_type in grid_ops] == list(grid_ops)
    np.testing.assert_allclose(run_ort(written, x)[0], ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_7_bit_activation_grid_is_read(dynamo, tmp_path):
    """torch exports its 0…127 activation grid (``reduce_range``) as QuantizeLinear → Clip →
    DequantizeLinear; those were three analog islands. Now the Clip narrows the grid: the ReLU
    before it is a neuron capped at 127 steps, no more (too fine a grid to be read as trained)."""

    class SevenBit(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(2)
            self.conv, self.fc = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            h = torch.fake_quantize_per_tensor_affine(torch.relu(self.conv(x)), 0.01, 0, 0, 127)
            return self.fc(h.flatten(1))

    path = str(tmp_path / "m.onnx")
    with warnings.catch_warnings(), torch.no_grad():  # with grad, torch.export meets a mask op it cannot trace
        warnings.simplefilter("ignore")
        torch.onnx.export(
            SevenBit().eval(),
            (torch.zeros(1, 1, 6, 6),),
            path,
            dynamo=dynamo,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes=None if dynamo else {"x": {0: "N"}},
        )  # the dynamo exporter has no symbolic-batch rule for fake quantization: batch 1, re-pinned when read
    assert "Clip" in [n.op_type for n in onnx.load(path).graph.node]
    x = rand([64, 1, 6, 6], 14, 0, 1)
    compiled = snnc.compile(path, x, threshold="max")
    assert [n.op for n in compiled.graph.nodes][:2] == ["conv", "neuron"] and not compiled.report["analog_islands"]
    assert compiled.report["fake_quant_pairs"] == {"neurons": 0, "capped": 1, "removed": 0}
    assert "quantized_activations" not in compiled.report
    (neuron,) = compiled.graph.find("neuron")
    assert float(neuron.params["theta"].max()) <= 1.27 + 1e-6
    ref = np.concatenate([run_ort(onnx.load(path), x[i : i + 1])[0] for i in range(len(x))])  # batch 1 in dynamo's
    # rounding dropped: each activation moves by at most half a step (0.005) through fc's weights
    bound = 0.005 * float(np.abs(SevenBit().fc.weight.detach().numpy()).sum(1).max())
    assert float(np.abs(np.asarray(compiled.ann(x)) - ref).max()) <= bound
