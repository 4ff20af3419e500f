"""onnxruntime's forms of layers, rewritten as standard ONNX at load time
(formats/onnx/ort_forms.py): its com.microsoft QOperator layers (what its quantizer writes with
QuantFormat.QOperator) and the integer-domain operators between them, its dynamic quantization,
and the fusions its optimiser saves; each against onnxruntime running the model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from benchmarks.quantized import ort_quantize
from snncompiler.errors import SnncError
from snncompiler.formats.onnx import load_graph, supported_ops
from snncompiler.formats.onnx.ort_forms import MS_DOMAIN
from snncompiler.formats.onnx.reader import is_artifact

from .helpers import assert_within_one_step, init, rand, run_ort, run_snn, vinfo

#: the com.microsoft operators this module tests against onnxruntime
MS_OP_TYPES = {
    "QLinearAdd",
    "QLinearMul",
    "QLinearGlobalAveragePool",
    "QLinearAveragePool",
    "QLinearConcat",
    "QLinearLeakyRelu",
    "QLinearSigmoid",
    "QLinearSoftmax",
    "QLinearWhere",
    "QGemm",
    "QLinearConv",
    "FusedConv",
    "FusedGemm",
    "NhwcMaxPool",
}
XS, XZ, YS, YZ = np.float32(0.02), np.uint8(100), np.float32(0.03), np.uint8(120)
STEP = float(YS)  # one step of the output grid


def _model(nodes, inputs, inits, output_rank: int = 4) -> onnx.ModelProto:
    """x → QuantizeLinear (xs, xz) → ``nodes`` (reading "xq", writing "yq") → DequantizeLinear
    (ys, yz) → y of rank ``output_rank``, in a model that imports com.microsoft."""
    quantize = helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"])
    dequantize = helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])
    graph = helper.make_graph(
        [quantize, *nodes, dequantize],
        "qoperator",
        [vinfo(*i) for i in inputs],
        [vinfo("y", [f"d{i}" for i in range(output_rank)])],
        [init("xs", XS), init("xz", XZ), init("ys", YS), init("yz", YZ), *inits],
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid(MS_DOMAIN, 1)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="snncompiler-tests")
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def _ms(op: str, inputs: list[str], **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, ["yq"], domain=MS_DOMAIN, **attrs)


def _unary(op: str, shape, **attrs) -> onnx.ModelProto:
    return _model([_ms(op, ["xq", "xs", "xz", "ys", "yz"], **attrs)], [("x", shape)], [], len(shape))


X4 = rand([2, 3, 5, 5], 1, -1.5, 3.0)


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("other", ["activation", "constant"])
def test_binary(op, other):
    """A second quantized operand on its own grid, an activation or a broadcast constant."""
    inits = [init("bs", np.float32(0.01)), init("bz", np.uint8(30))]
    inputs = [("x", [2, 3, 5, 5])]
    if other == "constant":
        inits.append(init("bq", np.arange(3, dtype=np.uint8).reshape(3, 1, 1) * 40))
    else:
        inputs.append(("b", [2, 3, 5, 5]))
    nodes = [] if other == "constant" else [helper.make_node("QuantizeLinear", ["b", "bs", "bz"], ["bq"])]
    nodes.append(_ms(op, ["xq", "xs", "xz", "bq", "bs", "bz", "ys", "yz"]))
    model = _model(nodes, inputs, inits)
    xs = [X4] if other == "constant" else [X4, rand([2, 3, 5, 5], 2, -0.3, 2.0)]
    assert_within_one_step(model, xs, STEP)


#: a mean of k integers lands on a rounding tie (x.5 steps) in up to a 1/k of the outputs;
#: onnxruntime rounds those exactly (to even), snnc's float32 mean can sit an ulp off the tie
#: (test_ties_are_where_pools_differ), so pools may differ by one step in this fraction
POOL_TIES = 0.05
X_POOL = rand([2, 8, 12, 12], 1, -1.5, 3.0)


@pytest.mark.parametrize("channels_last", [0, 1])
def test_global_average_pool(channels_last):
    x = rand([4, 32, 6, 6], 15, -1.5, 3.0)  # 128 means
    model = _unary("QLinearGlobalAveragePool", list(x.shape), channels_last=channels_last)
    assert_within_one_step(model, x, STEP, POOL_TIES)


@pytest.mark.parametrize("channels_last", [0, 1])
@pytest.mark.parametrize(
    "attrs",
    [
        {"kernel_shape": [2, 2], "strides": [2, 2]},
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 0},
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1},
        # the last windows reach past the padding: onnxruntime divides them by 9 too
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1, "ceil_mode": 1, "strides": [2, 2]},
        {"kernel_shape": [3, 3], "pads": [0, 1, 1, 0], "count_include_pad": 1, "ceil_mode": 1, "strides": [2, 3]},
        {"kernel_shape": [2, 2], "count_include_pad": 0, "ceil_mode": 1, "strides": [2, 2]},
    ],
)
def test_average_pool(channels_last, attrs):
    model = _unary("QLinearAveragePool", [2, 8, 12, 12], channels_last=channels_last, **attrs)
    assert_within_one_step(model, X_POOL, STEP, POOL_TIES)


def test_ties_are_where_pools_differ():
    """Where snnc's 2×2 mean and onnxruntime's differ, the exact mean (float64, from the
    integers) is a rounding tie: the difference is float32's, not a misread layer."""
    import torch

    model = _unary("QLinearAveragePool", [2, 8, 12, 12], kernel_shape=[2, 2], strides=[2, 2])
    got, ref = run_snn(model, X_POOL)[0], run_ort(model, X_POOL)[0]
    integers = np.clip(np.round(X_POOL / XS) + float(XZ), 0, 255)
    dequantized = torch.from_numpy((integers - float(XZ)) * float(XS))
    exact = torch.nn.functional.avg_pool2d(dequantized, 2).numpy() / float(YS) + float(YZ)
    differ = np.abs(got - ref) > STEP / 2
    assert differ.any()  # ties do occur on this input, so the check below is not vacuous
    np.testing.assert_allclose(exact[differ] % 1, 0.5, atol=1e-9)
    np.testing.assert_array_equal(ref[differ] / YS + float(YZ), np.round(exact[differ]).round())


def test_concat():
    """Each input on its own grid, the output on a third."""
    nodes = [
        helper.make_node("QuantizeLinear", ["b", "bs", "bz"], ["bq"]),
        _ms("QLinearConcat", ["ys", "yz", "xq", "xs", "xz", "bq", "bs", "bz"], axis=1),
    ]
    inits = [init("bs", np.float32(0.05)), init("bz", np.uint8(10))]
    model = _model(nodes, [("x", [2, 3, 5, 5]), ("b", [2, 2, 5, 5])], inits)
    assert_within_one_step(model, [X4, rand([2, 2, 5, 5], 3, -0.4, 4.0)], STEP)


@pytest.mark.parametrize(
    "op, attrs",
    [("QLinearLeakyRelu", {"alpha": 0.2}), ("QLinearLeakyRelu", {}), ("QLinearSigmoid", {})],
)
def test_activation(op, attrs):
    assert_within_one_step(_unary(op, [2, 3, 5, 5], **attrs), X4, STEP)


@pytest.mark.parametrize("opset, axis", [(13, -1), (13, 1), (12, 1), (12, 2)])
def test_softmax(opset, axis):
    """Along one axis from opset 13; before it, over the input flattened to 2-D at ``axis``."""
    nodes = [_ms("QLinearSoftmax", ["xq", "xs", "xz", "ys2", "yz2"], opset=opset, axis=axis)]
    model = _model(nodes, [("x", [2, 3, 5, 5])], [init("ys2", np.float32(1 / 256)), init("yz2", np.uint8(0))])
    assert_within_one_step(model, X4, 1 / 256)


def test_where():
    cond = np.random.default_rng(3).random([1, 3, 5, 5]) > 0.5
    nodes = [
        helper.make_node("QuantizeLinear", ["b", "bs", "bz"], ["bq"]),
        _ms("QLinearWhere", ["c", "xq", "xs", "xz", "bq", "bs", "bz", "ys", "yz"]),
    ]
    inits = [init("c", cond), init("bs", np.float32(0.01)), init("bz", np.uint8(30))]
    model = _model(nodes, [("x", [2, 3, 5, 5]), ("b", [2, 3, 5, 5])], inits)
    assert_within_one_step(model, [X4, rand([2, 3, 5, 5], 4, -0.3, 2.0)], STEP)


@pytest.mark.parametrize("per_column", [False, True])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("bias", [False, True])
def test_qgemm(per_column, trans_b, alpha, bias):
    """Weights per tensor or per column, transposed or not, with an int32 C on the
    alpha · a_scale · b_scale grid or without one."""
    g = np.random.default_rng(5)
    w = g.integers(-127, 128, size=(6, 12) if trans_b else (12, 6)).astype(np.int8)
    w_scale = (g.uniform(0.002, 0.006, 6) if per_column else np.array(0.004)).astype(np.float32)
    inits = [init("w", w), init("ws", w_scale), init("wz", np.zeros(w_scale.shape, np.int8))]
    inputs = ["xq", "xs", "xz", "w", "ws", "wz", "c" if bias else "", "ys", "yz"]
    if bias:
        inits.append(init("c", g.integers(-3000, 3000, 6).astype(np.int32)))
    node = _ms("QGemm", inputs, transB=trans_b, alpha=alpha)
    assert_within_one_step(_model([node], [("x", [4, 12])], inits, 2), rand([4, 12], 6, -1.0, 2.0), STEP)


def test_qgemm_float_output():
    """Without y_scale QGemm's output is float: the model's output is the Gemm's."""
    g = np.random.default_rng(7)
    inits = [init("w", g.integers(-127, 128, size=(12, 6)).astype(np.int8)), init("ws", np.float32(0.004))]
    inits += [init("wz", np.int8(0)), init("xs", XS), init("xz", XZ)]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("QGemm", ["xq", "xs", "xz", "w", "ws", "wz"], ["y"], domain=MS_DOMAIN),
    ]
    graph = helper.make_graph(nodes, "qgemm", [vinfo("x", [4, 12])], [vinfo("y", ["n", "k"])], inits)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid(MS_DOMAIN, 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    x = rand([4, 12], 8, -1.0, 2.0)
    got, ref = run_snn(model, x)[0], run_ort(model, x)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_channels_last_conv():
    """com.microsoft's QLinearConv on NHWC tensors (what onnxruntime's layout optimiser writes)."""
    g = np.random.default_rng(9)
    w = g.integers(-127, 128, size=(4, 3, 3, 3)).astype(np.int8)
    inits = [init("w", w), init("ws", np.float32(0.003)), init("wz", np.int8(0))]
    inits.append(init("b", g.integers(-500, 500, 4).astype(np.int32)))
    node = _ms("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], channels_last=1, pads=[1, 1, 1, 1])
    model = _model([node], [("x", [2, 5, 5, 3])], inits)
    assert_within_one_step(model, rand([2, 5, 5, 3], 10, -1.5, 3.0), STEP)


@pytest.mark.parametrize(
    "op, attrs, extra",
    [
        ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}, []),
        ("Flatten", {}, []),
        ("Transpose", {"perm": [0, 2, 3, 1]}, []),
        ("Pad", {}, ["pads"]),  # the default pad value: integer 0, below the zero point
        ("Pad", {}, ["pads", "pad_value"]),  # the zero point: float 0
        ("Pad", {"mode": "edge"}, ["pads"]),
    ],
)
def test_integer_ops_between_layers(op, attrs, extra):
    """Operators onnxruntime leaves on the integers between QOperator layers run on their floats
    and quantize back onto the same grid: the same integers."""
    inits = [init("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)), init("pad_value", XZ)]
    nodes = [
        helper.make_node(op, ["xq", *extra], ["mq"], **attrs),
        _ms("QLinearLeakyRelu", ["mq", "xs", "xz", "ys", "yz"], alpha=0.1),
    ]
    model = _model(nodes, [("x", [2, 3, 4, 4])], inits, 2 if op == "Flatten" else 4)
    assert_within_one_step(model, rand([2, 3, 4, 4], 11, -1.5, 3.0), STEP)


def test_integer_ops_in_a_qdq_model():
    """The same in a model with no QOperator layer: Conv → QuantizeLinear → MaxPool and Flatten
    on the integers → DequantizeLinear → Gemm equals onnxruntime, and compiles with its grid as
    one neuron, no analog island."""
    import snncompiler as snnc

    g = np.random.default_rng(17)
    inits = [
        init("w", g.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32)),
        init("fc", g.normal(0, 0.5, (4 * 4 * 4, 3)).astype(np.float32)),
        init("s", np.float32(0.05)),
        init("z", np.uint8(0)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "s", "z"], ["q"]),
        helper.make_node("MaxPool", ["q"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("DequantizeLinear", ["f", "s", "z"], ["d"]),
        helper.make_node("MatMul", ["d", "fc"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "qdq", [vinfo("x", [1, 1, 8, 8])], [vinfo("y", [1, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    x = rand([1, 1, 8, 8], 18, 0, 1)
    np.testing.assert_allclose(run_snn(model, x)[0], run_ort(model, x)[0], rtol=1e-5, atol=1e-5)
    compiled = snnc.compile(model, rand([32, 1, 8, 8], 19, 0, 1))
    assert len(compiled.graph.find("neuron")) == 1 and not compiled.report["analog_islands"]


def test_argmax_of_a_quantized_tensor():
    """An index of the integers (onnxruntime's QArgMax) is the index of their floats."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        _ms("QLinearSigmoid", ["xq", "xs", "xz", "ys", "yz"]),
        helper.make_node("ArgMax", ["yq"], ["y"], axis=1, keepdims=0),
    ]
    inits = [init("xs", XS), init("xz", XZ), init("ys", YS), init("yz", YZ)]
    graph = helper.make_graph(nodes, "argmax", [vinfo("x", [6, 10])], [vinfo("y", ["n"], TensorProto.INT64)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS_DOMAIN, 1)])
    model.ir_version = 10
    x = rand([6, 10], 12, -1.5, 3.0)
    np.testing.assert_array_equal(run_snn(model, x)[0], run_ort(model, x)[0])


def test_unsupported_com_microsoft_op_is_named():
    """A com.microsoft node without a rewrite: one line naming it and what is read."""
    model = _model([_ms("QLinearGelu", ["xq", "xs", "xz", "ys", "yz"])], [("x", [2, 3])], [], 2)
    with pytest.raises(SnncError, match=r"node QLinearGelu '.*com\.microsoft::QLinearGelu is not supported.*QGemm"):
        load_graph(model)


def test_unsupported_com_microsoft_op_on_the_command_line(tmp_path):
    """``snnc compile``: exit code 2, one line naming the file and the node, no traceback."""
    from tests.test_cli_ux import snnc_cli

    path = tmp_path / "gelu.onnx"
    onnx.save(_model([_ms("QLinearGelu", ["xq", "xs", "xz", "ys", "yz"], name="act")], [("x", [2, 3])], [], 2), path)
    np.savez(tmp_path / "calib.npz", x=rand([4, 2, 3], 16))
    r = snnc_cli("compile", path, "--calib", tmp_path / "calib.npz", "-o", tmp_path / "out.snn.onnx")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "gelu.onnx" in lines[0] and "'act'" in lines[0], lines
    assert not (tmp_path / "out.snn.onnx").exists()


def test_a_qoperator_model_is_not_an_artifact():
    """Nodes in com.microsoft make a model onnxruntime's, not a compiled one."""
    model = _unary("QLinearSigmoid", [2, 3])
    assert not is_artifact(model)
    assert [n.op for n in load_graph(model).nodes] == ["quantize", "dequantize", "sigmoid", "quantize", "dequantize"]


def test_every_com_microsoft_op_is_tested():
    read = {op.split("::")[1] for op in supported_ops() if op.startswith(f"{MS_DOMAIN}::")}
    assert read == MS_OP_TYPES, read ^ MS_OP_TYPES


@pytest.fixture(scope="module")
def float_resnet(tmp_path_factory):
    """A small residual network (Add, GlobalAveragePool, Gemm) for onnxruntime's quantizer."""
    import torch
    import torch.nn as nn

    from snncompiler.formats.onnx.from_torch import export_onnx

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU())
            self.body = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1))
            self.pool = nn.Sequential(nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(6, 4)

        def forward(self, x):
            x = self.stem(x)
            x = torch.relu(x + self.body(x))
            return self.head(self.pool(x))

    torch.manual_seed(0)
    return str(export_onnx(Residual().eval(), (1, 8, 8), tmp_path_factory.mktemp("qop") / "float.onnx"))


def test_onnxruntime_qoperator_model_compiles_as_its_qdq_twin(float_resnet, tmp_path):
    """onnxruntime's QOperator model (QLinearConv, QLinearAdd, MaxPool on integers,
    QLinearGlobalAveragePool, QGemm) runs as onnxruntime runs it, and compiles to the SNN its
    QDQ twin compiles to: the same neurons, no analog islands, the same outputs at T=4."""
    import snncompiler as snnc

    calib = rand([64, 1, 8, 8], 13, 0, 1)
    qop = ort_quantize(float_resnet, str(tmp_path / "qop.onnx"), calib, quant_format="QOperator")
    qdq = ort_quantize(float_resnet, str(tmp_path / "qdq.onnx"), calib)
    ms_ops = {n.op_type for n in onnx.load(qop).graph.node if n.domain == MS_DOMAIN}
    assert {"QLinearAdd", "QLinearGlobalAveragePool", "QGemm"} <= ms_ops, ms_ops
    x = rand([16, 1, 8, 8], 14, 0, 1)
    assert_within_one_step(onnx.load(qop), x, float(np.abs(run_ort(onnx.load(qop), x)[0]).max()) / 50)
    compiled = {path: snnc.compile(path, calib, seed=0) for path in (qop, qdq)}
    neurons = [len(model.graph.find("neuron")) for model in compiled.values()]
    assert neurons[0] == neurons[1] >= 3, neurons
    assert not any(model.report["analog_islands"] for model in compiled.values())
    out = [np.asarray(model.run(x, timesteps=4)) for model in compiled.values()]
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def dynamic_models(tmp_path_factory):
    """onnxruntime's quantize_dynamic of a small MLP and CNN, per tensor and per channel."""
    import torch
    import torch.nn as nn
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from snncompiler.formats.onnx.from_torch import export_onnx

    folder = tmp_path_factory.mktemp("dynamic")
    torch.manual_seed(0)
    nets = {
        "mlp": (nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 3)), (30,)),
        "cnn": (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3)), (1, 8, 8)),
    }
    paths = {}
    for name, (net, shape) in nets.items():
        float_path = export_onnx(net.eval(), shape, folder / f"{name}.onnx")
        for per_channel in (False, True):
            path = folder / f"{name}_{per_channel}.onnx"
            quantize_dynamic(str(float_path), str(path), per_channel=per_channel, weight_type=QuantType.QInt8)
            paths[name, per_channel] = (str(path), shape)
    return paths


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_quantization(dynamic_models, name, per_channel):
    """onnxruntime's dynamic quantization (DynamicQuantizeLinear → MatMulInteger / ConvInteger →
    Cast → Mul by x_scale · w_scale) reads as the float layers with the dequantized weights:
    onnxruntime's output but for its activations' 8-bit rounding, and it compiles with a neuron
    per ReLU and no analog island."""
    import snncompiler as snnc

    path, shape = dynamic_models[name, per_channel]
    model = onnx.load(path)
    ops = {n.op_type for n in model.graph.node}
    assert "DynamicQuantizeLinear" in ops and ({"MatMulInteger", "ConvInteger"} & ops)
    graph = load_graph(path)
    assert not {"unsupported", "dequantize", "quantize"} & {n.op for n in graph.nodes}
    x = rand([64, *shape], 20, 0, 1)
    got, ref = run_snn(model, x)[0], run_ort(model, x)[0]
    # 8-bit activations: a few tenths of a percent of the output's range, far below what a
    # misread scale or axis would give (tens of percent)
    assert np.abs(got - ref).max() <= 0.02 * np.abs(ref).max(), np.abs(got - ref).max()
    compiled = snnc.compile(path, rand([64, *shape], 21, 0, 1))
    assert len(compiled.graph.find("neuron")) == 1 and not compiled.report["analog_islands"]


def test_dynamic_quantization_in_another_form_is_named():
    """A MatMulInteger whose input is not a DynamicQuantizeLinear's: one line naming it."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("MatMulInteger", ["xq", "w", "xz"], ["acc"], name="mmi"),
        helper.make_node("Cast", ["acc"], ["y"], to=TensorProto.FLOAT),
    ]
    inits = [init("xs", XS), init("xz", XZ), init("w", np.ones((3, 2), np.uint8))]
    graph = helper.make_graph(nodes, "mmi", [vinfo("x", [2, 3])], [vinfo("y", [2, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    with pytest.raises(SnncError, match=r"node MatMulInteger 'mmi': its input is not a DynamicQuantizeLinear's"):
        load_graph(model)


def _ms_model(nodes, inputs, inits, output_rank: int) -> onnx.ModelProto:
    """A float model of ``nodes`` (reading "x", writing "y") that imports com.microsoft."""
    graph = helper.make_graph(
        nodes, "fused", [vinfo(*i) for i in inputs], [vinfo("y", [f"d{i}" for i in range(output_rank)])], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS_DOMAIN, 1)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


ACTIVATIONS = [
    ("Relu", []),
    ("LeakyRelu", [0.2]),
    ("Sigmoid", []),
    ("Tanh", []),
    ("HardSigmoid", [0.3, 0.4]),
    ("Clip", [-0.5, 0.8]),
    ("", []),
]


@pytest.mark.parametrize("activation, params", ACTIVATIONS)
@pytest.mark.parametrize("with_sum", [False, True])
def test_fused_conv(activation, params, with_sum):
    """FusedConv (what onnxruntime's optimiser saves for Conv [+ Add] + activation) equals
    onnxruntime running it."""
    g = np.random.default_rng(22)
    inits = [init("w", g.normal(0, 0.4, (4, 3, 3, 3))), init("b", g.normal(0, 0.2, 4))]
    inputs = ["x", "w", "b", "z"] if with_sum else ["x", "w", "b"]
    attrs = {"activation": activation} if activation else {}
    if params:
        attrs["activation_params"] = params
    node = helper.make_node("FusedConv", inputs, ["y"], domain=MS_DOMAIN, pads=[1, 1, 1, 1], **attrs)
    shapes = [("x", [2, 3, 6, 6])] + ([("z", [2, 4, 6, 6])] if with_sum else [])
    xs = [rand([2, 3, 6, 6], 23)] + ([rand([2, 4, 6, 6], 24)] if with_sum else [])
    model = _ms_model([node], shapes, inits, 4)
    np.testing.assert_allclose(run_snn(model, *xs)[0], run_ort(model, *xs)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation, params", [a for a in ACTIVATIONS if a[0] not in ("Clip", "")])
def test_fused_gemm(activation, params):
    """FusedGemm (Gemm + activation; onnxruntime has no FusedGemm without one)."""
    g = np.random.default_rng(25)
    attrs = dict(zip(("activation_alpha", "activation_beta"), params), activation=activation)
    node = helper.make_node("FusedGemm", ["x", "w", "c"], ["y"], domain=MS_DOMAIN, transB=1, alpha=0.7, **attrs)
    model = _ms_model([node], [("x", [4, 12])], [init("w", g.normal(0, 0.4, (5, 12))), init("c", g.normal(0, 1, 5))], 2)
    x = rand([4, 12], 26)
    np.testing.assert_allclose(run_snn(model, x)[0], run_ort(model, x)[0], rtol=1e-5, atol=1e-5)


def test_fused_activation_not_read_is_named():
    node = helper.make_node("FusedConv", ["x", "w"], ["y"], domain=MS_DOMAIN, activation="Softplus", name="fc")
    model = _ms_model([node], [("x", [1, 3, 4, 4])], [init("w", np.ones((2, 3, 1, 1), np.float32))], 4)
    with pytest.raises(SnncError, match=r"node FusedConv 'fc': the fused activation 'Softplus'"):
        load_graph(model)


def test_nhwc_max_pool():
    """NhwcMaxPool on quantized NHWC integers (what onnxruntime saves at its highest level)."""
    nodes = [
        helper.make_node("NhwcMaxPool", ["xq"], ["mq"], domain=MS_DOMAIN, kernel_shape=[2, 2], strides=[2, 2]),
        _ms("QLinearLeakyRelu", ["mq", "xs", "xz", "ys", "yz"], alpha=0.1),
    ]
    assert_within_one_step(_model(nodes, [("x", [2, 6, 6, 3])], []), rand([2, 6, 6, 3], 27, -1.5, 3.0), STEP)


def test_onnxruntime_optimised_model(float_resnet, tmp_path):
    """The file onnxruntime's optimiser saves (ORT_ENABLE_EXTENDED: Conv + ReLU and Conv + Add +
    ReLU fused into com.microsoft FusedConv) runs as onnxruntime runs it and compiles to as many
    neurons as the original."""
    import onnxruntime as ort

    import snncompiler as snnc

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(float_resnet, options, providers=["CPUExecutionProvider"])
    optimised = onnx.load(options.optimized_model_filepath)
    assert "FusedConv" in {n.op_type for n in optimised.graph.node if n.domain == MS_DOMAIN}
    x = rand([8, 1, 8, 8], 28, 0, 1)
    np.testing.assert_allclose(run_snn(optimised, x)[0], run_ort(optimised, x)[0], rtol=1e-5, atol=1e-5)
    calib = rand([32, 1, 8, 8], 29, 0, 1)
    neurons = [len(snnc.compile(m, calib).graph.find("neuron")) for m in (float_resnet, optimised)]
    assert neurons[0] == neurons[1] >= 3, neurons
