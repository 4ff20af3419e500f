"""Converters for layers with weights: Conv, ConvTranspose, Gemm, MatMul, normalizations."""

from __future__ import annotations

import math

import numpy as np

from ..registry import converter, ints, writes


def conv_pads(attrs: dict, in_spatial, kernel, strides, dilations) -> list[int]:
    """Explicit ONNX pads (begins then ends) from ``pads`` or ``auto_pad`` (Conv and pooling).

    The SAME formula is not clamped: a stride larger than the kernel gives negative pads,
    split with C's truncating division as onnxruntime does."""
    nd = len(kernel)
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        return list(attrs.get("pads", [0] * 2 * nd))
    if auto == "VALID":
        return [0] * 2 * nd
    begins, ends = [], []
    for size, k, s, d in zip(in_spatial, kernel, strides, dilations):
        out = math.ceil(size / s)
        total = (out - 1) * s + (k - 1) * d + 1 - size
        head = int(total / 2) if auto == "SAME_UPPER" else int((total + 1) / 2)  # truncating, like C
        begins.append(head)
        ends.append(total - head)
    return begins + ends


def _crop_start(ctx, x: str, crops, out: str) -> str:
    """A slice of x's spatial axes that drops the first ``crops[i]`` positions of axis 2 + i
    (where onnxruntime's windows start under a negative SAME padding; ONNX files may not hold
    negative Conv pads)."""
    axes = [2 + i for i, c in enumerate(crops) if c > 0]
    cropped = ctx.fresh(out)
    big = 1 << 62  # to the end of the axis
    attrs = {"starts": [crops[a - 2] for a in axes], "ends": [big] * len(axes), "axes": axes, "steps": [1] * len(axes)}
    ctx.emit("slice", [x], [cropped], attrs)
    return cropped


def _conv_common(node, ctx):
    """What Conv and ConvTranspose read alike: attributes, weight/bias params, geometry."""
    a = ctx.attrs(node)
    w = ctx.const(node.input[1], f"{node.op_type} weight")
    b = ctx.optional_const(node, 2, f"{node.op_type} bias")
    nd = w.ndim - 2
    kernel = list(a.get("kernel_shape", w.shape[2:]))
    strides, dilations = list(a.get("strides", [1] * nd)), list(a.get("dilations", [1] * nd))
    params = {"weight": w} if b is None else {"weight": w, "bias": b}
    return a, params, nd, kernel, strides, dilations


@converter("Conv")
def conv(node, ctx):
    """Conv (1-D/2-D/3-D, groups, depthwise, dilations, pads, auto_pad) → conv."""
    a, params, nd, kernel, strides, dilations = _conv_common(node, ctx)
    pads = conv_pads(a, ctx.shape(node.input[0])[2:], kernel, strides, dilations)
    x = node.input[0]
    if any(p < 0 for p in pads):  # SAME with a stride beyond the kernel: a negative total
        # onnxruntime's first window then starts at (-total-1)//2 (SAME_UPPER) or (-total-2)//2
        # (SAME_LOWER), measured over every size, kernel and stride to 13 (ONNX's reference
        # evaluator starts at 0, which onnxruntime does for totals of -1 and -2); the output has
        # ceil(size/stride) positions either way, so a crop of the start and no pads give it
        lower = str(a.get("auto_pad", b"")).find("LOWER") >= 0
        totals = [b + e for b, e in zip(pads[:nd], pads[nd:])]
        crops = [max(0, (-t - (2 if lower else 1)) // 2) if t < 0 else 0 for t in totals]
        if any(crops):
            x = _crop_start(ctx, x, crops, node.output[0])
        pads = [0 if t < 0 else p for t, p in zip(totals * 2, pads)]
    ctx.emit(
        "conv",
        [x],
        [node.output[0]],
        {"stride": strides, "pads": pads, "dilation": dilations, "groups": int(a.get("group", 1))},
        params,
    )


@converter("ConvTranspose")
def conv_transpose(node, ctx):
    """ConvTranspose (pads, output_padding, output_shape, auto_pad, groups) → conv_transpose.

    With ``output_shape`` or ``auto_pad=SAME_*`` the pads come from the total padding
    ``stride*(in-1) + output_padding + (k-1)*dilation + 1 - out``, split per auto_pad as
    onnxruntime does. A negative total (an output larger than the natural one) becomes a
    negative end pad: the runtime extends the result with rows that get only the bias,
    which is what onnxruntime returns. SAME without output_shape asks for ``in*stride``
    but, like onnxruntime and ONNX shape inference, never pads negatively then."""
    a, params, nd, kernel, strides, dilations = _conv_common(node, ctx)
    out_pad = list(a.get("output_padding", [0] * nd))
    in_spatial = ctx.shape(node.input[0])[2:]
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    pads = list(a.get("pads", [0] * 2 * nd))
    target = a.get("output_shape")
    same = auto in ("SAME_UPPER", "SAME_LOWER")
    if target is not None or same:
        target = list(target)[-nd:] if target is not None else [s * st for s, st in zip(in_spatial, strides)]
        begins, ends = [], []
        for i in range(nd):
            full = strides[i] * (in_spatial[i] - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i] + 1
            total = full - target[i]
            if total < 0:
                if a.get("output_shape") is None:  # SAME alone: clamped at 0 (onnxruntime, shape inference)
                    total = 0
                elif -total >= strides[i]:  # onnxruntime: no input size gives that output
                    raise ctx.fail(
                        f"output_shape {target[i]} on spatial axis {i} is {-total} beyond the natural size "
                        f"{full}; onnxruntime accepts at most stride - 1 = {strides[i] - 1} extra"
                    )
                else:  # the extra rows go at the end, whatever auto_pad says
                    begins.append(0)
                    ends.append(total)
                    continue
            small, big = total // 2, total - total // 2
            upper = auto == "SAME_UPPER"  # onnxruntime: NOTSET and SAME_LOWER put the odd extra at the start
            begins.append(small if upper else big)
            ends.append(big if upper else small)
        pads = begins + ends
    elif auto == "VALID":
        pads = [0] * 2 * nd
    ctx.emit(
        "conv_transpose",
        [node.input[0]],
        [node.output[0]],
        {
            "stride": strides,
            "pads": pads,
            "dilation": dilations,
            "output_padding": out_pad,
            "groups": int(a.get("group", 1)),
        },
        params,
    )


@converter("Gemm")
def gemm(node, ctx):
    """Gemm → linear (constant B), or matmul + add when B is an activation."""
    a = ctx.attrs(node)
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    x = node.input[0]
    lhs = None  # a constant A (with an activation B): the matmul's constant left operand
    if ctx.is_const(x) and not ctx.is_const(node.input[1]):
        lhs = ctx.const(x).astype(np.float32)
        lhs = np.ascontiguousarray(lhs.T if a.get("transA", 0) else lhs)
    elif a.get("transA", 0):
        t = ctx.fresh(x + "_T")
        ctx.emit("transpose", [x], [t], {"perm": [1, 0]})
        x = t
    c = (
        ctx.optional_const(node, 2, "Gemm C")
        if len(node.input) > 2 and node.input[2] and ctx.is_const(node.input[2])
        else None
    )
    if ctx.is_const(node.input[1]):
        bmat = ctx.const(node.input[1]).astype(np.float32)
        weight = (bmat if a.get("transB", 0) else bmat.T) * alpha
        out_features = weight.shape[0]
        params = {"weight": np.ascontiguousarray(weight)}
        extra_bias = None
        if c is not None:
            bias = beta * c.astype(np.float32)
            if bias.size in (1, out_features) and (bias.ndim < 2 or bias.shape[0] == 1):
                params["bias"] = np.broadcast_to(bias.reshape(-1), (out_features,)).copy()
            else:
                extra_bias = bias
        c_act = node.input[2] if len(node.input) > 2 and node.input[2] and c is None else None
        if extra_bias is None and c_act is None:
            ctx.emit("linear", [x], [node.output[0]], {}, params)
        elif c_act is None:
            mid = ctx.fresh(node.output[0])
            ctx.emit("linear", [x], [mid], {}, params)
            ctx.emit("add", [mid], [node.output[0]], {}, {"const": extra_bias})
        else:  # C is an activation: y = linear(x) + beta * C
            mid = ctx.fresh(node.output[0])
            ctx.emit("linear", [x], [mid], {}, params)
            if beta != 1.0:
                scaled = ctx.fresh(node.output[0])
                ctx.emit("mul", [c_act], [scaled], {}, {"const": np.float32(beta)})
                c_act = scaled
            ctx.emit("add", [mid, c_act], [node.output[0]])
        return
    y = node.input[1]
    if a.get("transB", 0):
        t = ctx.fresh(y + "_T")
        ctx.emit("transpose", [y], [t], {"perm": [1, 0]})
        y = t
    out = node.output[0]
    has_c = len(node.input) > 2 and bool(node.input[2])
    cur = out if (alpha == 1.0 and not has_c) else ctx.fresh(out)
    if lhs is not None:
        ctx.emit("matmul", [y], [cur], {}, {"lhs": lhs})
    else:
        ctx.emit("matmul", [x, y], [cur])
    if alpha != 1.0:
        scaled = out if not has_c else ctx.fresh(out)
        ctx.emit("mul", [cur], [scaled], {}, {"const": np.float32(alpha)})
        cur = scaled
    if c is not None:
        ctx.emit("add", [cur], [out], {}, {"const": (beta * c).astype(np.float32)})
    elif has_c:
        c_act = node.input[2]
        if beta != 1.0:
            c_act = ctx.fresh(out)
            ctx.emit("mul", [node.input[2]], [c_act], {}, {"const": np.float32(beta)})
        ctx.emit("add", [cur, c_act], [out])


@converter("MatMul")
def matmul(node, ctx):
    """MatMul → linear (constant 2-D right operand), matmul with a constant, or of two activations."""
    a_name, b_name = node.input
    if ctx.is_const(b_name) and not ctx.is_const(a_name):
        b = ctx.const(b_name).astype(np.float32)
        if b.ndim == 2 and len(ctx.shape(a_name)) >= 2:
            ctx.emit("linear", [a_name], [node.output[0]], {}, {"weight": np.ascontiguousarray(b.T)})
        else:
            ctx.emit("matmul", [a_name], [node.output[0]], {}, {"rhs": b})
    elif ctx.is_const(a_name):
        ctx.emit("matmul", [b_name], [node.output[0]], {}, {"lhs": ctx.const(a_name).astype(np.float32)})
    else:
        ctx.emit("matmul", [a_name, b_name], [node.output[0]])


@converter("Einsum")
def einsum(node, ctx):
    """Einsum → einsum: linear in its one activation operand when the others are constants
    (params ``operand<i>``; ``operands`` records where each goes), analog with several."""
    equation = ctx.attrs(node)["equation"]
    equation = (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")
    inputs, operands, params = [], [], {}
    for i, name in enumerate(node.input):
        if ctx.is_const(name):
            value = ctx.const(name)
            params[f"operand{i}"] = value if value.dtype.kind in "iu" else value.astype(np.float32)
            operands.append(f"operand{i}")
        else:
            inputs.append(name)
            operands.append("")
    ctx.emit("einsum", inputs, [node.output[0]], {"equation": equation, "operands": operands}, params)


@converter("BatchNormalization")
def batch_norm(node, ctx):
    """BatchNormalization (inference) → batchnorm, folded into the preceding layer at compile time."""
    a = ctx.attrs(node)
    if a.get("training_mode", 0):
        raise ctx.fail("training_mode=1 is not supported; export the model in eval mode")
    names = ("scale", "bias", "mean", "var")
    params = {
        k: ctx.const(node.input[i + 1], f"BatchNormalization {k}").astype(np.float32) for i, k in enumerate(names)
    }
    ctx.emit("batchnorm", [node.input[0]], [node.output[0]], {"eps": float(a.get("epsilon", 1e-5))}, params)


@converter("LayerNormalization")
def layer_norm(node, ctx):
    """LayerNormalization over [axis, rank) → layer_norm (analog island)."""
    a = ctx.attrs(node)
    x_shape = ctx.shape(node.input[0])
    axis = int(a.get("axis", -1)) % len(x_shape)
    norm_shape = x_shape[axis:]
    scale = np.broadcast_to(ctx.const(node.input[1], "LayerNormalization scale"), norm_shape).astype(np.float32)
    bias = ctx.optional_const(node, 2, "LayerNormalization bias")
    params = {"scale": scale.copy()}
    if bias is not None:
        params["bias"] = np.broadcast_to(bias, norm_shape).astype(np.float32).copy()
    if len(node.output) > 1 and any(node.output[1:]):
        raise ctx.fail("the Mean/InvStdDev outputs of LayerNormalization are not supported")
    ctx.emit(
        "layer_norm", [node.input[0]], [node.output[0]], {"axis": axis, "eps": float(a.get("epsilon", 1e-5))}, params
    )


@converter("InstanceNormalization")
def instance_norm(node, ctx):
    """InstanceNormalization → instance_norm (analog island)."""
    a = ctx.attrs(node)
    params = {
        "scale": ctx.const(node.input[1], "InstanceNormalization scale").astype(np.float32),
        "bias": ctx.const(node.input[2], "InstanceNormalization B").astype(np.float32),
    }
    ctx.emit("instance_norm", [node.input[0]], [node.output[0]], {"eps": float(a.get("epsilon", 1e-5))}, params)


@converter("LpNormalization")
def lp_normalization(node, ctx):
    """LpNormalization (p = 1 or 2) along one axis → lp_norm (analog island)."""
    a = ctx.attrs(node)
    p = int(a.get("p", 2))
    if p not in (1, 2):
        raise ctx.fail(f"LpNormalization p={p} is not defined (p is 1 or 2)")
    axis = int(a.get("axis", -1)) % len(ctx.shape(node.input[0]))
    ctx.emit("lp_norm", [node.input[0]], [node.output[0]], {"axis": axis, "p": p})


@converter("MeanVarianceNormalization")
def mean_variance_normalization(node, ctx):
    """MeanVarianceNormalization over ``axes`` (default 0, 2, 3: the batch axis included, which
    the batch check then reports) → mvn (analog island)."""
    rank = len(ctx.shape(node.input[0]))
    axes = sorted({int(x) % rank for x in ctx.attrs(node).get("axes", [0, 2, 3])})
    ctx.emit("mvn", [node.input[0]], [node.output[0]], {"axes": axes})


@converter("LRN")
def lrn(node, ctx):
    """LRN across channels → lrn (analog island)."""
    a = ctx.attrs(node)
    ctx.emit(
        "lrn",
        [node.input[0]],
        [node.output[0]],
        {
            "size": int(a["size"]),
            "alpha": float(a.get("alpha", 1e-4)),
            "beta": float(a.get("beta", 0.75)),
            "bias": float(a.get("bias", 1.0)),
        },
    )


# ---- write rules: core op → ONNX (the artifact writer, formats/onnx/writer.py) ----------------
def _write_extended_conv_transpose(b, n) -> None:
    """A conv_transpose with negative pads (an output larger than the natural one): ONNX pads
    cannot be negative, so ConvTranspose without bias, then Pad with zeros, then the bias."""
    a, p = n.attrs, n.params
    nd = p["weight"].dim() - 2
    pads = ints(a["pads"])
    crop, extend = (
        [max(q, 0) for q in pads],
        [0, 0] + [max(-q, 0) for q in pads[:nd]] + [0, 0] + [max(-q, 0) for q in pads[nd:]],
    )
    full, padded = b.tmp(n), b.tmp(n) if "bias" in p else n.outputs[0]
    b.add(
        "ConvTranspose",
        [n.inputs[0], b.const(n, "weight", p["weight"])],
        [full],
        n.name,
        strides=ints(a["stride"]),
        pads=crop,
        dilations=ints(a["dilation"]),
        group=int(a["groups"]),
        output_padding=ints(a["output_padding"]),
    )
    b.add("Pad", [full, b.const(n, "extend", np.array(extend, np.int64))], [padded], n.name + "/extend")
    if "bias" in p:
        b.add("Add", [padded, b.const(n, "bias", p["bias"].reshape([-1] + [1] * nd))], n.outputs, n.name + "/bias")


@writes("conv", "conv_transpose")
def write_conv(b, n) -> None:
    """Conv / ConvTranspose (negative transposed pads: see :func:`_write_extended_conv_transpose`)."""
    a, p = n.attrs, n.params
    if n.op == "conv_transpose" and min(a["pads"]) < 0:
        return _write_extended_conv_transpose(b, n)
    w = [n.inputs[0], b.const(n, "weight", p["weight"])] + ([b.const(n, "bias", p["bias"])] if "bias" in p else [])
    extra = {"output_padding": ints(a["output_padding"])} if n.op == "conv_transpose" else {}
    b.add(
        "Conv" if n.op == "conv" else "ConvTranspose",
        w,
        n.outputs,
        n.name,
        strides=ints(a["stride"]),
        pads=ints(a["pads"]),
        dilations=ints(a["dilation"]),
        group=int(a["groups"]),
        **extra,
    )


@writes("linear")
def write_linear(b, n) -> None:
    """Gemm on [N, C] inputs; MatMul with the transposed weight (+ Add) on higher ranks."""
    p, ins, outs = n.params, n.inputs, n.outputs
    if len(b.graph.shape(ins[0]) or ()) == 2:
        w = [ins[0], b.const(n, "weight", p["weight"])] + ([b.const(n, "bias", p["bias"])] if "bias" in p else [])
        b.add("Gemm", w, outs, n.name, transB=1)
        return
    mid = b.tmp(n) if "bias" in p else outs[0]
    b.add("MatMul", [ins[0], b.const(n, "weightT", p["weight"].t().contiguous())], [mid], n.name)
    if "bias" in p:
        b.add("Add", [mid, b.const(n, "bias", p["bias"])], outs, n.name + "/bias")


@writes("matmul")
def write_matmul(b, n) -> None:
    """MatMul of two activations, or of an activation and a constant (lhs / rhs)."""
    p = n.params
    args = (
        ([b.const(n, "lhs", p["lhs"])] if "lhs" in p else [])
        + n.inputs
        + ([b.const(n, "rhs", p["rhs"])] if "rhs" in p else [])
    )
    b.add("MatMul", args, n.outputs, n.name)


@writes("einsum")
def write_einsum(b, n) -> None:
    """Einsum, its constant operands as initializers in their places."""
    activations = iter(n.inputs)
    args = [b.const(n, k, n.params[k]) if k else next(activations) for k in n.attrs["operands"]]
    b.add("Einsum", args, n.outputs, n.name, equation=n.attrs["equation"])


@writes("batchnorm")
def write_batchnorm(b, n) -> None:
    """BatchNormalization (inference form)."""
    b.add(
        "BatchNormalization",
        [n.inputs[0]] + [b.const(n, k, n.params[k]) for k in ("scale", "bias", "mean", "var")],
        n.outputs,
        n.name,
        epsilon=float(n.attrs.get("eps", 1e-5)),
    )


@writes("scale")
def write_scale(b, n) -> None:
    """A per-channel affine (a lone BN after folding): Mul then Add."""
    ins, p = n.inputs, n.params
    shape = [-1] + [1] * max(0, len(b.graph.shape(ins[0]) or [0, 0]) - 2)
    mid = b.tmp(n)
    b.add("Mul", [ins[0], b.const(n, "scale", p["scale"].reshape(shape))], [mid], n.name)
    b.add("Add", [mid, b.const(n, "shift", p["shift"].reshape(shape))], n.outputs, n.name + "/shift")


@writes("lrn")
def write_lrn(b, n) -> None:
    """LRN."""
    a = n.attrs
    b.add(
        "LRN",
        n.inputs,
        n.outputs,
        n.name,
        size=int(a["size"]),
        alpha=float(a["alpha"]),
        beta=float(a["beta"]),
        bias=float(a["bias"]),
    )


@writes("layer_norm")
def write_layer_norm(b, n) -> None:
    """LayerNormalization."""
    p = n.params
    args = [n.inputs[0], b.const(n, "scale", p["scale"])] + ([b.const(n, "bias", p["bias"])] if "bias" in p else [])
    b.add("LayerNormalization", args, n.outputs, n.name, axis=int(n.attrs["axis"]), epsilon=float(n.attrs["eps"]))


@writes("lp_norm")
def write_lp_norm(b, n) -> None:
    """LpNormalization."""
    b.add("LpNormalization", n.inputs, n.outputs, n.name, axis=int(n.attrs["axis"]), p=int(n.attrs["p"]))


@writes("mvn")
def write_mvn(b, n) -> None:
    """MeanVarianceNormalization as its ONNX function body, (x - E[x]) / (sqrt(E[x²] - E[x]²)
    + 1e-9): onnxruntime's own kernel leaves out the 1e-9 and gives NaN for a constant slice (a
    silent ReLU channel), where the spec and the runtime give 0."""
    x, axes = n.inputs[0], b.const(n, "axes", np.array(n.attrs["axes"], np.int64))
    names = {k: b.tmp(n) for k in ("mean", "sq", "mean_sq", "mean2", "var", "std", "den", "centred")}
    b.add("ReduceMean", [x, axes], [names["mean"]], names["mean"], keepdims=1)
    b.add("Mul", [x, x], [names["sq"]], names["sq"])
    b.add("ReduceMean", [names["sq"], axes], [names["mean_sq"]], names["mean_sq"], keepdims=1)
    b.add("Mul", [names["mean"], names["mean"]], [names["mean2"]], names["mean2"])
    b.add("Sub", [names["mean_sq"], names["mean2"]], [names["var"]], names["var"])
    b.add("Sqrt", [names["var"]], [names["std"]], names["std"])
    b.add("Add", [names["std"], b.const(n, "epsilon", np.float32(1e-9))], [names["den"]], names["den"])
    b.add("Sub", [x, names["mean"]], [names["centred"]], names["centred"])
    b.add("Div", [names["centred"], names["den"]], n.outputs, n.name)


@writes("instance_norm")
def write_instance_norm(b, n) -> None:
    """InstanceNormalization."""
    b.add(
        "InstanceNormalization",
        [n.inputs[0], b.const(n, "scale", n.params["scale"]), b.const(n, "bias", n.params["bias"])],
        n.outputs,
        n.name,
        epsilon=float(n.attrs["eps"]),
    )
