"""Batch sizes other than the declared one: a batch of N gives the N batch-1 answers, or a clear
refusal where the model makes axis 0 something other than a batch axis.

Every converter has single-op models here (ops of one input and no attribute get a generic
one), built with a static batch of 1 and with a dynamic batch ('N'). Fed 3 samples:

* static batch 1: always the 3 batch-1 answers of onnxruntime (ops that work along axis 0 run
  sample by sample);
* dynamic batch: onnxruntime's answer at batch 3, or a one-line SnncError naming the node
  (a model that uses its batch size as a value, or works along axis 0);
* a model declared at batch 2 that works along axis 0 runs at batch 2 and refuses batch 3.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from snncompiler.errors import SnncError
from snncompiler.formats.onnx import supported_ops
from snncompiler.ir import ops as ir_ops
from tests.formats.helpers import OrtRejected, assert_close, build, init, rand, run_ort, run_snn

REST = [3, 4, 5]  # per-sample shape of x


def _x(batch):
    return [batch] + REST


def _one(op, attrs=None, consts=(), opset=21, rest=None, extra_nodes=()):
    """A builder: batch → model of one node ``op``(x, *consts) → y (plus extra nodes)."""

    def make(batch):
        names, inits = ["x"], []
        for c in consts:
            if c == "":
                names.append("")
            else:
                names.append(c[0])
                inits.append(init(*c))
        nodes = [helper.make_node(op, names, ["y"], name="op", **(attrs or {}))] + list(extra_nodes)
        return build(nodes, [("x", [batch] + (rest or REST))], ["y"], inits, opset)

    make.rest = rest or REST
    return make


def _nodes(nodes, inits=(), opset=21, rest=None):
    def make(batch):
        return build(nodes, [("x", [batch] + (rest or REST))], ["y"], list(inits), opset)

    make.rest = rest or REST
    return make


i64 = lambda v: np.array(v, np.int64)


def _qlinear(op: str, weight: np.ndarray, weight_zero):
    """x → QuantizeLinear → ``op`` (a QOperator layer with ``weight``) → DequantizeLinear. Its
    scales are off the decimal grid: onnxruntime requantizes in fixed point, snnc in float32, and
    a sum on an exact rounding tie could land one step apart (tests/formats/test_quantization.py)."""
    return _nodes(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node(op, ["q", "s", "z", "w", "ws", "wz", "s", "z"], ["c"]),
            helper.make_node("DequantizeLinear", ["c", "s", "z"], ["y"]),
        ],
        [
            init("s", np.float32(0.0213)),
            init("z", np.uint8(128)),
            init("w", weight),
            init("ws", np.float32(0.0937)),
            init("wz", weight_zero),
        ],
        opset=13,
    )


CASES = {
    "Add": _one("Add", consts=[("c", rand([4, 5], 1))]),
    "Sub": _one("Sub", consts=[("c", rand([1, 3, 1, 1], 1))]),
    "Mul": _one("Mul", consts=[("c", rand([5], 1))]),
    "Div": _one("Div", consts=[("c", rand([5], 1, 1, 2))]),
    "Pow": _one("Pow", consts=[("c", np.float32(2.0))]),
    "Max": _nodes([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Max", ["x", "r"], ["y"])]),
    "Min": _nodes([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Min", ["x", "r"], ["y"])]),
    "Sum": _nodes([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sum", ["x", "r", "x"], ["y"])]),
    "Mean": _nodes([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mean", ["x", "r"], ["y"])]),
    "Conv": _one("Conv", {"pads": [1, 1, 1, 1]}, [("w", rand([2, 3, 3, 3], 1))]),
    "ConvTranspose": _one("ConvTranspose", {"strides": [2, 2]}, [("w", rand([3, 2, 2, 2], 1)), ("b", rand([2], 2))]),
    "Gemm": _one("Gemm", {"transB": 1}, [("w", rand([4, 6], 1)), ("b", rand([4], 2))], rest=[6]),
    "MatMul": _one("MatMul", consts=[("w", rand([5, 2], 1))]),
    "MatMul lhs rank 2 (contracts axis 0)": _nodes(
        [helper.make_node("MatMul", ["w", "x"], ["y"])], [init("w", rand([4, 1], 1))], rest=[6]
    ),
    "BatchNormalization": _one(
        "BatchNormalization",
        consts=[("s", rand([3], 1)), ("b", rand([3], 2)), ("m", rand([3], 3)), ("v", rand([3], 4, 0.5, 2))],
    ),
    "InstanceNormalization": _one("InstanceNormalization", consts=[("s", rand([3], 1)), ("b", rand([3], 2))]),
    "LayerNormalization": _one("LayerNormalization", {"axis": -1}, [("s", rand([5], 1))]),
    "LayerNormalization axis 0": _one("LayerNormalization", {"axis": 0}, [("s", rand([1, 3, 4, 5], 1))]),
    "LRN": _one("LRN", {"size": 3}),
    "Clip": _one("Clip", consts=[("lo", np.float32(-0.5)), ("hi", np.float32(1.0))]),
    "LeakyRelu": _one("LeakyRelu", {"alpha": 0.2}),
    "PRelu": _one("PRelu", consts=[("s", rand([3, 1, 1], 1))]),
    "Softmax": _one("Softmax", {"axis": 1}),
    "Softmax axis 0": _one("Softmax", {"axis": 0}),
    # opset ≤ 12: over axes 2… jointly, which onnx's version converter writes as Flatten(axis=2) →
    # Softmax → Reshape (the Flatten folded the batch into rows: refused at batch 3 before)
    "Softmax axis 2, opset 11": _one("Softmax", {"axis": 2}, opset=11),
    "LogSoftmax axis 2, opset 11": _one("LogSoftmax", {"axis": 2}, opset=11),
    "LogSoftmax": _one("LogSoftmax", {"axis": -1}),
    "LogSoftmax opset 11 axis 0": _one("LogSoftmax", {"axis": 0}, opset=11),
    "MaxPool": _one("MaxPool", {"kernel_shape": [2, 2]}),
    "AveragePool": _one("AveragePool", {"kernel_shape": [2, 2], "pads": [1, 1, 0, 0]}),
    "GlobalAveragePool": _one("GlobalAveragePool"),
    "GlobalMaxPool": _one("GlobalMaxPool"),
    "Concat": _nodes([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Concat", ["x", "r"], ["y"], axis=1)]),
    "Concat axis 0": _nodes(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Concat", ["x", "r"], ["y"], axis=0)]
    ),
    "Split": _nodes(
        [
            helper.make_node("Split", ["x"], ["a", "b"], axis=2, num_outputs=2),
            helper.make_node("Sub", ["a", "b"], ["y"]),
        ]
    ),
    "Split axis 0 (static batch 2 only)": None,  # see test_declared_batch_two
    "Slice": _one("Slice", consts=[("s", i64([1])), ("e", i64([3])), ("a", i64([2]))]),
    "Slice axis 0": _one("Slice", consts=[("s", i64([0])), ("e", i64([1])), ("a", i64([0]))]),
    "Gather": _one("Gather", {"axis": 1}, [("i", i64([2, 0]))]),
    "Gather axis 0": _one("Gather", {"axis": 0}, [("i", i64([0, 0]))]),
    "Flatten": _one("Flatten", {"axis": 1}),
    "Flatten axis 0": _one("Flatten", {"axis": 0}),
    "Flatten axis 2": _one("Flatten", {"axis": 2}),
    "Reshape": _one("Reshape", consts=[("s", i64([0, -1, 5]))]),
    "Reshape all to one row": _one("Reshape", consts=[("s", i64([-1]))]),
    # a literal 1 on axis 0 (x.view(1, -1)): at batch 1 it looks like the batch carried through
    "Reshape to a literal leading 1": _one("Reshape", consts=[("s", i64([1, -1]))]),
    "Reshape to a literal [1, 3, -1]": _one("Reshape", consts=[("s", i64([1, 3, -1]))]),
    "Transpose": _one("Transpose", {"perm": [0, 2, 3, 1]}),
    "Transpose moving axis 0": _one("Transpose", {"perm": [1, 0, 2, 3]}),
    "Squeeze": _one("Squeeze", consts=[("a", i64([1]))], rest=[1, 4]),
    "Unsqueeze": _one("Unsqueeze", consts=[("a", i64([1]))]),
    "Pad": _one("Pad", consts=[("p", i64([0, 0, 1, 0, 0, 0, 0, 2]))]),
    "Pad axis 0": _one("Pad", consts=[("p", i64([1, 0, 0, 0, 0, 0, 0, 0]))]),
    "Resize": _one("Resize", {"mode": "linear"}, ["", ("sc", np.array([1, 1, 2, 1.5], np.float32))]),
    "Upsample": _one("Upsample", {"mode": "nearest"}, [("sc", np.array([1, 1, 2, 2], np.float32))], opset=9),
    "ReduceMean": _one("ReduceMean", {"keepdims": 0}, [("a", i64([1, 3]))]),
    "ReduceMean all axes": _one("ReduceMean", {"keepdims": 1}),
    "ReduceSum": _one("ReduceSum", {"keepdims": 0}, [("a", i64([1, 3]))]),
    "ReduceMax": _one("ReduceMax", {"keepdims": 1}, [("a", i64([2]))]),
    "ReduceMin all axes": _one("ReduceMin", {"keepdims": 1}),
    "ReduceProd": _one("ReduceProd", {"keepdims": 0}, [("a", i64([2]))]),
    "ReduceL1": _one("ReduceL1", {"keepdims": 1}, [("a", i64([1, 2]))]),
    "ReduceL2 all axes": _one("ReduceL2", {"keepdims": 1}),
    "ReduceSumSquare": _one("ReduceSumSquare", {"keepdims": 0}, [("a", i64([-1]))]),
    "ReduceLogSum": _nodes(
        [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("ReduceLogSum", ["a", "ax"], ["y"], keepdims=1)],
        [init("ax", i64([3]))],
    ),
    "ReduceLogSumExp": _one("ReduceLogSumExp", {"keepdims": 0}, [("a", i64([1]))]),
    "Tile": _one("Tile", consts=[("r", i64([1, 2, 1, 3]))]),
    "Trilu": _one("Trilu", {"upper": 0}, [("k", i64(1))]),
    "Hardmax": _one("Hardmax", {"axis": 1}),
    "ArgMax": _nodes(
        [
            helper.make_node("ArgMax", ["x"], ["i"], axis=2, keepdims=0),
            helper.make_node("Cast", ["i"], ["y"], to=TensorProto.FLOAT),
        ]
    ),
    "TopK": _nodes([helper.make_node("TopK", ["x", "k"], ["y", "i"], axis=2)], [init("k", i64([2]))]),
    "TopK over axis 0": _nodes([helper.make_node("TopK", ["x", "k"], ["y", "i"], axis=0)], [init("k", i64([1]))]),
    "GatherElements at ArgMax": _nodes(
        [
            helper.make_node("ArgMax", ["x"], ["i"], axis=2, keepdims=1),
            helper.make_node("GatherElements", ["x", "i"], ["y"], axis=2),
        ]
    ),
    # constant indices carry their own batch axis (of 1 here): batch-bound
    "GatherElements with constant indices": _one(
        "GatherElements", {"axis": 3}, [("i", np.tile(i64([4, 0, 2]), (1, 3, 4, 1)))]
    ),
    # constant indices address samples by position: batch-bound
    "ScatterElements": _one(
        "ScatterElements",
        {"axis": 2},
        [("i", np.tile(i64([[3], [1]]), (1, 3, 1, 5))), ("u", rand([1, 3, 2, 5], 7))],
    ),
    "Scatter": _one(
        "Scatter", {"axis": 1}, [("i", np.zeros([1, 1, 4, 5], np.int64)), ("u", rand([1, 1, 4, 5], 8))], opset=9
    ),
    "GatherND": _one("GatherND", {"batch_dims": 1}, [("i", np.zeros([1, 2, 2], np.int64))]),
    "ScatterND": _one("ScatterND", {}, [("i", i64([[0, 2]])), ("u", rand([1, 4, 5], 9))]),
    "ArgMin over axis 0": _nodes(
        [helper.make_node("ArgMin", ["x"], ["i"]), helper.make_node("Cast", ["i"], ["y"], to=TensorProto.FLOAT)]
    ),
    "IsInf": _nodes(
        [helper.make_node("IsInf", ["x"], ["n"]), helper.make_node("Cast", ["n"], ["y"], to=TensorProto.FLOAT)]
    ),
    "IsNaN": _nodes(
        [helper.make_node("IsNaN", ["x"], ["n"]), helper.make_node("Cast", ["n"], ["y"], to=TensorProto.FLOAT)]
    ),
    "Mod": _one("Mod", {"fmod": 1}, [("d", rand([5], 2, 0.5, 2))]),
    "Not (of IsNaN)": _nodes(
        [
            helper.make_node("IsNaN", ["x"], ["n"]),
            helper.make_node("Not", ["n"], ["ok"]),
            helper.make_node("Cast", ["ok"], ["y"], to=TensorProto.FLOAT),
        ]
    ),
    "Einsum": _one("Einsum", {"equation": "bijk,kl->bijl"}, [("w", rand([5, 2], 1))]),
    "Einsum of two activations": _nodes(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Einsum", ["x", "r"], ["y"], equation="bijk,bijk->bi"),
        ]
    ),
    "Einsum summing the batch": _one("Einsum", {"equation": "bijk->ijk"}),
    "Einsum with the batch in a constant": _one("Einsum", {"equation": "bijk,b->bijk"}, [("w", rand([1], 1))]),
    "CumSum": _one("CumSum", {"reverse": 1}, [("a", i64(2))]),
    "DepthToSpace": _one("DepthToSpace", {"blocksize": 2}, rest=[8, 2, 3]),
    "SpaceToDepth": _one("SpaceToDepth", {"blocksize": 2}, rest=[2, 4, 6]),
    "LpNormalization": _one("LpNormalization", {"axis": 1}),
    "MeanVarianceNormalization": _one("MeanVarianceNormalization", {"axes": [1, 2]}),
    "MeanVarianceNormalization over the batch": _one("MeanVarianceNormalization", {"axes": [0, 2, 3]}),
    "Identity": _one("Identity"),
    "Dropout": _one("Dropout"),
    "Cast": _nodes(
        [
            helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT32),
            helper.make_node("Cast", ["i"], ["y"], to=TensorProto.FLOAT),
        ]
    ),
    "QuantizeLinear per channel": _nodes(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
            helper.make_node("Cast", ["q"], ["y"], to=TensorProto.FLOAT),
        ],
        [init("s", np.array([0.01, 0.02, 0.05], np.float32)), init("z", np.array([0, -5, 3], np.int8))],
    ),
    "DequantizeLinear of QuantizeLinear per channel": _nodes(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1),
        ],
        [init("s", np.array([0.01, 0.02, 0.05], np.float32)), init("z", np.array([0, -5, 3], np.int8))],
    ),
    "QLinearConv": _qlinear("QLinearConv", np.arange(-9, 9, 3, dtype=np.int8).reshape(2, 3, 1, 1), np.int8(0)),
    "QLinearMatMul": _qlinear("QLinearMatMul", np.arange(100, 200, 10, dtype=np.uint8).reshape(5, 2), np.uint8(150)),
    "CastLike": _nodes(
        [helper.make_node("CastLike", ["x", "l"], ["i"]), helper.make_node("CastLike", ["i", "x"], ["y"])],
        [init("l", np.zeros([1], np.int32))],
    ),
    "Constant": _nodes(
        [
            helper.make_node(
                "Constant", [], ["c"], value=helper.make_tensor("t", TensorProto.FLOAT, [5], [1, 2, 3, 4, 5])
            ),
            helper.make_node("Add", ["x", "c"], ["y"]),
        ]
    ),
    "ConstantOfShape": _nodes(
        [
            helper.make_node(
                "ConstantOfShape", ["s"], ["c"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])
            ),
            helper.make_node("Mul", ["x", "c"], ["y"]),
        ],
        [init("s", i64([4, 5]))],
    ),
    "Where (constant condition)": _nodes(
        [helper.make_node("Where", ["c", "x", "z"], ["y"])], [init("c", rand([4, 5], 1) > 0), init("z", rand([5], 2))]
    ),
    "Where (condition from the input)": _nodes(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Equal", ["r", "zero"], ["c"]),
            helper.make_node("Where", ["c", "x", "r"], ["y"]),
        ],
        [init("zero", np.float32(0.0))],
    ),
    "Equal": _nodes(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Equal", ["r", "zero"], ["c"]),
            helper.make_node("Cast", ["c"], ["y"], to=TensorProto.FLOAT),
        ],
        [init("zero", np.zeros([5], np.float32))],
    ),
    "Expand": _one("Expand", consts=[("s", i64([3, 4, 5]))], rest=[3, 1, 1]),
    "Range": _nodes(
        [helper.make_node("Range", ["a", "b", "d"], ["r"]), helper.make_node("Add", ["x", "r"], ["y"])],
        [init("a", np.float32(0.0)), init("b", np.float32(2.5)), init("d", np.float32(0.5))],
    ),
    "Shape → Reshape (batch kept)": _nodes(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
            helper.make_node("Unsqueeze", ["n", "a0"], ["nu"]),
            helper.make_node("Concat", ["nu", "m1"], ["t"], axis=0),
            helper.make_node("Reshape", ["x", "t"], ["y"]),
        ],
        [init("i0", i64(0)), init("a0", i64([0])), init("m1", i64([-1]))],
    ),
    "Shape of other axes → Mul": _nodes(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Gather", ["s", "i2"], ["n"], axis=0),
            helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["x", "nf"], ["y"]),
        ],
        [init("i2", i64(2))],
    ),
    "Shape(x)[0] as a value (relu(x) * N)": _nodes(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
            helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["r", "nf"], ["y"], name="scale"),
        ],
        [init("i0", i64(0))],
    ),
}
for _op in ("Greater", "Less", "GreaterOrEqual", "LessOrEqual"):
    CASES[_op] = _nodes(
        [helper.make_node(_op, ["x", "c"], ["m"]), helper.make_node("Cast", ["m"], ["y"], to=TensorProto.FLOAT)],
        [init("c", rand([5], 3))],
    )
for _op in ("And", "Or", "Xor"):
    CASES[_op] = _nodes(
        [
            helper.make_node("Greater", ["x", "c"], ["p"]),
            helper.make_node("Less", ["x", "zero"], ["q"]),
            helper.make_node(_op, ["p", "q"], ["m"]),
            helper.make_node("Cast", ["m"], ["y"], to=TensorProto.FLOAT),
        ],
        [init("c", rand([5], 3)), init("zero", np.float32(0.0))],
    )
#: ops of one input and no required attribute: a generic model covers them (new converters too,
#: from the IR's tables of pointwise ops)
UNARY = [
    "Relu",
    "Sigmoid",
    "Tanh",
    "HardSwish",
    "Gelu",
    *ir_ops.UNARY.values(),
    *(onnx_op for onnx_op, _ in ir_ops.PARAMETRIC.values()),
]


def _builders():
    out = dict((k, v) for k, v in CASES.items() if v is not None)
    for op in UNARY:
        out[op] = _one(op)
    return out


BUILDERS = _builders()


def test_every_converter_has_a_batch_case():
    named = {k.split(" ")[0] for k in BUILDERS}
    missing = sorted(op for op in supported_ops() if "::" not in op and op not in named)
    assert not missing, f"converters without a batch case: {missing} (add one to CASES or UNARY)"


@pytest.mark.parametrize("case", sorted(BUILDERS))
def test_static_batch1_model_fed_three_samples(case):
    """Declared batch 1, fed 3: exactly the 3 batch-1 answers (sample by sample where axis 0 is not a batch)."""
    make = BUILDERS[case]
    model = make(1)
    x = rand([3] + make.rest, 5)
    ref = np.concatenate([run_ort(model, x[i : i + 1])[0] for i in range(3)])
    assert_close(run_snn(model, x)[0], ref, f"{case}: batch 3 vs 3 × batch 1")


@pytest.mark.parametrize("case", sorted(BUILDERS))
def test_dynamic_batch_model_fed_three_samples(case):
    """Dynamic batch, fed 3: onnxruntime's batch-3 answer, or a one-line refusal naming the node."""
    make = BUILDERS[case]
    model = make("N")
    x = rand([3] + make.rest, 5)
    try:
        ref = run_ort(model, x)[0]
    except OrtRejected:
        ref = None
    try:
        got = run_snn(model, x)[0]
    except SnncError as exc:
        assert "\n" not in str(exc) and "node" in str(exc) and "got a batch of 3" in str(exc), str(exc)
        return
    assert ref is not None, f"{case}: onnxruntime refuses batch 3, snncompiler answered"
    assert_close(got, ref, f"{case}: dynamic batch at 3")


def test_batch_valued_model_is_refused_not_wrong():
    """The issue's case: relu(x) * Shape(x)[0] was off by N (the batch folded to 1)."""
    model = CASES["Shape(x)[0] as a value (relu(x) * N)"]("N")
    x = rand([4] + REST, 5)
    with pytest.raises(SnncError, match=r"node Mul 'scale' uses the batch size as a value.*got a batch of 4"):
        run_snn(model, x)
    assert_close(run_snn(model, x[:1])[0], run_ort(model, x[:1])[0], "at batch 1")


@pytest.mark.parametrize(
    "case",
    [
        "Softmax axis 0",
        "ReduceMean all axes",
        "ReduceMin all axes",
        "ReduceL2 all axes",
        "Transpose moving axis 0",
        "Concat axis 0",
        "MeanVarianceNormalization over the batch",
    ],
)
def test_declared_batch_two(case):
    """Declared batch 2 and mixing samples: runs at 2 (equal to onnxruntime), refuses 3."""
    model = BUILDERS[case](2)
    x = rand([3] + REST, 5)
    assert_close(run_snn(model, x[:2])[0], run_ort(model, x[:2])[0], f"{case} at its batch 2")
    with pytest.raises(SnncError, match=r"works along axis 0.*runs at batch 2 only, got a batch of 3"):
        run_snn(model, x)


def test_split_along_axis0_declared_batch_two():
    nodes = [
        helper.make_node("Split", ["x"], ["a", "b"], axis=0, num_outputs=2),
        helper.make_node("Sub", ["a", "b"], ["y"]),
    ]
    model = build(nodes, [("x", [2] + REST)], ["y"], [], 21)
    x = rand([3] + REST, 5)
    assert_close(run_snn(model, x[:2])[0], run_ort(model, x[:2])[0], "Split axis 0 at batch 2")
    with pytest.raises(SnncError, match="got a batch of 3"):
        run_snn(model, x)


# ---- snnc.compile: the same models through the compiler's batch probe ------------------------
def _compile(model, x):
    import snncompiler as snnc

    return snnc.compile(model, x, timesteps=4, threshold="max", calibration="none", quiet=True)


def test_compile_keeps_a_constant_graph_output_once():
    """A second output that is a constant is the same at every batch size: it no longer made the
    batch probe mark the graph fixed-batch (which stacked one copy of it per sample)."""
    k = rand([2, 2], 3)
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    model = build(nodes, [("x", ["N"] + REST)], ["y", ("k", [2, 2])], [init("k", k)], 21)
    x = rand([3] + REST, 5)
    compiled = _compile(model, x)
    y, got_k = compiled.ann(x)
    ref = run_ort(model, x)
    assert_close(y, ref[0], "Relu output")
    assert got_k.shape == (2, 2) and np.array_equal(got_k, ref[1])
    assert [o.shape for o in compiled.run(x, timesteps=4)] == [(3, *REST), (2, 2)]


@pytest.mark.parametrize("batch", [2, "N"])
def test_compile_refuses_a_model_whose_single_sample_has_two_rows(batch):
    """x - C with C of 2 rows: one sample gives 2 rows, so running sample by sample (what the
    compiler does with a fixed batch) would return 2N rows for N samples; a clear refusal instead."""
    c = rand([2] + REST, 4)
    model = build(
        [helper.make_node("Sub", ["x", "c"], ["y"], name="op")], [("x", [batch] + REST)], ["y"], [init("c", c)]
    )
    # declared at 2, the loader already finds the constant indexing axis 0; dynamic, the probe does
    expected = (
        r"works along axis 0.*declared batch of 2" if batch == 2 else r"one sample gives output 'y' of shape \[2, 3"
    )
    with pytest.raises(SnncError, match=expected):
        _compile(model, rand([4] + REST, 5))


def test_compile_refuses_a_declared_batch_two_model_that_mixes_samples():
    """Declared at batch 2 with a softmax over axis 0: it runs only at 2 (snnc.load does), and the
    compiler cannot split it; the message says why instead of 'does not run on one sample'."""
    model = BUILDERS["Softmax axis 0"](2)
    with pytest.raises(SnncError, match=r"works along axis 0.*declared batch of 2.*dynamic batch axis"):
        _compile(model, rand([4] + REST, 5))


@pytest.mark.parametrize("opset", [11, 21])
def test_squeeze_without_axes_keeps_a_dynamic_batch(opset):
    """Squeeze without axes of x [N, 1, 4, 1] (output [N, 4]): with the batch pinned to 1 it was
    squeezed too and the model failed to load; the static 1s are its axes at every batch size."""
    model = build([helper.make_node("Squeeze", ["x"], ["y"])], [("x", ["N", 1, 4, 1])], [("y", ["N", 4])], [], opset)
    x = rand([3, 1, 4, 1], 5)
    assert_close(run_snn(model, x)[0], run_ort(model, x)[0], f"Squeeze without axes, opset {opset}")


@pytest.mark.parametrize("case", ["Softmax axis 2, opset 11", "LogSoftmax axis 2, opset 11"])
def test_old_opset_softmax_over_trailing_axes_runs_at_any_batch(case):
    """A per-sample softmax over axes 2… is not refused at batch 3 (the Flatten that onnx's
    version converter writes for it is rewritten to keep the batch axis)."""
    model = BUILDERS[case]("N")
    x = rand([3] + REST, 5)
    assert_close(run_snn(model, x)[0], run_ort(model, x)[0], f"{case} at batch 3")
