"""onnxruntime's forms of layers, rewritten at load time as the standard ONNX they stand for.

A QOperator layer computes ``quantize(f(dequantize(x), ...))`` on integer tensors: the
standard QLinearConv and QLinearMatMul, and the ``com.microsoft`` layers onnxruntime's
quantizer writes with ``QuantFormat.QOperator`` (QLinearAdd, QGemm, QLinearGlobalAveragePool,
...). Each becomes DequantizeLinear of its quantized inputs, the float operator ``f`` and
QuantizeLinear of its output, so the model reads as the QDQ model it is equal to and the
quantization machinery (converters/quantization.py, passes/fake_quant.py) takes it from there.
The operators onnxruntime leaves on the integers between such layers (MaxPool, Flatten, Pad ...),
in any model, run on the dequantized values and quantize back onto the same grid: the same
integers, and a quantize → dequantize pair around each layer that compile can make a neuron of.
onnxruntime's dynamic quantization (MatMulInteger / ConvInteger on a DynamicQuantizeLinear) is
read as the float layer with the dequantized weight, its per-batch activation rounding dropped.
The com.microsoft fusions onnxruntime's optimiser saves (``optimized_model_filepath``: FusedConv,
FusedGemm, NhwcMaxPool) become their float layer and its activation again.

The rewrite runs on the ONNX model, after version conversion and before shape inference: onnx
knows no ``com.microsoft`` schema, so nothing after such a node would have a type or a shape.
One small function per layer, behind a registry (:func:`lowering`), as the converters are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from ...errors import SnncError

log = logging.getLogger(__name__)

#: onnxruntime's operator domain
MS_DOMAIN = "com.microsoft"

Lowering = Callable[["_Rewrite", onnx.NodeProto], None]
#: (domain, op_type) → the function that writes the node's standard form
LOWERINGS: dict[tuple[str, str], Lowering] = {}


def lowering(*op_types: str, domain: str = ""):
    """Register the decorated function as the rewrite of ``op_types`` in ``domain``."""

    def register(fn: Lowering) -> Lowering:
        for op in op_types:
            LOWERINGS[(domain, op)] = fn
        return fn

    return register


def lowered_ops() -> list[str]:
    """The operators this module rewrites, as ``supported_ops`` names them (``domain::op``)."""
    return [op if not domain else f"{domain}::{op}" for domain, op in LOWERINGS]


def lower_ort_forms(model: onnx.ModelProto, label: str) -> None:
    """Rewrite in place every QOperator node of ``model``, the integer operators between such
    layers and onnxruntime's dynamically quantized layers; a ``com.microsoft`` node with no
    rewrite is an error naming it and what is supported."""
    quantized = ("", "QuantizeLinear")
    triggers = {quantized, *_INTEGER_LAYER_KEYS}
    if not any(_key(n) in LOWERINGS or n.domain == MS_DOMAIN or _key(n) in triggers for n in model.graph.node):
        return
    rewrite = _Rewrite(model, label)
    dynamic = _dynamic_layers(model, label, set(rewrite.constants))
    absorbed = {id(node) for layer in dynamic.values() for node in layer[1:]}
    for node in list(model.graph.node):
        fn = LOWERINGS.get(_key(node))
        grid = rewrite.grids.get(node.input[0]) if node.input else None
        if id(node) in dynamic:
            rewrite.start(node)
            _dynamic_as_float(rewrite, *dynamic[id(node)])
        elif id(node) in absorbed:
            continue
        elif fn is not None:
            rewrite.start(node)
            fn(rewrite, node)
        elif grid is not None and _key(node) in _ON_GRID_KEYS:
            rewrite.start(node)
            _on_floats(rewrite, node, grid)
        elif node.domain == MS_DOMAIN:
            supported = ", ".join(sorted(op for domain, op in LOWERINGS if domain == MS_DOMAIN))
            raise SnncError(
                f"{label}: node {node.op_type} '{node.name or node.output[0]}': onnxruntime's "
                f"{MS_DOMAIN}::{node.op_type} is not supported (of {MS_DOMAIN}, snnc reads {supported})"
            )
        else:
            rewrite.nodes.append(node)
            if _key(node) == quantized and rewrite.is_scalar(node.input[1]):
                rewrite.grids[node.output[0]] = (node.input[1], rewrite.input_of(node, 2))
    del model.graph.node[:]
    model.graph.node.extend(
        _without_dead(rewrite.nodes, model, {"DynamicQuantizeLinear", "Mul"}) if dynamic else rewrite.nodes
    )
    model.graph.initializer.extend(rewrite.initializers)
    if dynamic:
        log.warning(
            "%s: %d dynamically quantized layers read as float layers with their dequantized weights "
            "(the activations' rounding, which onnxruntime takes from each batch's range, is dropped)",
            label,
            len(dynamic),
        )
    if not any(n.domain == MS_DOMAIN for n in model.graph.node):
        kept = [imp for imp in model.opset_import if imp.domain != MS_DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(kept)


def _key(node: onnx.NodeProto) -> tuple[str, str]:
    return ("" if node.domain in ("", "ai.onnx") else node.domain, node.op_type)


class _Rewrite:
    """The nodes and constants that replace a model's onnxruntime forms, with fresh names."""

    def __init__(self, model: onnx.ModelProto, label: str):
        self.model, self.label = model, label
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.constants = {t.name: t for t in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.attribute:
                if node.attribute[0].name == "value":
                    self.constants[node.output[0]] = node.attribute[0].t
        self.names = {name for n in model.graph.node for name in (*n.input, *n.output)} | set(self.constants)
        self.names |= {v.name for v in model.graph.input}
        self.node: onnx.NodeProto | None = None
        #: quantized value → (scale, zero point) of the QuantizeLinear that made it, per tensor
        self.grids: dict[str, tuple[str, str]] = {}

    @staticmethod
    def input_of(node: onnx.NodeProto, index: int) -> str:
        return node.input[index] if index < len(node.input) else ""

    def start(self, node: onnx.NodeProto) -> None:
        self.node = node

    def fail(self, message: str) -> SnncError:
        node = self.node
        return SnncError(f"{self.label}: node {node.op_type} '{node.name or node.output[0]}': {message}")

    def fresh(self, hint: str) -> str:
        name, i = f"{self.node.output[0]}__{hint}", 1
        while name in self.names:
            name, i = f"{self.node.output[0]}__{hint}{i}", i + 1
        self.names.add(name)
        return name

    def input(self, index: int) -> str:
        """The node's input ``index``, or "" where it is absent."""
        return self.input_of(self.node, index)

    def attrs(self, *drop: str) -> dict:
        return {a.name: helper.get_attribute_value(a) for a in self.node.attribute if a.name not in drop}

    def constant(self, name: str, what: str) -> np.ndarray:
        if name not in self.constants:
            raise self.fail(f"{what} must be a constant (initializer), got an activation")
        return numpy_helper.to_array(self.constants[name])

    def is_scalar(self, name: str) -> bool:
        """Whether ``name`` is a constant with one value (a per-tensor scale)."""
        return name in self.constants and int(np.prod(self.constants[name].dims)) == 1

    def add_constant(self, hint: str, value: np.ndarray) -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(value, name))
        self.constants[name] = self.initializers[-1]
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        """Append a standard node; its output is ``output`` or a fresh name."""
        output = output or self.fresh(op_type.lower())
        name = self.node.name or self.node.output[0]
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=f"{name}/{op_type}", **attrs))
        return output

    def dequantize(self, x: str, scale: str, zero: str, axis: int | None = None) -> str:
        """DequantizeLinear of ``x``; ``axis`` where a weight's scale has one value per channel."""
        inputs = [x, scale, zero] if zero else [x, scale]
        per_axis = axis is not None and self.constant(scale, "a weight's scale").ndim == 1
        return self.op("DequantizeLinear", inputs, **({"axis": axis} if per_axis else {}))

    def quantize(self, y: str, scale: str, zero: str, output: str | None = None) -> None:
        """QuantizeLinear of the float result ``y`` to ``output`` (the node's output)."""
        output = output or self.node.output[0]
        self.op("QuantizeLinear", [y, scale, zero] if zero else [y, scale], output)
        self.grids[output] = (scale, zero)

    def shape(self, name: str) -> list[int | None]:
        """The shape of ``name`` (None for a size left open) as shape inference sees the model
        rewritten so far."""
        if name in self.constants:
            return [int(d) for d in self.constants[name].dims]
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        del model.graph.node[:]
        model.graph.node.extend(self.nodes)
        model.graph.initializer.extend(self.initializers)
        inferred = shape_inference.infer_shapes(model)
        for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            if value.name == name and value.type.tensor_type.HasField("shape"):
                return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        raise self.fail(f"the shape of '{name}' is unknown")


#: operators that pick, move or compare the integers of a quantized tensor: they commute with
#: dequantization (increasing and affine), so on a QOperator model's integers (onnxruntime
#: leaves MaxPool, Flatten, Reshape ... there) they run on the dequantized floats and quantize
#: back onto the same grid, which gives the same integers
_ON_GRID = (
    "MaxPool", "GlobalMaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity",
    "Slice", "Gather", "Split", "Expand", "Tile", "SpaceToDepth", "DepthToSpace", "ReduceMax", "ReduceMin",
    "Resize", "Pad",
)  # fmt: skip
#: ... and those whose result is an index into it, not on its grid
_TO_INDEX = ("ArgMax", "ArgMin")
_ON_GRID_KEYS = frozenset(("", op) for op in (*_ON_GRID, *_TO_INDEX))


def _on_floats(r: _Rewrite, node: onnx.NodeProto, grid: tuple[str, str]) -> None:
    """``node`` on the dequantized values of its quantized input 0, its outputs quantized back
    onto that grid (an index output, MaxPool's second, as it was)."""
    scale, zero = grid
    inputs = [r.dequantize(node.input[0], scale, zero), *node.input[1:]]
    if node.op_type == "Pad" and _text(r.attrs().get("mode", "constant")) == "constant":
        # the pad value is an integer on the grid: 0 unless given, the float it stands for
        # (x − zero)·scale
        pad = r.constant(inputs[2], "Pad's value").astype(np.float32) if len(inputs) > 2 and inputs[2] else 0.0
        offset = r.constant(zero, "the zero point").astype(np.float32) if zero else np.float32(0)
        value = (np.float32(pad) - offset) * r.constant(scale, "the scale").astype(np.float32)
        inputs[2:3] = [r.add_constant("pad_value", np.asarray(value, np.float32).reshape(()))]
    if node.op_type in _TO_INDEX:
        r.nodes.append(helper.make_node(node.op_type, inputs, list(node.output), name=node.name))
        r.nodes[-1].attribute.extend(node.attribute)
        return
    outputs = [
        r.fresh(f"float{i}") if i == 0 or node.op_type == "Split" else name for i, name in enumerate(node.output)
    ]
    float_node = helper.make_node(node.op_type, inputs, outputs, name=node.name, domain=node.domain)
    float_node.attribute.extend(node.attribute)
    r.nodes.append(float_node)
    for float_output, output in zip(outputs, node.output):
        if float_output != output and output:
            r.quantize(float_output, scale, zero, output)


def _channels_first(r: _Rewrite, x: str, rank: int) -> str:
    """An NHWC (``channels_last``) float tensor as NCHW."""
    return r.op("Transpose", [x], perm=[0, rank - 1, *range(1, rank - 1)])


def _channels_last(r: _Rewrite, x: str, rank: int, output: str | None = None) -> str:
    """An NCHW float tensor as NHWC."""
    return r.op("Transpose", [x], output, perm=[0, *range(2, rank), 1])


def _unary(r: _Rewrite, node, float_op: str, **attrs) -> None:
    """(X, X_scale, X_zero_point, Y_scale, Y_zero_point) → ``float_op``."""
    y = r.op(float_op, [r.dequantize(r.input(0), r.input(1), r.input(2))], **attrs)
    r.quantize(y, r.input(3), r.input(4))


@lowering("QLinearConv")
@lowering("QLinearConv", domain=MS_DOMAIN)
def qlinear_conv(r: _Rewrite, node) -> None:
    """QLinearConv (weights per tensor or per output channel; com.microsoft's also NHWC) → Conv;
    its int32 bias is dequantized with x_scale · w_scale, the scale onnxruntime accumulates in."""
    x = r.dequantize(r.input(0), r.input(1), r.input(2))
    inputs = [x, r.dequantize(r.input(3), r.input(4), r.input(5), axis=0)]
    if r.input(8):
        scale = r.constant(r.input(1), "x_scale") * r.constant(r.input(4), "w_scale")
        inputs.append(r.dequantize(r.input(8), r.add_constant("bias_scale", scale.astype(np.float32)), "", axis=0))
    attrs = r.attrs("channels_last")
    if r.attrs().get("channels_last", 0):
        rank = len(r.constant(r.input(3), "the weight").shape)
        inputs[0] = _channels_first(r, x, rank)
        y = _channels_last(r, r.op("Conv", inputs, **attrs), rank)
    else:
        y = r.op("Conv", inputs, **attrs)
    r.quantize(y, r.input(6), r.input(7))


@lowering("QLinearMatMul")
def qlinear_matmul(r: _Rewrite, node) -> None:
    """QLinearMatMul (right operand per tensor or per output column) → MatMul."""
    a = r.dequantize(r.input(0), r.input(1), r.input(2))
    b = r.dequantize(r.input(3), r.input(4), r.input(5), axis=-1)
    r.quantize(r.op("MatMul", [a, b]), r.input(6), r.input(7))


@lowering("QGemm", domain=MS_DOMAIN)
def qgemm(r: _Rewrite, node) -> None:
    """QGemm → Gemm (beta 1); its int32 C is dequantized with alpha · a_scale · b_scale, and
    without y_scale the output stays float."""
    attrs = r.attrs()
    alpha = float(attrs.get("alpha", 1.0))
    column_axis = 0 if attrs.get("transB", 0) else 1
    inputs = [
        r.dequantize(r.input(0), r.input(1), r.input(2)),
        r.dequantize(r.input(3), r.input(4), r.input(5), axis=column_axis),
    ]
    if r.input(6):
        scale = alpha * r.constant(r.input(1), "a_scale") * r.constant(r.input(4), "b_scale")
        c_axis = len(r.constant(r.input(6), "C").shape) - 1
        inputs.append(r.dequantize(r.input(6), r.add_constant("c_scale", scale.astype(np.float32)), "", axis=c_axis))
    gemm = {"alpha": alpha, "transA": int(attrs.get("transA", 0)), "transB": int(attrs.get("transB", 0))}
    if not r.input(7):
        r.op("Gemm", inputs, node.output[0], **gemm)
        return
    r.quantize(r.op("Gemm", inputs, **gemm), r.input(7), r.input(8))


@lowering("QLinearAdd", "QLinearMul", domain=MS_DOMAIN)
def qlinear_binary(r: _Rewrite, node) -> None:
    """QLinearAdd / QLinearMul (A, A_scale, A_zero, B, B_scale, B_zero, C_scale, C_zero) → Add / Mul."""
    a = r.dequantize(r.input(0), r.input(1), r.input(2))
    b = r.dequantize(r.input(3), r.input(4), r.input(5))
    r.quantize(r.op(node.op_type.removeprefix("QLinear"), [a, b]), r.input(6), r.input(7))


@lowering("QLinearGlobalAveragePool", domain=MS_DOMAIN)
def qlinear_global_average_pool(r: _Rewrite, node) -> None:
    """QLinearGlobalAveragePool → GlobalAveragePool (NHWC: the mean over the spatial axes)."""
    if not r.attrs().get("channels_last", 0):
        _unary(r, node, "GlobalAveragePool")
        return
    x = r.dequantize(r.input(0), r.input(1), r.input(2))
    axes = r.add_constant("axes", np.arange(1, len(r.shape(r.input(0))) - 1, dtype=np.int64))
    r.quantize(r.op("ReduceMean", [x, axes], keepdims=1), r.input(3), r.input(4))


@lowering("QLinearAveragePool", domain=MS_DOMAIN)
def qlinear_average_pool(r: _Rewrite, node) -> None:
    """QLinearAveragePool → AveragePool (NHWC transposed around it). Counting the padding, it
    divides every window by the kernel's size, also a ``ceil_mode`` window reaching past the
    padding, where the standard AveragePool counts only what lies in the padded input: such a
    window gets zeros padded up to its end."""
    attrs = r.attrs("channels_last")
    channels_last = r.attrs().get("channels_last", 0)
    rank = len(attrs["kernel_shape"]) + 2
    x = r.dequantize(r.input(0), r.input(1), r.input(2))
    if channels_last:
        x = _channels_first(r, x, rank)
    if attrs.get("ceil_mode", 0) and attrs.get("count_include_pad", 0):
        x, attrs = _padded_to_last_window(r, x, rank, attrs)
    y = r.op("AveragePool", [x], **attrs)
    r.quantize(_channels_last(r, y, rank) if channels_last else y, r.input(3), r.input(4))


def _padded_to_last_window(r: _Rewrite, x: str, rank: int, attrs: dict) -> tuple[str, dict]:
    """``x`` padded with zeros (its padding and each ceil_mode window's overhang), and the
    attributes of the AveragePool that then divides every window by the kernel's size."""
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return x, attrs  # the spatial sizes follow the input's: no window reaches past them
    shape = r.shape(r.input(0))
    spatial = shape[1:-1] if r.attrs().get("channels_last", 0) else shape[2:]
    if any(size is None for size in spatial):
        raise r.fail("ceil_mode with count_include_pad needs the input's spatial sizes, and they are unknown")
    kernel, n = list(attrs["kernel_shape"]), rank - 2
    strides, pads = list(attrs.get("strides", [1] * n)), list(attrs.get("pads", [0] * 2 * n))
    begin, end = pads[:n], pads[n:]
    for i, size in enumerate(spatial):
        padded = size + begin[i] + end[i]
        windows = -(-(padded - kernel[i]) // strides[i]) + 1
        if (windows - 1) * strides[i] >= size + begin[i]:
            windows -= 1  # a last window that would start in the end padding is dropped (ONNX)
        end[i] += max(0, (windows - 1) * strides[i] + kernel[i] - padded)
    all_pads = np.asarray([0, 0, *begin, 0, 0, *end], np.int64)
    padded_x = r.op("Pad", [x, r.add_constant("pads", all_pads)])
    plain = {k: v for k, v in attrs.items() if k not in ("pads", "ceil_mode")}
    return padded_x, {**plain, "count_include_pad": 1}


@lowering("QLinearLeakyRelu", domain=MS_DOMAIN)
def qlinear_leaky_relu(r: _Rewrite, node) -> None:
    """QLinearLeakyRelu → LeakyRelu (alpha 0.01 unless given)."""
    _unary(r, node, "LeakyRelu", alpha=float(r.attrs().get("alpha", 0.01)))


@lowering("QLinearSigmoid", domain=MS_DOMAIN)
def qlinear_sigmoid(r: _Rewrite, node) -> None:
    """QLinearSigmoid → Sigmoid."""
    _unary(r, node, "Sigmoid")


@lowering("QLinearSoftmax", domain=MS_DOMAIN)
def qlinear_softmax(r: _Rewrite, node) -> None:
    """QLinearSoftmax → Softmax along ``axis`` (its ``opset`` ≥ 13), or over the input flattened
    to 2-D at ``axis`` (opset < 13, where ``axis`` defaults to 1)."""
    attrs = r.attrs()
    if "opset" not in attrs:
        raise r.fail("the required attribute 'opset' is missing")
    x = r.dequantize(r.input(0), r.input(1), r.input(2))
    if int(attrs["opset"]) >= 13:
        y = r.op("Softmax", [x], axis=int(attrs.get("axis", -1)))
    else:
        flat = r.op("Flatten", [x], axis=int(attrs.get("axis", 1)))
        y = r.op("Reshape", [r.op("Softmax", [flat], axis=1), r.op("Shape", [x])])
    r.quantize(y, r.input(3), r.input(4))


@lowering("QLinearConcat", domain=MS_DOMAIN)
def qlinear_concat(r: _Rewrite, node) -> None:
    """QLinearConcat (Y_scale, Y_zero, then X, X_scale, X_zero per input) → Concat."""
    if (len(node.input) - 2) % 3 or len(node.input) < 5:
        raise r.fail(f"{len(node.input)} inputs: expected Y_scale, Y_zero_point and a triple per input")
    parts = [r.dequantize(*node.input[i : i + 3]) for i in range(2, len(node.input), 3)]
    r.quantize(r.op("Concat", parts, axis=int(r.attrs()["axis"])), r.input(0), r.input(1))


@lowering("QLinearWhere", domain=MS_DOMAIN)
def qlinear_where(r: _Rewrite, node) -> None:
    """QLinearWhere (condition, X, x_scale, x_zero, Y, y_scale, y_zero, z_scale, z_zero) → Where."""
    x = r.dequantize(r.input(1), r.input(2), r.input(3))
    y = r.dequantize(r.input(4), r.input(5), r.input(6))
    r.quantize(r.op("Where", [r.input(0), x, y]), r.input(7), r.input(8))


# ---- fusions onnxruntime's optimiser saves ---------------------------------------------------
def _activation(r: _Rewrite, x: str, name: str, params: list[float], output: str) -> None:
    """``x`` through a fused activation named ``name`` with its float parameters (FusedConv's
    ``activation_params``; FusedGemm's activation_alpha, _beta) into ``output``."""
    if name in ("Relu", "Sigmoid", "Tanh"):
        r.op(name, [x], output)
    elif name == "LeakyRelu":
        r.op(name, [x], output, alpha=params[0] if params else 0.01)
    elif name == "HardSigmoid":
        r.op(name, [x], output, alpha=params[0] if params else 0.2, beta=params[1] if len(params) > 1 else 0.5)
    elif name == "Clip" and len(params) == 2:
        bounds = [r.add_constant(key, np.float32(v)) for key, v in (("min", params[0]), ("max", params[1]))]
        r.op("Clip", [x, *bounds], output)
    else:
        raise r.fail(f"the fused activation '{name}' with parameters {params} is not supported")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


@lowering("FusedConv", domain=MS_DOMAIN)
def fused_conv(r: _Rewrite, node) -> None:
    """FusedConv(X, W[, B][, Z]) → activation(Conv(X, W, B) + Z), the Conv (+ Add) + activation
    onnxruntime's optimiser fuses."""
    activation = _text(r.attrs().get("activation", ""))
    params = [float(v) for v in r.attrs().get("activation_params", [])]
    last = not activation and not r.input(3)
    y = r.op(
        "Conv", list(node.input[:3]), node.output[0] if last else None, **r.attrs("activation", "activation_params")
    )
    if r.input(3):
        y = r.op("Add", [y, r.input(3)], None if activation else node.output[0])
    if activation:
        _activation(r, y, activation, params, node.output[0])


@lowering("FusedGemm", domain=MS_DOMAIN)
def fused_gemm(r: _Rewrite, node) -> None:
    """FusedGemm → activation(Gemm), its activation's parameters in activation_alpha, _beta."""
    attrs = r.attrs()
    activation = _text(attrs.get("activation", ""))
    gemm = {k: attrs[k] for k in ("alpha", "beta", "transA", "transB") if k in attrs}
    y = r.op("Gemm", list(node.input), None if activation else node.output[0], **gemm)
    if activation:
        params = [float(attrs[k]) for k in ("activation_alpha", "activation_beta") if k in attrs]
        _activation(r, y, activation, params, node.output[0])


@lowering("NhwcMaxPool", domain=MS_DOMAIN)
def nhwc_max_pool(r: _Rewrite, node) -> None:
    """NhwcMaxPool (on a quantized NHWC tensor) → MaxPool between transposes, on the floats of
    its grid where a QuantizeLinear made it."""
    rank = len(r.attrs()["kernel_shape"]) + 2
    grid = r.grids.get(node.input[0])
    x = r.dequantize(node.input[0], *grid) if grid else node.input[0]
    pooled = r.op("MaxPool", [_channels_first(r, x, rank)], **r.attrs())
    if grid:
        r.quantize(_channels_last(r, pooled, rank), *grid)
    else:
        _channels_last(r, pooled, rank, node.output[0])


# ---- dynamic quantization (onnxruntime's quantize_dynamic) -----------------------------------
#: the integer layers of dynamic quantization, by the float layer each stands for
_INTEGER_LAYERS = {"MatMulInteger": "MatMul", "ConvInteger": "Conv"}
_INTEGER_LAYER_KEYS = frozenset(("", op) for op in _INTEGER_LAYERS)


def _dynamic_layers(model: onnx.ModelProto, label: str, constants: set[str]) -> dict[int, tuple]:
    """Each integer layer of onnxruntime's dynamic quantization, by id: (the layer, its Cast,
    its Mul by x_scale · w_scale, the float input x, the weight's scale), from
    DynamicQuantizeLinear(x) → MatMulInteger / ConvInteger(constant weight) → Cast → Mul; any
    other use of an integer layer is an error naming it. ``constants``: the model's constant names."""
    producer = {out: n for n in model.graph.node for out in n.output}
    users: dict[str, list] = {}
    for n in model.graph.node:
        for name in n.input:
            users.setdefault(name, []).append(n)
    found = {}
    for layer in model.graph.node:
        if _key(layer) in _INTEGER_LAYER_KEYS:
            try:
                found[id(layer)] = _dynamic_layer(layer, producer, users, constants)
            except ValueError as exc:
                raise SnncError(
                    f"{label}: node {layer.op_type} '{layer.name or layer.output[0]}': {exc} (snnc reads "
                    f"onnxruntime's dynamic quantization: DynamicQuantizeLinear(x) → {layer.op_type} with a "
                    "constant weight → Cast → Mul by x_scale · w_scale)"
                ) from None
    return found


def _dynamic_layer(layer, producer: dict, users: dict, constants: set) -> tuple:
    """One integer layer's (layer, cast, mul, x, weight scale); ValueError saying what differs."""
    source = producer.get(layer.input[0])
    if source is None or source.op_type != "DynamicQuantizeLinear":
        raise ValueError("its input is not a DynamicQuantizeLinear's")
    if len(layer.input) < 3 or layer.input[2] != source.output[2]:
        raise ValueError("its input's zero point is not the DynamicQuantizeLinear's")
    if layer.input[1] not in constants:
        raise ValueError("its weight is not a constant")
    cast = users.get(layer.output[0], [])
    if len(cast) != 1 or cast[0].op_type != "Cast":
        raise ValueError("its int32 result is not only cast to float")
    mul = users.get(cast[0].output[0], [])
    if len(mul) != 1 or mul[0].op_type != "Mul":
        raise ValueError("its cast result is not only scaled by a Mul")
    scale = producer.get(next((i for i in mul[0].input if i != cast[0].output[0]), ""))
    factors = scale.input if scale is not None and scale.op_type == "Mul" else []
    weight_scale = [i for i in factors if i != source.output[1]]
    if len(factors) != 2 or len(weight_scale) != 1 or weight_scale[0] not in constants:
        raise ValueError("its result is not scaled by x_scale · w_scale")
    return layer, cast[0], mul[0], source.input[0], weight_scale[0]


def _dynamic_as_float(r: _Rewrite, layer, cast, mul, x: str, weight_scale: str) -> None:
    """An integer layer as its float layer on x and the dequantized weight, writing the Mul's output."""
    zero = r.input(3)
    axis = -1 if layer.op_type == "MatMulInteger" else 0  # a scale per output column / channel
    weight = r.dequantize(layer.input[1], weight_scale, zero, axis=axis)
    r.op(_INTEGER_LAYERS[layer.op_type], [x, weight], mul.output[0], **r.attrs())


def _without_dead(nodes: list, model: onnx.ModelProto, ops: set[str]) -> list:
    """``nodes`` less those of ``ops`` that nothing reads any more (a DynamicQuantizeLinear and
    its scale product, once every layer reading them is float)."""
    while True:
        read = {name for n in nodes for name in n.input} | {v.name for v in model.graph.output}
        kept = [n for n in nodes if n.op_type not in ops or any(out in read for out in n.output)]
        if len(kept) == len(nodes):
            return kept
        nodes = kept
