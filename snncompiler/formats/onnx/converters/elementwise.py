"""Converters for broadcasting arithmetic (Add, Sub, Mul, Div, Pow, Max, Min, Sum, Mean), Where,
comparisons and logical connectives (ir/ops.PREDICATES), and the pointwise functions (ir/ops.UNARY)."""

from __future__ import annotations

import numpy as np

from ....ir.ops import BINARY, PREDICATES, UNARY
from ..registry import converter, writes


def _operand(value: np.ndarray) -> np.ndarray:
    """A constant operand as the runtime holds it: float32, or its own integer type (integer
    arithmetic on shape or index values; 2^40 + 1 in float32 is 2^40, and Div truncates)."""
    return value if value.dtype.kind in "iu" else value.astype(np.float32)


def emit_binary(ctx, op: str, a: str, b: str, out: str, attrs: dict | None = None) -> None:
    """Emit a binary core op, moving a constant operand into the node's params."""
    attrs = dict(attrs or {})
    if ctx.is_const(b):
        ctx.emit(op, [a], [out], attrs, {"const": _operand(ctx.const(b))})
    elif ctx.is_const(a):
        ctx.emit(op, [b], [out], attrs | {"const_first": True}, {"const": _operand(ctx.const(a))})
    else:
        ctx.emit(op, [a, b], [out], attrs)


def _binary(core: str):
    def convert(node, ctx):
        emit_binary(ctx, core, node.input[0], node.input[1], node.output[0])

    convert.__doc__ = f"→ {core} (numpy broadcasting; a constant operand becomes a parameter)"
    return convert


for _core in ("add", "sub", "mul", "div", "pow"):  # max, min: variadic below; mod: with fmod
    converter(BINARY[_core])(_binary(_core))


@converter("Mod")
def mod(node, ctx):
    """Mod → mod (an analog island; ``fmod`` 0 takes the divisor's sign, 1 the dividend's)."""
    emit_binary(ctx, "mod", node.input[0], node.input[1], node.output[0], {"fmod": int(ctx.attrs(node).get("fmod", 0))})


@converter("IsInf")
def is_inf(node, ctx):
    """IsInf (detect_positive, detect_negative) → is_inf (a bool mask)."""
    a = ctx.attrs(node)
    attrs = {"detect_positive": int(a.get("detect_positive", 1)), "detect_negative": int(a.get("detect_negative", 1))}
    ctx.emit("is_inf", [node.input[0]], [node.output[0]], attrs)


def _variadic(core: str, mean: bool = False):
    def convert(node, ctx):
        inputs = list(node.input)
        out = node.output[0]
        if len(inputs) == 1:
            ctx.alias(out, inputs[0], f"{node.op_type} of one input")
            return
        acc = inputs[0]
        for i, other in enumerate(inputs[1:]):
            last = i == len(inputs) - 2 and not mean
            dst = out if last else ctx.fresh(out)
            emit_binary(ctx, core, acc, other, dst)
            acc = dst
        if mean:
            ctx.emit("mul", [acc], [out], {}, {"const": np.float32(1.0 / len(inputs))})

    convert.__doc__ = f"n-ary → a chain of {core}" + (" then a scale by 1/n" if mean else "")
    return convert


converter("Sum")(_variadic("add"))
converter("Mean")(_variadic("add", mean=True))
converter("Max")(_variadic("max"))
converter("Min")(_variadic("min"))


@converter("Where")
def where(node, ctx):
    """Where(cond, x, y) → where: a constant condition is a parameter (a fixed selection), a
    constant x or y becomes a constant node; an activation condition is an analog island."""
    cond, x, y = node.input
    if ctx.is_const(cond):
        ctx.emit(
            "where",
            [ctx.activation_or_const(x), ctx.activation_or_const(y)],
            [node.output[0]],
            {},
            {"cond": ctx.const(cond).astype(bool)},
        )
    else:
        ctx.emit("where", [cond, ctx.activation_or_const(x), ctx.activation_or_const(y)], [node.output[0]])


def _predicate(core: str):
    def convert(node, ctx):
        ctx.emit(core, [ctx.activation_or_const(i) for i in node.input], [node.output[0]])

    convert.__doc__ = f"of an activation (with a constant or another activation) → {core} (a bool mask)"
    return convert


for _core, _onnx in PREDICATES.items():
    converter(_onnx)(_predicate(_core))


# ---- write rules: core op → ONNX (the artifact writer, formats/onnx/writer.py) ----------------
@writes(*BINARY)
def write_binary(b, n) -> None:
    """A broadcasting binary; a constant operand becomes an initializer on its side."""
    if "const" in n.params:
        c = b.const(n, "const", n.params["const"])
        args = [c, n.inputs[0]] if n.attrs.get("const_first") else [n.inputs[0], c]
    else:
        args = n.inputs
    b.add(BINARY[n.op], args, n.outputs, n.name, **({"fmod": int(n.attrs["fmod"])} if n.op == "mod" else {}))


@writes("is_inf")
def write_is_inf(b, n) -> None:
    """IsInf."""
    a = n.attrs
    b.add(
        "IsInf", n.inputs, n.outputs, n.name, detect_positive=a["detect_positive"], detect_negative=a["detect_negative"]
    )


@writes(*UNARY)
def write_unary(b, n) -> None:
    """A pointwise function without attributes (:data:`~snncompiler.ir.ops.UNARY`)."""
    b.add(UNARY[n.op], n.inputs, n.outputs, n.name)


@writes("where")
def write_where(b, n) -> None:
    """Where, its condition an initializer when constant."""
    cond = [b.const(n, "cond", n.params["cond"])] if "cond" in n.params else []
    b.add("Where", cond + n.inputs, n.outputs, n.name)


@writes(*PREDICATES)
def write_predicate(b, n) -> None:
    """A comparison or logical connective (:data:`~snncompiler.ir.ops.PREDICATES`)."""
    b.add(PREDICATES[n.op], n.inputs, n.outputs, n.name)
