"""Quantized ONNX models against onnxruntime: QuantizeLinear / DequantizeLinear (per tensor and per
axis, every supported integer type, opsets 10–21), the QOperator layers QLinearConv and
QLinearMatMul (onnxruntime's com.microsoft ones: test_ort_forms.py), and whole models from
onnxruntime's quantizer and PyTorch's fake quantization."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper

from benchmarks.quantized import ort_quantize
from snncompiler.errors import SnncError
from snncompiler.formats.onnx import load_graph
from snncompiler.runtime import run_graph

from .helpers import assert_within_one_step, build, init, rand, run_ort, run_snn

#: the operators this module tests against onnxruntime (test_op_parity checks every converter's op is listed somewhere)
QUANTIZATION_OP_TYPES = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul"}
_NP = {
    TensorProto.UINT8: np.uint8,
    TensorProto.INT8: np.int8,
    TensorProto.UINT16: np.uint16,
    TensorProto.INT16: np.int16,
}


def _qdq_model(elem_type, *, opset, scale, zero, axis=None, shape=(2, 3, 4, 5), dequantize=True):
    """x → QuantizeLinear (→ DequantizeLinear): the integer or the dequantized output."""
    kw = {} if axis is None else {"axis": axis}
    inits = [init("s", np.asarray(scale, np.float32))]
    q_inputs = ["x", "s"]
    if zero is not None:
        inits.append(init("z", np.asarray(zero, _NP[elem_type])))
        q_inputs.append("z")
    nodes = [helper.make_node("QuantizeLinear", q_inputs, ["q"], **kw)]
    if dequantize:
        nodes.append(helper.make_node("DequantizeLinear", ["q", *q_inputs[1:]], ["y"], **kw))
        return build(nodes, [("x", list(shape))], [("y", list(shape))], inits, opset=opset)
    return build(nodes, [("x", list(shape))], [("q", list(shape), elem_type)], inits, opset=opset)


def _exact(model, x):
    got, ref = run_snn(model, x)[0], run_ort(model, x)[0]
    assert got.dtype == ref.dtype, (got.dtype, ref.dtype)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("opset", [10, 13, 19, 21])
@pytest.mark.parametrize(
    "elem_type, zero", [(TensorProto.UINT8, 128), (TensorProto.INT8, -3), (TensorProto.UINT8, None)]
)
@pytest.mark.parametrize("dequantize", [False, True])
def test_per_tensor(opset, elem_type, zero, dequantize):
    # values on exact ties (k + ½)·s round half to even; ±9 saturate at both ends of the grid
    x = rand([2, 3, 4, 5], 0, -9, 9)
    x.reshape(-1)[:8] = np.float32(0.05) * np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 100.5], np.float32)
    _exact(_qdq_model(elem_type, opset=opset, scale=0.05, zero=zero, dequantize=dequantize), x)


@pytest.mark.parametrize("elem_type, zero", [(TensorProto.UINT16, 30000), (TensorProto.INT16, -7)])
def test_16_bit_types(elem_type, zero):
    x = rand([2, 3, 4, 5], 1, -40, 40)
    _exact(_qdq_model(elem_type, opset=21, scale=1e-3, zero=zero, dequantize=False), x)
    _exact(_qdq_model(elem_type, opset=21, scale=1e-3, zero=zero), x)


@pytest.mark.parametrize("axis", [1, 3, -1])
@pytest.mark.parametrize("opset", [13, 21])
def test_per_axis(axis, opset):
    shape = (2, 3, 4, 5)
    n = shape[axis]
    scale = np.linspace(0.01, 0.2, n).astype(np.float32)
    zero = np.arange(n, dtype=np.int8) - 2
    x = rand(list(shape), 2, -5, 5)
    _exact(_qdq_model(TensorProto.INT8, opset=opset, scale=scale, zero=zero, axis=axis, dequantize=False), x)
    _exact(_qdq_model(TensorProto.INT8, opset=opset, scale=scale, zero=zero, axis=axis), x)


@pytest.mark.parametrize("dequantize", [False, True])
@pytest.mark.parametrize(
    "elem_type, zero, axis",
    [(TensorProto.UINT4, 3, None), (TensorProto.INT4, -2, None), (TensorProto.INT4, [0, -1, 2], 1)],
)
def test_4_bit_types(elem_type, zero, axis, dequantize):
    """Opset 21's uint4 and int4, held in 8 bits: the same integers as onnxruntime's (saturated
    at 0…15 and −8…7) and the same dequantized values."""
    scale = np.float32(0.1) if axis is None else np.array([0.1, 0.05, 0.2], np.float32)
    zeros = np.atleast_1d(zero)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **({} if axis is None else {"axis": axis}))]
    if dequantize:
        nodes.append(
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **({} if axis is None else {"axis": axis}))
        )
    else:  # onnxruntime's Python API cannot return a 4-bit tensor: the integers as int32
        nodes.append(helper.make_node("Cast", ["q"], ["y"], to=TensorProto.INT32))
    z = helper.make_tensor("z", elem_type, [] if axis is None else [len(zeros)], zeros.tolist())
    out = ("y", [2, 3, 4, 5]) if dequantize else ("y", [2, 3, 4, 5], TensorProto.INT32)
    model = build(nodes, [("x", [2, 3, 4, 5])], [out], [init("s", scale), z], opset=21)
    x = rand([2, 3, 4, 5], 4, -2, 2)
    x.reshape(-1)[:4] = np.float32(0.1) * np.array([0.5, 1.5, -2.5, 30.0], np.float32)  # ties and saturation
    got, ref = run_snn(model, x)[0], run_ort(model, x)[0]
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)
    if not dequantize:
        lo, hi = (0, 15) if elem_type == TensorProto.UINT4 else (-8, 7)
        assert got.min() == lo and got.max() == hi  # both ends of the grid reached: saturation tested


def test_output_dtype_without_zero_point():
    """Opset 21: without a zero point, output_dtype chooses the type."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s"], ["q"], output_dtype=TensorProto.INT8)]
    model = build(nodes, [("x", [2, 6])], [("q", [2, 6], TensorProto.INT8)], [init("s", np.float32(0.1))], opset=21)
    _exact(model, rand([2, 6], 3, -20, 20))


def _qlinear(op, x_shape, w, w_scale, w_zero, bias=None, **attrs):
    """x → QuantizeLinear → ``op`` (QLinearConv / QLinearMatMul) → DequantizeLinear."""
    inits = [
        init("xs", np.float32(0.02)),
        init("xz", np.uint8(100)),
        init("w", w),
        init("ws", w_scale),
        init("wz", w_zero),
        init("ys", np.float32(0.05)),
        init("yz", np.uint8(90)),
    ]
    inputs = ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"]
    if bias is not None:
        inits.append(init("b", bias))
        inputs.append("b")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node(op, inputs, ["yq"], **attrs),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    return build(nodes, [("x", list(x_shape))], ["y"], inits, opset=13)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("attrs", [{}, {"strides": [2, 2], "pads": [1, 1, 1, 1]}, {"group": 2, "pads": [1, 0, 1, 0]}])
def test_qlinear_conv(per_channel, attrs):
    g = np.random.default_rng(4)
    cin = 4
    w = g.integers(-127, 128, size=(6, cin // attrs.get("group", 1), 3, 3)).astype(np.int8)
    scale = (g.uniform(0.001, 0.004, 6) if per_channel else np.array(0.002)).astype(np.float32)
    zero = np.zeros(scale.shape, np.int8)
    bias = g.integers(-2000, 2000, 6).astype(np.int32)
    model = _qlinear("QLinearConv", (2, cin, 7, 7), w, scale, zero, bias, **attrs)
    assert_within_one_step(model, rand([2, cin, 7, 7], 5, 0, 4), 0.05)


@pytest.mark.parametrize("per_channel", [False, True])
def test_qlinear_matmul(per_channel):
    g = np.random.default_rng(6)
    w = g.integers(0, 256, size=(12, 5)).astype(np.uint8)
    scale = (g.uniform(0.001, 0.004, 5) if per_channel else np.array(0.002)).astype(np.float32)
    zero = np.full(scale.shape, 128, np.uint8)
    assert_within_one_step(_qlinear("QLinearMatMul", (3, 12), w, scale, zero), rand([3, 12], 7, 0, 4), 0.05)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"block_size": 2}, "blocked quantization"),
        (
            {"zero": helper.make_tensor("z", TensorProto.FLOAT8E4M3FN, [], [0])},
            "quantized type FLOAT8E4M3FN is not supported",
        ),
        ({"axis": 0, "scale": np.full(2, 0.1, np.float32)}, "axis 0, the batch axis"),
        ({"scale": np.float32(0.0)}, "scales must be positive and finite"),
        ({"scale": np.full(3, 0.1, np.float32), "axis": 3}, "3 scales for 5 entries along axis 3"),
    ],
)
def test_refusals_name_the_node(change, message):
    scale = change.get("scale", np.float32(0.1))
    zero = change.get("zero", np.uint8(0))
    attrs = {k: change[k] for k in ("block_size", "axis") if k in change}
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="quant1", **attrs)
    dq = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **{k: v for k, v in attrs.items()})
    graph = helper.make_graph(
        [node, dq],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 5])],
        [init("s", scale), zero if isinstance(zero, onnx.TensorProto) else init("z", zero)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    with pytest.raises(SnncError, match=message) as err:
        load_graph(model)
    assert "quant1" in str(err.value) or "QuantizeLinear" in str(err.value)


def test_scale_must_be_constant():
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("QuantizeLinear", ["x", "m"], ["q"], name="dyn"),
    ]
    model = build(nodes, [("x", [2, 3])], [("q", [2, 3], TensorProto.UINT8)], opset=18)
    with pytest.raises(SnncError, match="dyn.*QuantizeLinear scale must be a constant"):
        load_graph(model)


# ---- whole models ------------------------------------------------------------------------
class _SmallCNN(nn.Sequential):
    def __init__(self):
        super().__init__(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8 * 4 * 4, 10),
        )


@pytest.fixture(scope="module")
def float_cnn(tmp_path_factory):
    from snncompiler.formats.onnx.from_torch import export_onnx

    torch.manual_seed(0)
    return str(export_onnx(_SmallCNN(), (1, 8, 8), tmp_path_factory.mktemp("q") / "float.onnx"))


@pytest.mark.parametrize("quant_format", ["QDQ", "QOperator"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_onnxruntime_quantized_model(float_cnn, tmp_path, quant_format, per_channel):
    """The model onnxruntime's quantizer writes runs as onnxruntime runs it (QOperator: its
    QLinearConv and com.microsoft QGemm, with MaxPool and Flatten on the integers between)."""
    qoperator = quant_format == "QOperator"
    path = ort_quantize(
        float_cnn,
        str(tmp_path / "q.onnx"),
        rand([64, 1, 8, 8], 10, 0, 1),
        quant_format=quant_format,
        per_channel=per_channel,
    )
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert ("QLinearConv" in ops) == ("QGemm" in ops) == qoperator
    x = rand([8, 1, 8, 8], 20, 0, 1)
    got, ref = np.asarray(run_graph(load_graph(path), x)), run_ort(onnx.load(path), x)[0]
    step = float(np.abs(ref).max()) / 100  # a fraction of the output grid's step at most
    assert np.abs(got - ref).max() <= step, np.abs(got - ref).max()


def test_onnxruntime_4_bit_model(float_cnn, tmp_path):
    """onnxruntime's quantizer with 4-bit activations (QuantType.QUInt4, opset 21): snnc's ANN
    runs it as onnxruntime runs it unoptimised, ``OrtModel`` loads it even where onnxruntime's
    optimiser fuses it into a QLinearConv with no 4-bit kernel, and compile makes its grids
    neurons (no analog islands)."""
    import onnx.version_converter
    import onnxruntime as ort

    import snncompiler as snnc
    from snncompiler.formats.onnx.ort import OrtModel

    opset21 = str(tmp_path / "float21.onnx")
    onnx.save(onnx.version_converter.convert_version(onnx.load(float_cnn), 21), opset21)
    calib = rand([64, 1, 8, 8], 10, 0, 1)
    path = ort_quantize(opset21, str(tmp_path / "q4.onnx"), calib, activation_type="QUInt4")
    zero_types = {t.data_type for t in onnx.load(path).graph.initializer if t.name.endswith("zero_point")}
    assert TensorProto.UINT4 in zero_types
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    x = rand([8, 1, 8, 8], 20, 0, 1)
    (ref,) = session.run(None, {session.get_inputs()[0].name: x})
    step = float(np.abs(ref).max()) / 100  # a fraction of the output grid's step at most
    assert np.abs(np.asarray(run_graph(load_graph(path), x)) - ref).max() <= step
    np.testing.assert_array_equal(OrtModel(path)(x), ref)
    compiled = snnc.compile(path, calib)
    assert len(compiled.graph.find("neuron")) == 2 and not compiled.report["analog_islands"]


class _FakeQuantCNN(nn.Module):
    """Quantization-aware training's forward pass: fake-quantized weights (per channel) and
    activations (per tensor, uint8 after the ReLUs), as torch exports it to Q/DQ pairs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        w = self.conv.weight
        scales = (w.detach().abs().amax((1, 2, 3)) / 127).float()
        w = torch.fake_quantize_per_channel_affine(w, scales, torch.zeros(4, dtype=torch.int32), 0, -128, 127)
        h = torch.relu(nn.functional.conv2d(x, w, self.conv.bias, padding=1))
        h = torch.fake_quantize_per_tensor_affine(h, 0.02, 0, 0, 255)
        return self.fc(h.flatten(1))


def export_fake_quant_cnn(path) -> str:
    """:class:`_FakeQuantCNN` through torch's TorchScript exporter (opset 13, dynamic batch)."""
    torch.onnx.export(
        _FakeQuantCNN().eval(),
        torch.zeros(1, 1, 8, 8),
        str(path),
        dynamo=False,
        opset_version=13,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "N"}},
    )
    return str(path)


def test_torch_fake_quantization_export(tmp_path):
    """torch.onnx exports fake quantization as QuantizeLinear/DequantizeLinear pairs; the
    weights' pairs fold into float weights at load time."""
    path = export_fake_quant_cnn(tmp_path / "qat.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") >= 2
    graph = load_graph(str(path))
    assert [n.op for n in graph.nodes if n.op in ("quantize", "dequantize")] == ["quantize", "dequantize"]
    x = rand([4, 1, 8, 8], 30, 0, 1)
    np.testing.assert_allclose(np.asarray(run_graph(graph, x)), run_ort(onnx.load(str(path)), x)[0], atol=1e-5)
