"""The op vocabulary of the IR: every core op's name, conversion kind and MAC count. No torch:
the IR validates and a model's cost is counted without the runtime (whose torch implementations,
:data:`snncompiler.runtime.ops.IMPLEMENTATIONS`, are keyed by these names).

Conversion kinds (how ``snnc compile`` treats a node): ``spiking`` (becomes or feeds a neuron),
``linear`` (commutes with rate coding: runs unchanged on spikes), ``folded`` (absorbed by a
neighbour at compile time), ``analog`` (an analog island: computed on the rate-decoded input),
``unsupported``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the vocabulary is a leaf: graph.py validates against it
    from .graph import Node

KINDS = ("spiking", "linear", "folded", "analog", "unsupported")


@dataclass(frozen=True)
class OpSpec:
    """A core op: its conversion kind (a string, or a function of the node) and MAC counter
    (a function of the node, input shapes and output shapes; None where it does no MACs)."""

    name: str
    kind: str | Callable[[Node], str]
    macs: Callable[[Node, list, list], int] | None = None

    def conversion_kind(self, node: Node) -> str:
        """How this node converts: spiking, linear, folded, analog or unsupported."""
        return self.kind(node) if callable(self.kind) else self.kind


def _prod(xs) -> int:
    return int(math.prod(xs)) if xs else 1


def _conv_macs(node, ins, outs):
    w = node.params["weight"]
    return _prod(outs[0][1:]) * _prod(w.shape[1:])


def _convt_macs(node, ins, outs):
    w = node.params["weight"]
    return _prod(ins[0][1:]) * _prod(w.shape[1:])


def _linear_macs(node, ins, outs):
    return _prod(outs[0][1:]) * node.params["weight"].shape[1]


def _matmul_macs(node, ins, outs):
    a = ins[0] if "lhs" not in node.params else tuple(node.params["lhs"].shape)
    return _prod(outs[0][1:]) * int(a[-1])


def _einsum_macs(node, ins, outs):
    # one multiply-accumulate per combination of every subscript's index, per sample
    terms, _ = einsum_terms(node.attrs["equation"])
    activation_shapes = iter(ins)
    sizes: dict[str, int] = {}
    broadcast = 1  # the dims under "..."
    for term, key in zip(terms, node.attrs["operands"]):
        shape = [int(d) for d in (node.params[key].shape if key else next(activation_shapes))]
        head, _, tail = term.partition("...")
        middle = len(shape) - len(head) - len(tail)
        if "..." in term:
            broadcast = max(broadcast, _prod(shape[len(head) : len(head) + middle]))
        for letter, d in zip(head + "." * middle + tail, shape):
            if letter != ".":
                sizes[letter] = max(sizes.get(letter, 1), d)
    batch = int(ins[0][0]) if ins and ins[0] else 1
    return _prod(list(sizes.values())) * broadcast // max(batch, 1)


def _clip_kind(node: Node) -> str:
    lo, hi = node.attrs.get("min"), node.attrs.get("max")
    return "spiking" if lo is not None and lo == 0.0 and (hi is None or hi > 0) else "analog"


def is_float_dtype(dtype: str) -> bool:
    """Whether a torch dtype name is a float type (a rate spikes can carry), not a mask's or an index's."""
    return "float" in dtype


def _cast_kind(node: Node) -> str:
    # a cast to a float type keeps a spike's value (float16: to its precision); a cast to an
    # integer or bool type truncates each spike (θ = 0.7 → 0), so it runs on the rates instead.
    # A mask or an index (``source`` not a float) is each step's current estimate, not a rate:
    # cast on each step and averaged, the early, unsettled estimates would stay in every later
    # mean, so as an island it emits its value as increments whose running mean is the latest one
    dtype = node.attrs.get("dtype", "float32")
    return "linear" if is_float_dtype(dtype) and is_float_dtype(node.attrs.get("source", "float32")) else "analog"


def _scatter_kind(node: Node) -> str:
    # writing updates over data, or adding them, picks or sums entries: linear; mul/max/min do not
    return "linear" if node.attrs.get("reduction", "none") in ("none", "add") else "analog"


def _binary_kind(node: Node) -> str:
    if node.op in ("add", "sub"):
        return "linear"
    if (
        node.op in ("mul", "div")
        and "const" in node.params
        and not (node.op == "div" and node.attrs.get("const_first"))
    ):
        return "linear"
    return "analog"


#: Pointwise functions without attributes, core name → ONNX operator (the one table the ONNX
#: reader, the artifact writer and the runtime follow). Spikes cannot carry them (analog
#: islands), except ``neg``, the one linear member (a sign flip commutes with rate coding).
UNARY = {
    "erf": "Erf",
    "sqrt": "Sqrt",
    "exp": "Exp",
    "log": "Log",
    "abs": "Abs",
    "reciprocal": "Reciprocal",
    "neg": "Neg",
    "floor": "Floor",
    "ceil": "Ceil",
    "round": "Round",
    "sign": "Sign",
    "softplus": "Softplus",
    "softsign": "Softsign",
    "sin": "Sin",
    "cos": "Cos",
    "mish": "Mish",
}
#: Pointwise activations with float attributes: core name → (ONNX operator, attribute defaults
#: as ONNX gives them). All analog islands.
PARAMETRIC = {
    "leaky_relu": ("LeakyRelu", {"alpha": 0.01}),
    "hardsigmoid": ("HardSigmoid", {"alpha": 0.2, "beta": 0.5}),
    "elu": ("Elu", {"alpha": 1.0}),
    "selu": ("Selu", {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875}),
    "celu": ("Celu", {"alpha": 1.0}),
    "thresholded_relu": ("ThresholdedRelu", {"alpha": 1.0}),
}
#: Reductions over ``axes`` (attrs ``axes``, ``keepdims``), core name → ONNX operator. A mean
#: or sum of spikes is the mean or sum of rates (:data:`LINEAR_REDUCTIONS`); the others are not
#: (analog).
REDUCTIONS = {
    "reduce_mean": "ReduceMean",
    "reduce_sum": "ReduceSum",
    "reduce_max": "ReduceMax",
    "reduce_min": "ReduceMin",
    "reduce_prod": "ReduceProd",
    "reduce_l1": "ReduceL1",
    "reduce_l2": "ReduceL2",
    "reduce_sum_square": "ReduceSumSquare",
    "reduce_log_sum": "ReduceLogSum",
    "reduce_log_sum_exp": "ReduceLogSumExp",
}
LINEAR_REDUCTIONS = ("reduce_mean", "reduce_sum")
#: The index of the largest / smallest entry along one axis (attrs ``axis``, ``keepdims``,
#: ``select_last_index``), core name → ONNX operator: an int64 index picked from the rates (analog).
ARG_REDUCTIONS = {"argmax": "ArgMax", "argmin": "ArgMin"}
#: Comparisons, logical connectives and tests with a bool result (broadcasting where binary),
#: core name → ONNX operator (analog: a mask computed from rates).
PREDICATES = {
    "equal": "Equal",
    "greater": "Greater",
    "less": "Less",
    "greater_or_equal": "GreaterOrEqual",
    "less_or_equal": "LessOrEqual",
    "and": "And",
    "or": "Or",
    "xor": "Xor",
    "not": "Not",
    "is_nan": "IsNaN",
}
#: Broadcasting elementwise binaries, core name → ONNX operator; one operand may be the constant
#: param ``const`` (``max``/``min`` come from the variadic Max/Min, ``mod`` carries ``fmod``).
BINARY = {
    "add": "Add",
    "sub": "Sub",
    "mul": "Mul",
    "div": "Div",
    "max": "Max",
    "min": "Min",
    "pow": "Pow",
    "mod": "Mod",
}

_SPECS = [
    OpSpec("conv", "linear", _conv_macs),
    OpSpec("conv_transpose", "linear", _convt_macs),
    OpSpec("linear", "linear", _linear_macs),
    OpSpec("matmul", lambda n: "linear" if (n.params and len(n.inputs) == 1) else "analog", _matmul_macs),
    OpSpec("einsum", lambda n: "linear" if len(n.inputs) == 1 else "analog", _einsum_macs),
    OpSpec("batchnorm", "folded"),
    OpSpec("scale", "linear"),
    OpSpec("relu", "spiking"),
    OpSpec("clip", _clip_kind),
    OpSpec("prelu", "analog"),
    OpSpec("sigmoid", "analog"),
    OpSpec("tanh", "analog"),
    OpSpec("hardswish", "analog"),
    OpSpec("gelu", "analog"),
    OpSpec("softmax", "analog"),
    OpSpec("log_softmax", "analog"),
    OpSpec("hardmax", "analog"),
    OpSpec("topk", "analog"),
    OpSpec("is_inf", "analog"),
    OpSpec("lrn", "analog"),
    OpSpec("layer_norm", "analog"),
    OpSpec("instance_norm", "analog"),
    OpSpec("lp_norm", "analog"),
    OpSpec("mvn", "analog"),
    OpSpec("maxpool", "spiking"),
    OpSpec("avgpool", "linear"),
    OpSpec("concat", "linear"),
    OpSpec("split", "linear"),
    OpSpec("slice", "linear"),
    OpSpec("gather", "linear"),
    OpSpec("gather_elements", lambda n: "linear" if "indices" in n.params else "analog"),
    OpSpec("gather_nd", "linear"),
    OpSpec("scatter_elements", _scatter_kind),
    OpSpec("scatter_nd", _scatter_kind),
    OpSpec("reshape", "linear"),
    OpSpec("flatten", "linear"),
    OpSpec("transpose", "linear"),
    OpSpec("pad", "linear"),
    OpSpec("resize", "linear"),
    OpSpec("where", lambda n: "linear" if "cond" in n.params else "analog"),
    OpSpec("expand", "linear"),
    OpSpec("tile", "linear"),
    OpSpec("trilu", "linear"),
    OpSpec("cumsum", "linear"),
    OpSpec("cast", _cast_kind),
    # ONNX QuantizeLinear / DequantizeLinear: rounding to integers is no rate. A quantize →
    # dequantize pair on an activation (fake quantization) is rewritten before conversion
    # (passes/fake_quant.py); what remains runs on the rates
    OpSpec("quantize", "analog"),
    OpSpec("dequantize", "analog"),
    OpSpec("identity", "folded"),
    OpSpec("constant", "folded"),
    OpSpec("unsupported", "unsupported"),
    OpSpec("neuron", "spiking"),
]
_SPECS += [OpSpec(name, "linear" if name == "neg" else "analog") for name in UNARY]
_SPECS += [OpSpec(name, "analog") for name in PARAMETRIC]
_SPECS += [OpSpec(name, "analog") for name in PREDICATES]
_SPECS += [OpSpec(name, "linear" if name in LINEAR_REDUCTIONS else "analog") for name in REDUCTIONS]
_SPECS += [OpSpec(name, _binary_kind) for name in BINARY]
_SPECS += [OpSpec(name, "analog") for name in ARG_REDUCTIONS]

#: core op name → :class:`OpSpec`: the closed set the IR admits.
OPS: dict[str, OpSpec] = {spec.name: spec for spec in _SPECS}


def conversion_kind(node: Node) -> str:
    """How ``node`` converts (see the module docstring)."""
    return OPS[node.op].conversion_kind(node)


def broadcasts_constants(op: str) -> bool:
    """Whether a constant operand of ``op`` broadcasts against its other inputs (has no batch
    axis, or one of size 1) rather than being aligned with them along axis 0 (``concat``).
    The spiking runtimes fold time steps into axis 0: they pass such a constant unexpanded."""
    return op != "concat"


def einsum_terms(equation: str) -> tuple[list[str], str]:
    """An Einsum equation's operand subscripts and output subscripts (the implicit output, as
    numpy and ONNX define it: ``...`` if any, then the letters used once, sorted)."""
    lhs, arrow, rhs = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if not arrow:
        letters = [c for c in lhs if c.isalpha()]
        rhs = ("..." if "..." in lhs else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return terms, rhs
