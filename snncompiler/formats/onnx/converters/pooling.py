"""Converters for pooling: MaxPool, AveragePool and their global forms."""

from __future__ import annotations

from ..registry import converter, ints, writes
from .layers import conv_pads


def _pool_attrs(node, ctx):
    a = ctx.attrs(node)
    kernel = list(a["kernel_shape"])
    nd = len(kernel)
    strides = list(a.get("strides", [1] * nd))
    dilations = list(a.get("dilations", [1] * nd))
    pads = conv_pads(a, ctx.shape(node.input[0])[2:], kernel, strides, dilations)
    return a, {
        "kernel": kernel,
        "stride": strides,
        "pads": pads,
        "dilation": dilations,
        "ceil_mode": int(a.get("ceil_mode", 0)),
    }


@converter("MaxPool")
def max_pool(node, ctx):
    """MaxPool (pads, auto_pad, dilations, ceil_mode) → maxpool; the Indices output is not supported."""
    a, attrs = _pool_attrs(node, ctx)
    if len(node.output) > 1 and node.output[1]:
        raise ctx.fail("the Indices output of MaxPool is not supported")
    if any(p < 0 for p in attrs["pads"]):
        raise ctx.fail(
            f"auto_pad gives negative pads {attrs['pads']} (a stride larger than the kernel); onnxruntime "
            "refuses that MaxPool too (padding values must be non-negative)"
        )
    ctx.emit("maxpool", [node.input[0]], [node.output[0]], attrs)


@converter("AveragePool")
def average_pool(node, ctx):
    """AveragePool (pads, auto_pad, ceil_mode, count_include_pad) → avgpool."""
    a, attrs = _pool_attrs(node, ctx)
    if any(d != 1 for d in attrs["dilation"]):
        raise ctx.fail("AveragePool with dilations is not supported")
    attrs["count_include_pad"] = int(a.get("count_include_pad", 0))
    ctx.emit("avgpool", [node.input[0]], [node.output[0]], attrs)


@converter("GlobalAveragePool")
def global_average_pool(node, ctx):
    """GlobalAveragePool → avgpool(global)."""
    ctx.emit("avgpool", [node.input[0]], [node.output[0]], {"global": True})


@converter("GlobalMaxPool")
def global_max_pool(node, ctx):
    """GlobalMaxPool → maxpool(global)."""
    ctx.emit("maxpool", [node.input[0]], [node.output[0]], {"global": True})


# ---- write rules: core op → ONNX (the artifact writer, formats/onnx/writer.py) ----------------
@writes("maxpool", "avgpool")
def write_pool(b, n) -> None:
    """MaxPool / AveragePool, or their Global forms."""
    a = n.attrs
    onnx_op = "MaxPool" if n.op == "maxpool" else "AveragePool"
    if a.get("global"):
        b.add("Global" + onnx_op, n.inputs, n.outputs, n.name)
        return
    extra = (
        {"dilations": ints(a.get("dilation", [1] * len(a["kernel"])))}
        if n.op == "maxpool"
        else {"count_include_pad": int(a.get("count_include_pad", 0))}
    )
    pads, ceil_mode = list(a["pads"]), int(a.get("ceil_mode", 0))
    floor_pads = _floor_mode_pads(b, n) if ceil_mode else None
    if floor_pads is not None:
        pads, ceil_mode = floor_pads, 0
    b.add(
        onnx_op,
        n.inputs,
        n.outputs,
        n.name,
        kernel_shape=ints(a["kernel"]),
        strides=ints(a["stride"]),
        pads=ints(pads),
        ceil_mode=ceil_mode,
        **extra,
    )


def _floor_mode_pads(b, n) -> list[int] | None:
    """A ceil-mode pool as floor mode with end pads that give the runtime's output size, where
    the values stay the same (max pooling, or averages that do not count pads). onnxruntime drops
    a last window that would start in the end padding; ONNX shape inference does not, so the
    artifact's recorded shapes contradicted it and the file did not load back."""
    a = n.attrs
    if n.op == "avgpool" and a.get("count_include_pad", 0):
        return None
    in_shape, out_shape = b.graph.shape(n.inputs[0]), b.graph.shape(n.outputs[0])
    if in_shape is None or out_shape is None:
        return None
    kernel, stride = a["kernel"], a["stride"]
    nd = len(kernel)
    dilation = a.get("dilation", [1] * nd)
    begins, ends = list(a["pads"][:nd]), []
    for i in range(nd):
        span = (kernel[i] - 1) * dilation[i] + 1
        end = max(0, (out_shape[2 + i] - 1) * stride[i] + span - in_shape[2 + i] - begins[i])
        if end >= span:  # onnxruntime requires pads smaller than the kernel
            return None
        ends.append(end)
    return begins + ends
