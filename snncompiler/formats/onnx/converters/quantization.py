"""Converters for quantized models: QuantizeLinear and DequantizeLinear (the QDQ format that
onnxruntime's quantizer and PyTorch's quantization-aware training export). QOperator layers
(QLinearConv, onnxruntime's com.microsoft QLinearAdd ...) reach them as the dequantize → float
layer → quantize they stand for, rewritten at load time by formats/onnx/ort_forms.py.

Quantized weights are constants, so their DequantizeLinear folds into float weights at load
time; what reaches the IR is the quantization of activations. A quantize → dequantize pair on
an activation (fake quantization) is rewritten before conversion by passes/fake_quant.py.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..registry import converter, writes
from .structure import CAST_DTYPES

#: ONNX integer types a quantized activation can have, by the torch type that holds them; the
#: 4-bit types (opset 21) are held in 8 bits with their range as the quantize's qmin/qmax; float8
#: and int32 outputs of QuantizeLinear have no converter yet
_QUANTIZED = {
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT16: "uint16",
    onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.UINT4: "uint8",
    onnx.TensorProto.INT4: "int8",
}
#: the range of the types held in a wider one
_NARROW_RANGE = {onnx.TensorProto.UINT4: (0, 15), onnx.TensorProto.INT4: (-8, 7)}
#: what DequantizeLinear also reads: the int32 biases and accumulators of quantized models
_DEQUANTIZABLE = {**_QUANTIZED, onnx.TensorProto.INT32: "int32"}


def _type_name(elem_type: int) -> str:
    return (
        onnx.TensorProto.DataType.Name(elem_type) if elem_type in onnx.TensorProto.DataType.values() else str(elem_type)
    )


def _params(node, ctx, elem_type: int, allowed: dict[int, str]) -> tuple[dict, dict]:
    """attrs and params of a quantize/dequantize of input 0 with scale input 1 and zero point
    input 2, its integer type ``elem_type``; one line naming the node for what is not supported."""
    a = ctx.attrs(node)
    if int(a.get("block_size", 0)):
        raise ctx.fail("blocked quantization (block_size > 0) is not supported")
    if elem_type not in allowed:
        supported = ", ".join(_type_name(t).lower() for t in allowed)
        raise ctx.fail(f"quantized type {_type_name(elem_type)} is not supported (supported: {supported})")
    scale = ctx.const(node.input[1], f"{node.op_type} scale")
    if scale.dtype != np.float32:
        raise ctx.fail(f"a {scale.dtype} scale is not supported (float32 only)")
    if scale.ndim > 1:
        raise ctx.fail(f"a scale of shape {list(scale.shape)} is not supported (a scalar or one value per channel)")
    zero = ctx.optional_const(node, 2, f"{node.op_type} zero point")
    zero = np.zeros(scale.shape, np.int32) if zero is None else zero.astype(np.int32)
    attrs = {"dtype": allowed[elem_type]}
    if scale.size > 1 or scale.ndim == 1:
        rank = len(ctx.shape(node.input[0]))
        axis = int(a.get("axis", 1)) % rank
        if axis == 0:
            raise ctx.fail("quantization per sample (axis 0, the batch axis) is not supported")
        if scale.size != ctx.shape(node.input[0])[axis]:
            raise ctx.fail(f"{scale.size} scales for {ctx.shape(node.input[0])[axis]} entries along axis {axis}")
        attrs["axis"] = axis
    if np.any(~np.isfinite(scale)) or np.any(scale <= 0):
        raise ctx.fail("scales must be positive and finite")
    return attrs, {"scale": scale, "zero_point": zero}


@converter("QuantizeLinear")
def quantize_linear(node, ctx):
    """QuantizeLinear (opsets 10–21: per tensor or per axis; uint8, int8, uint16, int16, and
    uint4/int4 held in 8 bits with their range as ``qmin``/``qmax``) → quantize."""
    zero = ctx.optional_const(node, 2, "QuantizeLinear zero point")
    if zero is not None:
        elem_type = onnx.helper.np_dtype_to_tensor_dtype(zero.dtype)
    else:  # no zero point: output_dtype (opset 21), else uint8
        elem_type = int(ctx.attrs(node).get("output_dtype", 0)) or onnx.TensorProto.UINT8
    source = ctx.dtypes.get(ctx.resolve(node.input[0]), onnx.TensorProto.FLOAT)
    if source != onnx.TensorProto.FLOAT:
        raise ctx.fail(f"quantizing {_type_name(source)} values is not supported (float32 only)")
    attrs, params = _params(node, ctx, elem_type, _QUANTIZED)
    if elem_type in _NARROW_RANGE:
        attrs["qmin"], attrs["qmax"] = _NARROW_RANGE[elem_type]
    ctx.emit("quantize", [node.input[0]], [node.output[0]], attrs, params)


@converter("DequantizeLinear")
def dequantize_linear(node, ctx):
    """DequantizeLinear of an activation (uint8, int8, uint16, int16, uint4, int4, int32; per
    tensor or per axis) → dequantize; of a constant (a quantized weight) it is folded at load time."""
    elem_type = ctx.dtypes.get(ctx.resolve(node.input[0]), onnx.TensorProto.UNDEFINED)
    attrs, params = _params(node, ctx, elem_type, _DEQUANTIZABLE)
    ctx.emit("dequantize", [node.input[0]], [node.output[0]], attrs, params)


# ---- write rules: core op → ONNX (the artifact writer, formats/onnx/writer.py) ----------------
def _write(onnx_op: str):
    def rule(b, n) -> None:
        dtype = np.dtype(n.attrs["dtype"])
        zero = n.params["zero_point"].numpy().astype(dtype)
        inputs = [n.inputs[0], b.const(n, "scale", n.params["scale"]), b.const(n, "zero_point", zero)]
        attrs = {"axis": int(n.attrs["axis"])} if n.attrs.get("axis") is not None else {}
        if onnx_op == "DequantizeLinear" or ("qmin" not in n.attrs and "qmax" not in n.attrs):
            b.add(onnx_op, inputs, n.outputs, n.name, **attrs)
            return
        # a grid narrower than its type (QCDQ): the integers clipped, as the model wrote it
        info = np.iinfo(dtype)
        bounds = [
            b.const(n, key, dtype.type(n.attrs.get(key, default)))
            for key, default in (("qmin", info.min), ("qmax", info.max))
        ]
        q = b.tmp(n)
        b.add(onnx_op, inputs, [q], n.name, **attrs)
        b.add("Clip", [q, *bounds], n.outputs, n.name + "/grid")

    rule.__doc__ = f"{onnx_op} with its scale and a zero point of the quantized type"
    return rule


writes("quantize")(_write("QuantizeLinear"))
writes("dequantize")(_write("DequantizeLinear"))

assert set(_DEQUANTIZABLE.values()) <= set(CAST_DTYPES.values())  # the writer's type table knows them
