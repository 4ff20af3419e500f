"""Every ONNX operator as a block between two spiking layers, through the whole product path.

``tests/formats/`` checks each converter against onnxruntime in ANN mode. Here each op sits
between a spiking convolution and a classifier head (``x → Conv → Relu → block → Flatten →
Gemm``), is compiled (θ at the activation maximum, no calibration: what is left is the
conversion's own error), and must

1. converge to onnxruntime's ANN output as T grows: relative error (to the output's largest
   magnitude) at T=512 under 0.05 (measured: 0.011 at most), or 0.15 for the functions with
   jumps (a rate settling next to a jump flips the output; measured 0.08 at most; the same
   under ATEN_CPU_CAPABILITY=default, avx2 and avx512), and
2. give what the runtime gives at T=8 from the reloaded artifact, the torch module
   (``to_torch()``) and the standard-ONNX export run in onnxruntime.

The sweep this file keeps found three crashes that per-op parity could not see (a constant
meeting spikes in an analog island and in a linear op; a bool mask written as float), one NaN
(MeanVarianceNormalization's export of a silent channel) and one wrong answer (a cast to an
integer type ran on each spike, truncating θ = 0.7 to 0, instead of on the rates).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import snncompiler as snnc
from snncompiler.formats.onnx import supported_ops
from snncompiler.ir.ops import PARAMETRIC, UNARY
from tests.formats.helpers import build, init, rand, run_ort

M = helper.make_node
i64 = lambda v: np.array(v, np.int64)
f32 = np.float32

#: name → (nodes reading "r" [N, 8, 4, 4] and writing "g" of 128 values per sample, initializers, opset)
BLOCKS: dict[str, tuple[list, list, int]] = {}
#: blocks of functions with jumps (rounding, masks): a rate settling next to a jump flips the
#: output late, so they get the looser convergence bound
JUMPS = {"Floor", "Ceil", "Round", "Sign", "ThresholdedRelu"}


#: blocks whose constant indices address samples by position (Scatter*, GatherElements): the
#: model is declared at batch 1 and runs sample by sample (to_torch() and the standard export
#: refuse such models in one line, so only the reloaded artifact is compared)
BATCH_BOUND: set[str] = set()


def _block(name: str, nodes, inits=(), opset: int = 21, jumps: bool = False, batch_bound: bool = False) -> None:
    BLOCKS[name] = (list(nodes), list(inits), opset)
    if jumps:
        JUMPS.add(name)
    if batch_bound:
        BATCH_BOUND.add(name)


for _onnx in UNARY.values():  # the pointwise functions, on r + 1 where r = 0 would be a pole
    if _onnx in ("Log", "Reciprocal", "Sqrt"):
        _block(_onnx, [M("Add", ["r", "one"], ["r1"]), M(_onnx, ["r1"], ["g"])], [init("one", f32(1.0))])
    else:
        _block(_onnx, [M(_onnx, ["r"], ["g"])])
for _onnx, _ in PARAMETRIC.values():
    _block(_onnx, [M(_onnx, ["r"], ["g"])])
for _onnx in ("Sigmoid", "Tanh", "HardSwish", "Gelu", "Identity", "Dropout"):
    _block(_onnx, [M(_onnx, ["r"], ["g"])])
_block("Softmax", [M("Softmax", ["r"], ["g"], axis=1)])
_block("LogSoftmax", [M("LogSoftmax", ["r"], ["g"], axis=-1)])
_block("Hardmax", [M("Hardmax", ["r"], ["g"], axis=1)], jumps=True)
_block(
    "IsInf, Not and Where",
    [M("IsInf", ["r"], ["n"]), M("Not", ["n"], ["ok"]), M("Where", ["ok", "r", "zero"], ["g"])],
    [init("zero", f32(0.0))],
)
_block("LRN", [M("LRN", ["r"], ["g"], size=3)])
_block(
    "InstanceNormalization",
    [M("InstanceNormalization", ["r", "s", "b"], ["g"])],
    [init("s", rand([8], 1)), init("b", rand([8], 2))],
)
_block("LayerNormalization", [M("LayerNormalization", ["r", "s"], ["g"], axis=-1)], [init("s", rand([4], 1))])
_block("LpNormalization", [M("LpNormalization", ["r"], ["g"], axis=1)])
_block("MeanVarianceNormalization", [M("MeanVarianceNormalization", ["r"], ["g"], axes=[2, 3])])
_block(
    "BatchNormalization",
    [M("BatchNormalization", ["r", "s", "b", "mu", "var"], ["g"])],
    [init("s", rand([8], 1)), init("b", rand([8], 2)), init("mu", rand([8], 3)), init("var", rand([8], 4, 0.5, 2))],
)
_block(
    "MaxPool",
    [M("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]), M("Resize", ["p", "", "sc"], ["g"])],
    [init("sc", np.array([1, 1, 2, 2], f32))],
)
_block("AveragePool", [M("AveragePool", ["r"], ["g"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])])
_block(
    "GlobalMaxPool",
    [M("GlobalMaxPool", ["r"], ["p"]), M("Expand", ["p", "sh"], ["g"])],
    [init("sh", i64([1, 8, 4, 4]))],
)
_block("GlobalAveragePool", [M("GlobalAveragePool", ["r"], ["p"]), M("Add", ["r", "p"], ["g"])])
_block(
    "Pad and Slice",
    [M("Pad", ["r", "p"], ["pr"], mode="reflect"), M("Slice", ["pr", "s0", "s1", "ax"], ["g"])],
    [
        init("p", i64([0, 0, 1, 1, 0, 0, 1, 1])),
        init("s0", i64([1, 1])),
        init("s1", i64([5, 5])),
        init("ax", i64([2, 3])),
    ],
)
_block(
    "Resize linear",
    [
        M("Resize", ["r", "", "sc"], ["u"], mode="linear"),
        M("AveragePool", ["u"], ["g"], kernel_shape=[2, 2], strides=[2, 2]),
    ],
    [init("sc", np.array([1, 1, 2, 2], f32))],
)
_block(
    "Resize cubic",
    [
        M("Resize", ["r", "", "sc"], ["u"], mode="cubic", cubic_coeff_a=-0.75),
        M("AveragePool", ["u"], ["g"], kernel_shape=[2, 2], strides=[2, 2]),
    ],
    [init("sc", np.array([1, 1, 2, 2], f32))],
)
_block(
    "Upsample",
    [
        M("Upsample", ["r", "sc"], ["u"], mode="nearest"),
        M("AveragePool", ["u"], ["g"], kernel_shape=[2, 2], strides=[2, 2]),
    ],
    [init("sc", np.array([1, 1, 2, 2], f32))],
    opset=9,
)
_block("Transpose", [M("Transpose", ["r"], ["g"], perm=[0, 1, 3, 2])])
_block("Gather", [M("Gather", ["r", "ix"], ["g"], axis=1)], [init("ix", i64([7, 6, 5, 4, 3, 2, 1, 0]))])
_block(
    "Split and Concat",
    [M("Split", ["r", "sp"], ["a", "b"], axis=1), M("Concat", ["b", "a"], ["g"], axis=1)],
    [init("sp", i64([3, 5]))],
)
_block(
    "Tile",
    [M("Slice", ["r", "z", "two", "three"], ["h2"]), M("Tile", ["h2", "rep"], ["g"])],
    [init("z", i64([0])), init("two", i64([2])), init("three", i64([3])), init("rep", i64([1, 1, 1, 2]))],
)
_block("CumSum", [M("CumSum", ["r", "a"], ["g"], reverse=1)], [init("a", i64(2))])
_block(
    "DepthToSpace and SpaceToDepth",
    [M("DepthToSpace", ["r"], ["d"], blocksize=2, mode="CRD"), M("SpaceToDepth", ["d"], ["g"], blocksize=2)],
)
for _red in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceSumSquare"):
    _block(_red, [M(_red, ["r", "ax"], ["m"], keepdims=1), M("Add", ["r", "m"], ["g"])], [init("ax", i64([3]))])
for _red in ("ReduceProd", "ReduceLogSum", "ReduceLogSumExp"):  # on r + 1: a product of zeros says little
    _block(
        _red,
        [M("Add", ["r", "one"], ["r1"]), M(_red, ["r1", "ax"], ["m"], keepdims=1), M("Add", ["r", "m"], ["g"])],
        [init("one", f32(1.0)), init("ax", i64([3]))],
    )
_block("Clip at 0 (spiking)", [M("Clip", ["r", "lo", "hi"], ["g"])], [init("lo", f32(0)), init("hi", f32(1.0))])
_block("Clip analog", [M("Clip", ["r", "lo", "hi"], ["g"])], [init("lo", f32(0.3)), init("hi", f32(1.0))])
_block(
    "PRelu",
    [M("Sub", ["r", "half"], ["s"]), M("PRelu", ["s", "sl"], ["g"])],
    [init("half", f32(0.5)), init("sl", rand([8, 1, 1], 3))],
)
_block("Mul by a constant", [M("Mul", ["r", "v"], ["g"])], [init("v", rand([8, 1, 1], 4))])
_block("Div of a constant", [M("Add", ["r", "one"], ["r1"]), M("Div", ["one", "r1"], ["g"])], [init("one", f32(1.0))])
_block("Sub from a constant", [M("Sub", ["v", "r"], ["g"])], [init("v", rand([4], 4))])
_block("Pow", [M("Pow", ["r", "two"], ["g"])], [init("two", f32(2.0))])
_CONV_R2 = [M("Conv", ["r", "wr"], ["c2"]), M("Relu", ["c2"], ["r2"])]
_WR = [init("wr", rand([8, 8, 1, 1], 5))]
_block("Add (residual)", _CONV_R2 + [M("Add", ["r", "r2"], ["g"])], _WR)
_block("Mul of two activations", _CONV_R2 + [M("Mul", ["r", "r2"], ["g"])], _WR)
_block("Max of two activations", [M("Conv", ["r", "wr"], ["c2"]), M("Max", ["r", "c2"], ["g"])], _WR)
_block("Min with a constant", [M("Min", ["r", "v"], ["g"])], [init("v", rand([4], 4))])
_block("Sum of three", [M("Sum", ["r", "r", "v"], ["g"])], [init("v", rand([4], 4))])
_block("Mean of two", [M("Mean", ["r", "v"], ["g"])], [init("v", rand([4], 4))])
_block("MatMul by a constant", [M("MatMul", ["r", "wm"], ["g"])], [init("wm", rand([4, 4], 6))])
_block("Trilu", [M("Trilu", ["r", "k"], ["g"], upper=0)], [init("k", i64(1))])
# Mod's error is its jump height (the divisor) times the share of values still settling next to
# a jump: 0.068 at T=512 with a divisor of 0.3 here, 0.13-0.40 with divisors of 0.7-2.5
_block("Mod", [M("Mod", ["r", "d"], ["g"], fmod=1)], [init("d", f32(0.3))], jumps=True)
_block(
    "IsNaN, Not and Where",
    [M("IsNaN", ["r"], ["n"]), M("Not", ["n"], ["ok"]), M("Where", ["ok", "r", "zero"], ["g"])],
    [init("zero", f32(0.0))],
)
_block(
    "Einsum with a constant", [M("Einsum", ["r", "we"], ["g"], equation="bchw,cd->bdhw")], [init("we", rand([8, 8], 6))]
)
_block("Einsum of two activations", [M("Einsum", ["r", "r"], ["g"], equation="bcij,bcjk->bcik")])
_block("MatMul of two activations", [M("Transpose", ["r"], ["rt"], perm=[0, 1, 3, 2]), M("MatMul", ["r", "rt"], ["g"])])
_block("Conv grouped", [M("Conv", ["r", "wg"], ["g"], group=4, pads=[1, 1, 1, 1])], [init("wg", rand([8, 2, 3, 3], 7))])
_block(
    "ConvTranspose",
    [
        M("ConvTranspose", ["r", "wt"], ["u"], strides=[2, 2]),
        M("AveragePool", ["u"], ["g"], kernel_shape=[2, 2], strides=[2, 2]),
    ],
    [init("wt", rand([8, 8, 2, 2], 7))],
)
_block(
    "Flatten and Reshape",
    [M("Flatten", ["r"], ["f"]), M("Reshape", ["f", "shp"], ["g"])],
    [init("shp", i64([-1, 8, 4, 4]))],
)
_block(
    "Unsqueeze and Squeeze",
    [M("Unsqueeze", ["r", "u"], ["ru"]), M("Squeeze", ["ru", "u"], ["g"])],
    [init("u", i64([2]))],
)
_block("Shape as a Reshape target", [M("Shape", ["r"], ["s"]), M("Reshape", ["r", "s"], ["g"])])
_block(
    "Constant",
    [
        M("Constant", [], ["k"], value=helper.make_tensor("kv", TensorProto.FLOAT, [8, 1, 1], rand([8], 8).tolist())),
        M("Add", ["r", "k"], ["g"]),
    ],
)
_block(
    "ConstantOfShape",
    [
        M("ConstantOfShape", ["cs"], ["k"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])),
        M("Add", ["r", "k"], ["g"]),
    ],
    [init("cs", i64([4]))],
)
_block(
    "Range",
    [M("Range", ["a", "b", "d"], ["k"]), M("Mul", ["r", "k"], ["g"])],
    [init("a", f32(0.0)), init("b", f32(2.0)), init("d", f32(0.5))],
)
_block(
    "CastLike to int32 and back",
    [M("CastLike", ["r", "i"], ["ri"]), M("CastLike", ["ri", "r"], ["g"])],
    [init("i", np.zeros([1], np.int32))],
    jumps=True,
)
_block(
    "Cast to bool and back",
    [M("Greater", ["r", "half"], ["m"]), M("Cast", ["m"], ["g"], to=TensorProto.FLOAT)],
    [init("half", f32(0.5))],
    jumps=True,
)
_block(
    "QuantizeLinear and DequantizeLinear (fake quantization of spikes: removed)",
    [M("QuantizeLinear", ["r", "qs", "qz"], ["q"]), M("DequantizeLinear", ["q", "qs", "qz"], ["g"])],
    [init("qs", f32(0.01)), init("qz", np.uint8(0))],
)
_block(
    "QuantizeLinear to int8 and Cast back (rounding on the rates)",
    [M("QuantizeLinear", ["r", "qs", "qz"], ["q"]), M("Cast", ["q"], ["g"], to=TensorProto.FLOAT)],
    [init("qs", f32(0.05)), init("qz", np.int8(-3))],
    jumps=True,
)
# the QOperator blocks' grids are wide enough that onnxruntime saturates nothing: compiling drops
# the bounds of signed grids (passes/fake_quant.py), so a saturating one would not converge
_block(
    "QLinearConv",
    [
        M("QuantizeLinear", ["r", "qs", "qz"], ["q"]),
        M("QLinearConv", ["q", "qs", "qz", "w", "ws", "wz", "ys", "yz"], ["c"], pads=[1, 1, 1, 1]),
        M("DequantizeLinear", ["c", "ys", "yz"], ["g"]),
    ],
    [
        init("qs", f32(0.05)),
        init("qz", np.uint8(0)),
        init("w", np.random.default_rng(1).integers(-127, 128, (8, 8, 3, 3)).astype(np.int8)),
        init("ws", np.full(8, 0.002, f32)),
        init("wz", np.zeros(8, np.int8)),
        init("ys", f32(0.1)),
        init("yz", np.uint8(128)),
    ],
    opset=13,
)
_block(
    "QLinearMatMul",
    [
        M("QuantizeLinear", ["r", "qs", "qz"], ["q"]),
        M("QLinearMatMul", ["q", "qs", "qz", "w", "ws", "wz", "ys", "yz"], ["c"]),
        M("DequantizeLinear", ["c", "ys", "yz"], ["g"]),
    ],
    [
        init("qs", f32(0.05)),
        init("qz", np.uint8(0)),
        init("w", np.random.default_rng(2).integers(0, 256, (4, 4)).astype(np.uint8)),
        init("ws", f32(0.01)),
        init("wz", np.uint8(128)),
        init("ys", f32(0.25)),
        init("yz", np.uint8(128)),
    ],
    opset=13,
)
_block(
    "Equal and Where",
    [M("Equal", ["r", "zero"], ["m"]), M("Where", ["m", "half", "r"], ["g"])],
    [init("zero", f32(0)), init("half", f32(0.5))],
)
_block(
    "Where with a constant condition",
    [M("Where", ["c", "r", "v"], ["g"])],
    [init("c", rand([4], 4) > 0), init("v", rand([4], 5))],
)
_block(
    "Expand",
    [M("ReduceMean", ["r", "ax"], ["m"], keepdims=1), M("Expand", ["m", "sh"], ["g"])],
    [init("ax", i64([3])), init("sh", i64([1, 8, 4, 4]))],
)
_block(
    "ArgMax, Equal and Where",  # keeps each pixel's largest channel
    [M("ArgMax", ["r"], ["i"], axis=1), M("Equal", ["i", "ch"], ["m"]), M("Where", ["m", "r", "zero"], ["g"])],
    [init("ch", np.arange(8, dtype=np.int64).reshape(8, 1, 1)), init("zero", f32(0.0))],
    jumps=True,
)
_block(
    "ArgMin of the negation, Equal and Where",  # the same picks, the last of tied ones
    [
        M("Neg", ["r"], ["nr"]),
        M("ArgMin", ["nr"], ["i"], axis=1, select_last_index=1),
        M("Equal", ["i", "ch"], ["m"]),
        M("Where", ["m", "r", "zero"], ["g"]),
    ],
    [init("ch", np.arange(8, dtype=np.int64).reshape(8, 1, 1)), init("zero", f32(0.0))],
    jumps=True,
)
_block(
    "GatherElements at ArgMax",  # each pixel less its largest channel
    [
        M("ArgMax", ["r"], ["i"], axis=1),
        M("GatherElements", ["r", "i"], ["top"], axis=1),
        M("Sub", ["r", "top"], ["g"]),
    ],
)
_block(  # channels 0 and 5 of every pixel replaced by channels 2 and 7, through a slice of themselves
    "ScatterElements",
    [
        M("Slice", ["r", "s0", "s1", "s_ax"], ["part"]),
        M("ScatterElements", ["r", "si", "part"], ["g"], axis=1),
    ],
    [
        init("s0", np.array([2], np.int64)),
        init("s1", np.array([4], np.int64)),
        init("s_ax", np.array([1], np.int64)),
        init("si", np.array([0, 5], np.int64).reshape(1, 2, 1, 1).repeat(4, 2).repeat(4, 3)),
    ],
    batch_bound=True,
)
_block(
    "Scatter (opset 10)",  # ScatterElements' old name
    [M("Scatter", ["r", "si", "upd"], ["g"], axis=2)],
    [
        init("si", np.array([3, 0], np.int64).reshape(1, 1, 2, 1).repeat(8, 1).repeat(4, 3)),
        init("upd", rand([1, 8, 2, 4], 10)),
    ],
    opset=10,
    batch_bound=True,
)
_block(
    "ScatterElements add and ScatterND max",
    [
        M("ScatterElements", ["r", "si", "upd"], ["a"], axis=3, reduction="add"),
        M("ScatterND", ["a", "ni", "nu"], ["g"], reduction="max"),
    ],
    [
        init("si", np.array([1, 1, 2], np.int64).reshape(1, 1, 1, 3).repeat(8, 1).repeat(4, 2)),
        init("upd", rand([1, 8, 4, 3], 11)),
        init("ni", np.array([[0, 3], [0, 6]], np.int64)),
        init("nu", rand([2, 4, 4], 12)),
    ],
    opset=18,
    batch_bound=True,
)
_block(
    "ScatterND",  # plane 1 of sample 0 overwritten by plane 4
    [
        M("Slice", ["r", "s0", "s1", "s_ax"], ["part"]),
        M("Reshape", ["part", "shp"], ["p2"]),
        M("ScatterND", ["r", "ni", "p2"], ["g"]),
    ],
    [
        init("s0", np.array([4], np.int64)),
        init("s1", np.array([5], np.int64)),
        init("s_ax", np.array([1], np.int64)),
        init("shp", np.array([1, 4, 4], np.int64)),
        init("ni", np.array([[0, 1]], np.int64)),
    ],
    batch_bound=True,
)
_block(  # every pixel's channels in another order, per sample (batch_dims 1)
    "GatherND",
    [M("GatherND", ["r", "gi"], ["g"], batch_dims=1)],
    [init("gi", np.array([[[7], [2], [4], [0], [1], [6], [3], [5]]], np.int64))],
    batch_bound=True,
)
_block(
    "TopK values and indices",  # each pixel's 4 largest channels, and which they are (as floats)
    [
        M("TopK", ["r", "k"], ["v", "i"], axis=1),
        M("Cast", ["i"], ["fi"], to=TensorProto.FLOAT),
        M("Concat", ["v", "fi"], ["g"], axis=1),
    ],
    [init("k", np.array([4], np.int64))],
    jumps=True,
)
for _cmp, _other in (("Greater", "Less"), ("GreaterOrEqual", "LessOrEqual")):
    for _join in ("And", "Or", "Xor"):
        _block(
            f"{_cmp}, {_other}, {_join}",
            [
                M(_cmp, ["r", "half"], ["m1"]),
                M(_other, ["r", "two"], ["m2"]),
                M(_join, ["m1", "m2"], ["m"]),
                M("Where", ["m", "r", "zero"], ["g"]),
            ],
            [init("half", f32(0.5)), init("two", f32(2.0)), init("zero", f32(0.0))],
            jumps=True,
        )


def _model(name: str):
    block, inits, opset = BLOCKS[name]
    head = [M("Flatten", ["g"], ["gf"]), M("Gemm", ["gf", "w2", "b2"], ["y"], transB=1)]
    nodes = [M("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]), M("Relu", ["h"], ["r"])] + block + head
    weights = [init("w1", rand([8, 3, 3, 3], 1) * 0.5), init("w2", rand([3, 128], 2) * 0.2), init("b2", rand([3], 9))]
    batch = 1 if name in BATCH_BOUND else "N"
    return build(nodes, [("x", [batch, 3, 4, 4])], ["y"], weights + inits, opset)


def test_every_converter_sits_between_spiking_layers():
    covered = {n.op_type for block, _, _ in BLOCKS.values() for n in block} | {"Conv", "Relu", "Flatten", "Gemm"}
    missing = sorted(op for op in supported_ops() if "::" not in op and op not in covered)
    assert not missing, f"add a block for: {missing}"


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_between_spiking_layers(name, tmp_path):
    _check(name, tmp_path)


@pytest.mark.parametrize("name", ["MaxPool", "GlobalMaxPool"])
def test_gated_max_pooling(name, tmp_path):
    """The unbiased pool strategies hold the same bounds: a global pool under ``gated`` takes
    ``rate`` (it ran as the max of the spikes at each step: 0.98 relative error at T=512)."""
    _check(name, tmp_path, maxpool="gated")


def _check(name: str, tmp_path, **options) -> None:
    model = _model(name)
    x = rand([12, 3, 4, 4], 3)
    bound = name in BATCH_BOUND
    ann = np.concatenate([run_ort(model, s)[0] for s in np.split(x, len(x))]) if bound else run_ort(model, x)[0]
    scale = float(np.abs(ann).max())
    compiled = snnc.compile(model, x, timesteps=8, calibration="none", threshold="max", quiet=True, **options)
    error = float(np.abs(compiled.run(x, 512) - ann).max()) / scale
    assert error < (0.15 if name in JUMPS else 0.05), f"{name}: relative error {error:.4f} at T=512"

    at8 = compiled.run(x, 8)
    compiled.save(tmp_path / "m.snn.onnx")
    forms = {"reloaded artifact": snnc.load(tmp_path / "m.snn.onnx").run(x, 8)}
    if bound:
        with pytest.raises(snnc.SnncError, match="one sample at a time"):
            compiled.to_torch()
    else:
        _torch_and_export_forms(compiled, x, tmp_path, forms)
    for form, out in forms.items():
        gap = float(np.abs(out - at8).max()) / scale
        assert gap < 1e-5, f"{name}: the {form} differs from the runtime by {gap:.2e} (relative) at T=8"


def _torch_and_export_forms(compiled, x, tmp_path, forms: dict) -> None:
    with torch.no_grad():
        forms["to_torch()"] = compiled.to_torch()(torch.from_numpy(x), 8).numpy()
    compiled.save_onnx(tmp_path / "m.onnx", 8)
    forms["standard-ONNX export"] = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x})[0]
