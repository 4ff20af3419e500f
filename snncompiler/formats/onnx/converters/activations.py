"""Converters for pointwise activations and (log-)softmax."""

from __future__ import annotations

import numpy as np

from ....ir.ops import PARAMETRIC, UNARY
from ..registry import converter, writes


def _simple(core: str, **defaults):
    def convert(node, ctx):
        a = ctx.attrs(node)
        attrs = {
            k: (v.decode() if isinstance(v, bytes) else type(d)(v)) for k, d in defaults.items() for v in [a.get(k, d)]
        }
        ctx.emit(core, [node.input[0]], [node.output[0]], attrs)

    convert.__doc__ = f"→ {core}"
    return convert


converter("Relu")(_simple("relu"))
converter("Sigmoid")(_simple("sigmoid"))
converter("Tanh")(_simple("tanh"))
converter("HardSwish")(_simple("hardswish"))
converter("Gelu")(_simple("gelu", approximate="none"))


@converter("Clip")
def clip(node, ctx):
    """Clip with min/max from inputs (opset ≥ 11) or attributes (older) → clip; Clip(0, c) becomes a neuron."""
    a = ctx.attrs(node)
    lo = ctx.optional_const(node, 1, "Clip min")
    hi = ctx.optional_const(node, 2, "Clip max")
    lo = float(lo) if lo is not None else (float(a["min"]) if "min" in a else None)
    hi = float(hi) if hi is not None else (float(a["max"]) if "max" in a else None)
    ctx.emit("clip", [node.input[0]], [node.output[0]], {"min": lo, "max": hi})


@converter("PRelu")
def prelu(node, ctx):
    """PRelu with a constant slope → prelu (analog island)."""
    slope = ctx.const(node.input[1], "PRelu slope").astype(np.float32)
    ctx.emit("prelu", [node.input[0]], [node.output[0]], {}, {"slope": slope})


def _softmax(core: str):
    def convert(node, ctx):
        a = ctx.attrs(node)
        shape = ctx.shape(node.input[0])
        rank = len(shape)
        if ctx.opset >= 13:
            ctx.emit(core, [node.input[0]], [node.output[0]], {"axis": int(a.get("axis", -1)) % rank})
            return
        # Before opset 13 (Log)Softmax flattened the input to 2-D at `axis` (default 1).
        axis = int(a.get("axis", 1)) % rank
        flat, normed = ctx.fresh(node.output[0]), ctx.fresh(node.output[0])
        inner = int(np.prod(shape[axis:]))
        if axis == 0:
            ctx.emit("reshape", [node.input[0]], [flat], {"shape": [1, inner]})
        else:
            ctx.emit(
                "reshape", [node.input[0]], [flat], {"shape": [int(np.prod(shape[1:axis])), inner], "keep_batch": True}
            )
        ctx.emit(core, [flat], [normed], {"axis": -1})
        ctx.emit("reshape", [normed], [node.output[0]], {"shape": list(shape[1:]), "keep_batch": True})

    convert.__doc__ = f"(Log)Softmax or Hardmax, the opset-13 single-axis and the older flattening form → {core}"
    return convert


converter("Softmax")(_softmax("softmax"))
converter("LogSoftmax")(_softmax("log_softmax"))
converter("Hardmax")(_softmax("hardmax"))


for _core, _onnx in UNARY.items():
    converter(_onnx)(_simple(_core))
for _core, (_onnx, _defaults) in PARAMETRIC.items():
    converter(_onnx)(_simple(_core, **_defaults))


# ---- write rules: core op → ONNX (the artifact writer, formats/onnx/writer.py) ----------------
_PLAIN_ONNX = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "hardswish": "HardSwish"}


@writes(*_PLAIN_ONNX)
def write_plain_activation(b, n) -> None:
    """Relu, Sigmoid, Tanh, HardSwish: no attributes."""
    b.add(_PLAIN_ONNX[n.op], n.inputs, n.outputs, n.name)


@writes("clip")
def write_clip(b, n) -> None:
    """Clip with optional min / max inputs."""
    a = n.attrs
    lo = b.const(n, "min", np.float32(a["min"])) if a.get("min") is not None else ""
    hi = b.const(n, "max", np.float32(a["max"])) if a.get("max") is not None else ""
    b.add("Clip", [n.inputs[0], lo, hi], n.outputs, n.name)


@writes(*PARAMETRIC)
def write_parametric(b, n) -> None:
    """LeakyRelu, HardSigmoid, Elu, Selu, Celu, ThresholdedRelu with their float attributes."""
    onnx_op, defaults = PARAMETRIC[n.op]
    b.add(onnx_op, n.inputs, n.outputs, n.name, **{k: float(n.attrs.get(k, d)) for k, d in defaults.items()})


@writes("prelu")
def write_prelu(b, n) -> None:
    """PRelu with its slope as an initializer."""
    b.add("PRelu", [n.inputs[0], b.const(n, "slope", n.params["slope"])], n.outputs, n.name)


@writes("gelu")
def write_gelu(b, n) -> None:
    """Gelu (opset 20+)."""
    b.add("Gelu", n.inputs, n.outputs, n.name, approximate=n.attrs.get("approximate", "none"))


_SOFTMAX_ONNX = {"softmax": "Softmax", "log_softmax": "LogSoftmax", "hardmax": "Hardmax"}


@writes(*_SOFTMAX_ONNX)
def write_softmax(b, n) -> None:
    """Softmax / LogSoftmax / Hardmax over one axis."""
    b.add(_SOFTMAX_ONNX[n.op], n.inputs, n.outputs, n.name, axis=int(n.attrs["axis"]))
