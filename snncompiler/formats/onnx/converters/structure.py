"""Converters for data movement and constants: reshapes, concat/split/slice, pad, resize,
identity-like ops, constants, and Shape/Gather/Cast and the Reduce family (ir/ops.REDUCTIONS)."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ....ir.ops import ARG_REDUCTIONS, REDUCTIONS, is_float_dtype
from ..registry import converter, ints, writes


def emit_reshape(ctx, x: str, out: str, out_shape) -> None:
    """Reshape to a static shape, batch-polymorphic when axis 0 is carried through unchanged."""
    in_shape = ctx.shape(x)
    out_shape = [int(d) for d in out_shape]
    if in_shape and out_shape and in_shape[0] == out_shape[0] and math.prod(in_shape[1:]) == math.prod(out_shape[1:]):
        ctx.emit("reshape", [x], [out], {"shape": out_shape[1:], "keep_batch": True})
    else:
        ctx.emit("reshape", [x], [out], {"shape": out_shape})


@converter("Reshape")
def reshape(node, ctx):
    """Reshape with a constant shape (0 = copy, -1 = infer) → reshape."""
    target = [int(d) for d in ctx.const(node.input[1], "Reshape shape")]
    in_shape = ctx.shape(node.input[0])
    allow_zero = int(ctx.attrs(node).get("allowzero", 0))
    target = [in_shape[i] if d == 0 and not allow_zero else d for i, d in enumerate(target)]
    if -1 in target:
        known = math.prod(d for d in target if d != -1)
        target[target.index(-1)] = math.prod(in_shape) // max(known, 1)
    emit_reshape(ctx, node.input[0], node.output[0], target)


@converter("Flatten")
def flatten(node, ctx):
    """Flatten → flatten (axis=1 keeps the batch axis)."""
    ctx.emit("flatten", [node.input[0]], [node.output[0]], {"axis": int(ctx.attrs(node).get("axis", 1))})


@converter("Squeeze", "Unsqueeze")
def squeeze(node, ctx):
    """Squeeze/Unsqueeze (axes as attribute or input) → reshape to the inferred static shape."""
    out_shape = _static_out_shape(node, ctx)
    emit_reshape(ctx, node.input[0], node.output[0], out_shape)


def _static_out_shape(node, ctx):
    in_shape = list(ctx.shape(node.input[0]))
    axes = ctx.attrs(node).get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = ctx.const(node.input[1], f"{node.op_type} axes").tolist()
    if node.op_type == "Squeeze":
        if axes is None:
            return [d for d in in_shape if d != 1]
        axes = {a % len(in_shape) for a in axes}
        return [d for i, d in enumerate(in_shape) if i not in axes]
    rank = len(in_shape) + len(axes)
    axes = sorted(a % rank for a in axes)
    out = list(in_shape)
    for a in axes:
        out.insert(a, 1)
    return out


@converter("Transpose")
def transpose(node, ctx):
    """Transpose → transpose (default perm reverses the axes)."""
    rank = len(ctx.shape(node.input[0]))
    perm = list(ctx.attrs(node).get("perm", list(reversed(range(rank)))))
    ctx.emit("transpose", [node.input[0]], [node.output[0]], {"perm": perm})


@converter("Concat")
def concat(node, ctx):
    """Concat → concat (constant inputs become constant nodes)."""
    rank = len(ctx.shape(node.input[0]))
    inputs = [ctx.activation_or_const(i) for i in node.input if i]
    ctx.emit("concat", inputs, [node.output[0]], {"axis": int(ctx.attrs(node)["axis"]) % rank})


@converter("Split")
def split(node, ctx):
    """Split (sizes as attribute, input, or num_outputs) → split."""
    a = ctx.attrs(node)
    shape = ctx.shape(node.input[0])
    axis = int(a.get("axis", 0)) % len(shape)
    sizes = a.get("split")
    if sizes is None and len(node.input) > 1 and node.input[1]:
        sizes = ctx.const(node.input[1], "Split sizes").tolist()
    if sizes is None:
        parts = int(a.get("num_outputs", len(node.output)))
        chunk = -(-shape[axis] // parts)
        sizes = [min(chunk, shape[axis] - i * chunk) for i in range(parts)]
    ctx.emit("split", [node.input[0]], list(node.output), {"axis": axis, "sizes": [int(s) for s in sizes]})


@converter("Slice")
def slice_(node, ctx):
    """Slice (constant starts/ends/axes/steps, inputs or older attributes) → slice."""
    a = ctx.attrs(node)
    rank = len(ctx.shape(node.input[0]))
    if "starts" in a:  # opset < 10
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = ctx.const(node.input[1], "Slice starts").tolist()
        ends = ctx.const(node.input[2], "Slice ends").tolist()
        axes_c = ctx.optional_const(node, 3, "Slice axes")
        steps_c = ctx.optional_const(node, 4, "Slice steps")
        axes = axes_c.tolist() if axes_c is not None else list(range(len(starts)))
        steps = steps_c.tolist() if steps_c is not None else [1] * len(starts)
    big = 2**62  # INT64 extremes mean "to the end"; keep Python slicing in a sane range
    clamp = lambda v: max(min(int(v), big), -big)
    ctx.emit(
        "slice",
        [node.input[0]],
        [node.output[0]],
        {
            "starts": [clamp(s) for s in starts],
            "ends": [clamp(e) for e in ends],
            "axes": [int(x) % rank for x in axes],
            "steps": [int(s) for s in steps],
        },
    )


@converter("Pad")
def pad(node, ctx):
    """Pad (constant/reflect/edge/wrap; pads and value as inputs or older attributes; axes) → pad."""
    a = ctx.attrs(node)
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    rank = len(ctx.shape(node.input[0]))
    if "pads" in a:  # opset < 11
        pads, value = list(a["pads"]), float(a.get("value", 0.0))
    else:
        pads = ctx.const(node.input[1], "Pad pads").tolist()
        value_c = ctx.optional_const(node, 2, "Pad constant_value")
        value = float(value_c) if value_c is not None and value_c.size else 0.0
        axes_c = ctx.optional_const(node, 3, "Pad axes")
        if axes_c is not None:
            axes = [int(x) % rank for x in axes_c.tolist()]
            full = [0] * 2 * rank
            for i, ax in enumerate(axes):
                full[ax], full[rank + ax] = pads[i], pads[len(axes) + i]
            pads = full
    ctx.emit("pad", [node.input[0]], [node.output[0]], {"pads": [int(p) for p in pads], "mode": mode, "value": value})


#: The coordinate transformations the runtime implements (runtime/ops.py, _source_coords).
_RESIZE_COORDINATES = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_half_pixel_for_nn",
)


@converter("Resize", "Upsample")
def resize(node, ctx):
    """Resize/Upsample, nearest, linear or cubic, any coordinate transformation → resize."""
    a = ctx.attrs(node)
    text = lambda k, d: a.get(k, d).decode() if isinstance(a.get(k, d), bytes) else a.get(k, d)
    mode = text("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear", "cubic"):
        raise ctx.fail(f"Resize mode '{mode}' is not supported (nearest, linear and cubic are)")
    if int(a.get("antialias", 0)):
        raise ctx.fail("Resize with antialias=1 is not supported")
    in_shape = list(ctx.shape(node.input[0]))
    out_shape = list(ctx.shape(node.output[0]))
    scales = None
    if node.op_type == "Upsample" or ctx.opset <= 10:
        ctm, nearest = "asymmetric", "floor"
        scales = [float(s) for s in (a["scales"] if "scales" in a else ctx.const(node.input[1], "scales"))]
    else:
        ctm = text("coordinate_transformation_mode", "half_pixel")
        nearest = text("nearest_mode", "round_prefer_floor")
        scales_c = ctx.optional_const(node, 2, "Resize scales")
        axes = a.get("axes")
        if scales_c is not None and scales_c.size:
            scales = [float(s) for s in scales_c]
            if axes is not None:
                full = [1.0] * len(in_shape)
                for ax, s in zip(axes, scales):
                    full[ax % len(in_shape)] = s
                scales = full
        if ctm not in _RESIZE_COORDINATES:
            raise ctx.fail(f"coordinate_transformation_mode '{ctm}' is not supported")
    if scales is None:  # sizes given: the spec derives each scale from the sizes
        scales = [o / i for o, i in zip(out_shape, in_shape)]
        policy = text("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch" and node.op_type == "Resize" and ctx.opset >= 18:
            # one scale for every resized axis, the smallest (not_larger) or largest (not_smaller)
            # of sizes/in over them; the output sizes are round(scale * in), from shape inference
            sizes = [int(v) for v in ctx.const(node.input[3], "Resize sizes")]
            rank = len(in_shape)
            resized = [ax % rank for ax in a.get("axes", range(rank))]
            ratios = [sz / in_shape[ax] for ax, sz in zip(resized, sizes)]
            one = min(ratios) if policy == "not_larger" else max(ratios)
            scales = [one if ax in resized else 1.0 for ax in range(rank)]
    if scales and scales[0] != 1.0:
        raise ctx.fail(f"Resize of the batch axis (scale {scales[0]:g} on axis 0) is not supported")
    attrs = {
        "mode": "linear" if mode == "bilinear" else mode,
        "sizes": out_shape,
        "scales": scales,
        "coordinate_transformation_mode": ctm,
        "nearest_mode": nearest,
    }
    if mode == "cubic":
        attrs["cubic_coeff_a"] = float(a.get("cubic_coeff_a", -0.75))
        attrs["exclude_outside"] = int(a.get("exclude_outside", 0))
    ctx.emit("resize", [node.input[0]], [node.output[0]], attrs)


@converter("Identity", "Dropout")
def identity(node, ctx):
    """Identity and inference Dropout are removed (the output becomes an alias of the input).

    Dropout in training mode (a constant ``training_mode`` true with a ratio above 0, or a
    training mode computed at run time) drops random elements: no compiled network can
    reproduce that, so it is refused rather than run as the identity."""
    if node.op_type == "Dropout":
        _refuse_training_dropout(node, ctx)
    if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
        used = any(node.output[1] in n.input for n in ctx.model.graph.node) or any(
            node.output[1] == o.name for o in ctx.model.graph.output
        )
        if used:
            raise ctx.fail("the mask output of Dropout is not supported")
    ctx.alias(node.output[0], node.input[0], "identity at inference")


def _refuse_training_dropout(node, ctx) -> None:
    if len(node.input) < 3 or not node.input[2]:
        return
    if not ctx.is_const(node.input[2]):
        raise ctx.fail(
            "training_mode is computed at run time; in training mode Dropout is random, so it "
            "cannot be compiled (export the model in eval mode)"
        )
    training = bool(np.asarray(ctx.const(node.input[2])).reshape(-1)[0])
    ratio = ctx.optional_const(node, 1, "Dropout ratio")
    ratio = 0.5 if ratio is None else float(np.asarray(ratio).reshape(-1)[0])
    if training and ratio != 0.0:
        raise ctx.fail(
            f"training_mode=True drops random elements (ratio {ratio:g}), which no compiled network "
            "can reproduce; export the model in eval mode"
        )


@converter("Constant")
def constant(node, ctx):
    """Constant → a compile-time constant (no IR node)."""
    a = node.attribute[0]
    if a.name == "value":
        value = numpy_helper.to_array(a.t)
    elif a.name in ("value_float", "value_int"):
        value = np.array(onnx.helper.get_attribute_value(a), dtype=np.float32 if a.name == "value_float" else np.int64)
    elif a.name in ("value_floats", "value_ints"):
        value = np.array(onnx.helper.get_attribute_value(a), dtype=np.float32 if a.name == "value_floats" else np.int64)
    else:
        raise ctx.fail(f"Constant with attribute '{a.name}' is not supported")
    ctx.set_const(node.output[0], value)
    ctx.removed.append((node.name or node.output[0], "Constant", "constant"))


@converter("Shape")
def shape(node, ctx):
    """Shape of an activation → a constant from the static shape (batch pinned to the traced size)."""
    a = ctx.attrs(node)
    dims = np.array(ctx.shape(node.input[0]), dtype=np.int64)
    start, end = int(a.get("start", 0)), a.get("end")
    ctx.set_const(node.output[0], dims[start : None if end is None else int(end)])
    ctx.removed.append((node.name or node.output[0], "Shape", "static shape"))


@converter("ConstantOfShape")
def constant_of_shape(node, ctx):
    """ConstantOfShape needs a constant shape; it is then folded (an activation shape is an error)."""
    raise ctx.fail("ConstantOfShape needs a constant shape input")


def _check_indices(ctx, idx: np.ndarray, shape, axes, what: str) -> None:
    """Constant indices in range: ``idx[..., j]`` indexes axis ``axes[j]`` of ``shape``. An index
    past an inner axis would silently address a neighbouring row of the flattened data; axis 0
    is left to the runtime (its size here is the batch as pinned for shape inference, and an
    index past it falls outside the data there)."""
    for j, axis in enumerate(axes):
        if axis == 0:
            continue
        values, size = idx[..., j], int(shape[axis])
        bad = (values < -size) | (values >= size)
        if bad.any():
            raise ctx.fail(f"{what} indices: {int(values[bad].flat[0])} is out of range for axis {axis} of size {size}")


@converter("Gather")
def gather(node, ctx):
    """Gather of an activation with constant indices → gather."""
    shape = ctx.shape(node.input[0])
    idx = ctx.const(node.input[1], "Gather indices").astype(np.int64)
    axis = int(ctx.attrs(node).get("axis", 0)) % len(shape)
    _check_indices(ctx, idx[..., None], shape, [axis], "Gather")
    ctx.emit("gather", [node.input[0]], [node.output[0]], {"axis": axis}, {"indices": idx})


@converter("GatherElements")
def gather_elements(node, ctx):
    """GatherElements → gather_elements: constant indices select fixed entries (linear: spikes
    in, spikes out; their own batch axis fixes the batch size); indices computed from the input
    (ArgMax, TopK) make an analog island on the data's running mean."""
    shape = ctx.shape(node.input[0])
    attrs = {"axis": int(ctx.attrs(node).get("axis", 0)) % len(shape)}
    if ctx.is_const(node.input[1]):
        idx = ctx.const(node.input[1], "GatherElements indices").astype(np.int64)
        _check_indices(ctx, idx[..., None], shape, [attrs["axis"]], "GatherElements")
        ctx.emit("gather_elements", [node.input[0]], [node.output[0]], attrs, {"indices": idx})
    elif ctx.is_const(node.input[0]):
        raise ctx.fail("GatherElements of constant data by computed indices is not supported (make it a Gather)")
    else:
        ctx.emit("gather_elements", [node.input[0], node.input[1]], [node.output[0]], attrs)


def _constant_indices(node, ctx, onnx_op: str) -> np.ndarray:
    """The constant indices (input 1) of a GatherND or Scatter* as int64; computed ones are refused."""
    if not ctx.is_const(node.input[1]):
        raise ctx.fail(f"{onnx_op} at indices computed from the input is not supported (only constant indices)")
    return ctx.const(node.input[1], f"{onnx_op} indices").astype(np.int64)


def _scatter(core: str, onnx_op: str):
    def convert(node, ctx):
        a = ctx.attrs(node)
        reduction = a.get("reduction", b"none")
        attrs = {"reduction": reduction.decode() if isinstance(reduction, bytes) else str(reduction)}
        shape = ctx.shape(node.input[0])
        idx = _constant_indices(node, ctx, onnx_op)
        if core == "scatter_elements":
            attrs["axis"] = int(a.get("axis", 0)) % len(shape)
            _check_indices(ctx, idx[..., None], shape, [attrs["axis"]], onnx_op)
            want = tuple(idx.shape)
            # each update lands at its own coordinates on the other axes: they must lie in the data
            if len(want) != len(shape) or any(w > d for j, (w, d) in enumerate(zip(want, shape)) if j):
                raise ctx.fail(f"indices of shape {list(want)} do not fit data of shape {list(shape)}")
        else:
            _check_indices(ctx, idx, shape, range(idx.shape[-1]), onnx_op)
            want = tuple(idx.shape[:-1]) + tuple(shape[idx.shape[-1] :])
        if tuple(ctx.shape(node.input[2])) != want:  # counted right but laid out otherwise, they would land elsewhere
            raise ctx.fail(f"updates of shape {list(ctx.shape(node.input[2]))}, expected {list(want)}")
        data, updates = ctx.activation_or_const(node.input[0]), ctx.activation_or_const(node.input[2])
        ctx.emit(core, [data, updates], [node.output[0]], attrs, {"indices": idx})

    convert.__doc__ = (
        f"{onnx_op} at constant indices (reduction none, add: linear, picks or sums spikes; mul, max, "
        f"min: an analog island) → {core}"
    )
    return convert


@converter("GatherND")
def gather_nd(node, ctx):
    """GatherND at constant indices (batch_dims too) → gather_nd: a selection of entries (linear:
    runs on spikes; the indices address samples by position, so the model is batch-bound)."""
    idx = _constant_indices(node, ctx, "GatherND")
    attrs = {"batch_dims": int(ctx.attrs(node).get("batch_dims", 0))}
    first = attrs["batch_dims"]
    _check_indices(ctx, idx, ctx.shape(node.input[0]), range(first, first + idx.shape[-1]), "GatherND")
    ctx.emit("gather_nd", [node.input[0]], [node.output[0]], attrs, {"indices": idx})


converter("ScatterElements")(_scatter("scatter_elements", "ScatterElements"))
converter("Scatter")(_scatter("scatter_elements", "Scatter"))  # opsets 9-10, ScatterElements' old name
converter("ScatterND")(_scatter("scatter_nd", "ScatterND"))


#: ONNX element types a cast can produce, as torch dtype names (the runtime computes in torch).
CAST_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.BOOL: "bool",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.UINT16: "uint16",
    onnx.TensorProto.UINT32: "uint32",
    onnx.TensorProto.UINT64: "uint64",
    onnx.TensorProto.FLOAT8E4M3FN: "float8_e4m3fn",
    onnx.TensorProto.FLOAT8E4M3FNUZ: "float8_e4m3fnuz",
    onnx.TensorProto.FLOAT8E5M2: "float8_e5m2",
    onnx.TensorProto.FLOAT8E5M2FNUZ: "float8_e5m2fnuz",
}


def _emit_cast(node, ctx, to: int) -> None:
    src = ctx.dtypes.get(ctx.resolve(node.input[0]), onnx.TensorProto.FLOAT)
    if to == src:
        ctx.alias(node.output[0], node.input[0], "no-op cast")
        return
    if to not in CAST_DTYPES:
        name = onnx.TensorProto.DataType.Name(to) if to in onnx.TensorProto.DataType.values() else str(to)
        raise ctx.fail(f"cast to {name} is not supported (torch, which runs the model, has no such number type)")
    attrs = {"dtype": CAST_DTYPES[to]}
    if src in CAST_DTYPES and not is_float_dtype(CAST_DTYPES[src]):  # a mask or an index: see ir/ops._cast_kind
        attrs["source"] = CAST_DTYPES[src]
    if CAST_DTYPES[to].startswith("float8"):
        attrs["saturate"] = int(ctx.attrs(node).get("saturate", 1))
    ctx.emit("cast", [node.input[0]], [node.output[0]], attrs)


@converter("Cast")
def cast(node, ctx):
    """Cast of an activation → cast (a cast to the value's own type is removed); a target type
    torch has no dtype for (string, complex, 4-bit, …) is a one-line error naming it."""
    _emit_cast(node, ctx, int(ctx.attrs(node)["to"]))


@converter("CastLike")
def cast_like(node, ctx):
    """CastLike(x, like) → cast to the element type of ``like`` (constant or activation)."""
    like = node.input[1]
    to = (
        onnx.helper.np_dtype_to_tensor_dtype(ctx.const(like).dtype)
        if ctx.is_const(like)
        else ctx.dtypes.get(ctx.resolve(like), onnx.TensorProto.UNDEFINED)
    )
    if to == onnx.TensorProto.UNDEFINED:
        raise ctx.fail(f"the element type of '{like}' is unknown after shape inference")
    _emit_cast(node, ctx, int(to))


def _reduction(core: str, onnx_op: str):
    def convert(node, ctx):
        a = ctx.attrs(node)
        rank = len(ctx.shape(node.input[0]))
        axes = a.get("axes")
        if axes is None:
            axes_c = ctx.optional_const(node, 1, f"{onnx_op} axes")
            axes = axes_c.tolist() if axes_c is not None else []
        if not axes and int(a.get("noop_with_empty_axes", 0)):
            ctx.alias(node.output[0], node.input[0], f"{onnx_op} over no axes")
            return
        ctx.emit(
            core,
            [node.input[0]],
            [node.output[0]],
            {"axes": sorted({int(x) % rank for x in axes}), "keepdims": int(a.get("keepdims", 1))},
        )

    convert.__doc__ = f"{onnx_op} (axes as attribute or input, keepdims, noop_with_empty_axes) → {core}"
    return convert


for _core, _onnx in REDUCTIONS.items():
    converter(_onnx)(_reduction(_core, _onnx))


def _arg_reduction(core: str, onnx_op: str):
    def convert(node, ctx):
        a = ctx.attrs(node)
        rank = len(ctx.shape(node.input[0]))
        attrs = {
            "axis": int(a.get("axis", 0)) % rank,
            "keepdims": int(a.get("keepdims", 1)),
            "select_last_index": int(a.get("select_last_index", 0)),
        }
        ctx.emit(core, [node.input[0]], [node.output[0]], attrs)

    convert.__doc__ = f"{onnx_op} (axis, keepdims, select_last_index) → {core}, an int64 index"
    return convert


for _core, _onnx in ARG_REDUCTIONS.items():
    converter(_onnx)(_arg_reduction(_core, _onnx))


@converter("TopK")
def topk(node, ctx):
    """TopK with a constant K (an input from opset 10, the attribute ``k`` before) → topk: the
    values and their int64 indices, sorted (``largest``, ``sorted``)."""
    a = ctx.attrs(node)
    shape = ctx.shape(node.input[0])
    axis = int(a.get("axis", -1)) % len(shape)
    k = ctx.const(node.input[1], "TopK K").reshape(-1) if len(node.input) > 1 else np.array([a.get("k", -1)])
    if k.size != 1 or not 0 <= int(k[0]) <= shape[axis]:
        raise ctx.fail(f"K must be one number in 0..{shape[axis]} (the size of axis {axis}), got {k.tolist()}")
    attrs = {"axis": axis, "k": int(k[0]), "largest": int(a.get("largest", 1)), "sorted": int(a.get("sorted", 1))}
    ctx.emit("topk", [node.input[0]], list(node.output), attrs)


@converter("Expand")
def expand(node, ctx):
    """Expand of an activation to a constant shape → expand (broadcasting, batch axis included)."""
    shape = ctx.const(node.input[1], "Expand shape")
    ctx.emit("expand", [node.input[0]], [node.output[0]], {"shape": [int(d) for d in shape.reshape(-1)]})


@converter("Tile")
def tile(node, ctx):
    """Tile by constant repeats → tile (repeating spikes repeats rates: linear)."""
    repeats = [int(r) for r in ctx.const(node.input[1], "Tile repeats").reshape(-1)]
    if repeats and repeats[0] != 1:
        raise ctx.fail(f"Tile of the batch axis (repeats {repeats[0]} on axis 0) is not supported")
    ctx.emit("tile", [node.input[0]], [node.output[0]], {"repeats": repeats})


@converter("Trilu")
def trilu(node, ctx):
    """Trilu (upper or lower, diagonal k as an optional constant input) → trilu (keeping a fixed
    set of elements: linear). Over a 2-D input its rows are the batch axis: refused."""
    if len(ctx.shape(node.input[0])) < 3:
        raise ctx.fail("Trilu of a 2-D input works across the batch axis (its rows); not supported")
    k = ctx.optional_const(node, 1, "Trilu k")
    attrs = {"upper": int(ctx.attrs(node).get("upper", 1)), "k": int(k.reshape(-1)[0]) if k is not None else 0}
    ctx.emit("trilu", [node.input[0]], [node.output[0]], attrs)


@converter("CumSum")
def cumsum(node, ctx):
    """CumSum along a constant axis (exclusive, reverse) → cumsum (a running sum of spikes is
    the running sum of rates: linear)."""
    a = ctx.attrs(node)
    rank = len(ctx.shape(node.input[0]))
    axis = int(ctx.const(node.input[1], "CumSum axis").reshape(-1)[0]) % rank
    if axis == 0:
        raise ctx.fail("CumSum along the batch axis (axis 0) is not supported")
    attrs = {"axis": axis, "exclusive": int(a.get("exclusive", 0)), "reverse": int(a.get("reverse", 0))}
    ctx.emit("cumsum", [node.input[0]], [node.output[0]], attrs)


@converter("DepthToSpace", "SpaceToDepth")
def depth_to_space(node, ctx):
    """DepthToSpace (DCR or CRD) / SpaceToDepth → reshape, transpose, reshape (the ONNX
    definition; pure data movement, so linear)."""
    a = ctx.attrs(node)
    mode = a.get("mode", b"DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    b = int(a["blocksize"])
    shape = ctx.shape(node.input[0])
    if len(shape) != 4:
        raise ctx.fail(f"{node.op_type} needs a 4-D input, got shape {list(shape)}")
    n, c, h, w = shape
    if node.op_type == "SpaceToDepth":
        split, perm, out = [n, c, h // b, b, w // b, b], [0, 3, 5, 1, 2, 4], [n, c * b * b, h // b, w // b]
    elif mode == "CRD":
        split, perm, out = [n, c // (b * b), b, b, h, w], [0, 1, 4, 2, 5, 3], [n, c // (b * b), h * b, w * b]
    elif mode == "DCR":
        split, perm, out = [n, b, b, c // (b * b), h, w], [0, 3, 4, 1, 5, 2], [n, c // (b * b), h * b, w * b]
    else:
        raise ctx.fail(f"DepthToSpace mode '{mode}' is not DCR or CRD")
    blocks, moved = ctx.fresh(node.output[0]), ctx.fresh(node.output[0])
    ctx.emit("reshape", [node.input[0]], [blocks], {"shape": split[1:], "keep_batch": True})
    ctx.emit("transpose", [blocks], [moved], {"perm": perm})
    ctx.emit("reshape", [moved], [node.output[0]], {"shape": out[1:], "keep_batch": True})


@converter("Range")
def range_(node, ctx):
    """Range is supported when its inputs are constants (it is then folded at load time)."""
    raise ctx.fail("Range needs constant start, limit and delta (it is evaluated at load time)")


# ---- write rules: core op → ONNX (the artifact writer, formats/onnx/writer.py) ----------------
def _int64(values) -> np.ndarray:
    return np.array(values, np.int64)


@writes("expand")
def write_expand(b, n) -> None:
    """Expand to a constant shape."""
    b.add("Expand", [n.inputs[0], b.const(n, "shape", _int64(n.attrs["shape"]))], n.outputs, n.name)


@writes("tile")
def write_tile(b, n) -> None:
    """Tile with its repeats as an initializer."""
    b.add("Tile", [n.inputs[0], b.const(n, "repeats", _int64(n.attrs["repeats"]))], n.outputs, n.name)


@writes("trilu")
def write_trilu(b, n) -> None:
    """Trilu with k as an initializer."""
    k = b.const(n, "k", np.array(n.attrs["k"], np.int64))
    b.add("Trilu", [n.inputs[0], k], n.outputs, n.name, upper=int(n.attrs["upper"]))


@writes("cumsum")
def write_cumsum(b, n) -> None:
    """CumSum with its axis as an initializer."""
    a = n.attrs
    axis = b.const(n, "axis", np.array(a["axis"], np.int64))
    b.add("CumSum", [n.inputs[0], axis], n.outputs, n.name, exclusive=int(a["exclusive"]), reverse=int(a["reverse"]))


@writes("concat")
def write_concat(b, n) -> None:
    """Concat."""
    b.add("Concat", n.inputs, n.outputs, n.name, axis=int(n.attrs["axis"]))


@writes("split")
def write_split(b, n) -> None:
    """Split with its sizes as an initializer."""
    b.add(
        "Split",
        [n.inputs[0], b.const(n, "sizes", _int64(n.attrs["sizes"]))],
        n.outputs,
        n.name,
        axis=int(n.attrs["axis"]),
    )


@writes("slice")
def write_slice(b, n) -> None:
    """Slice with starts / ends / axes / steps as initializers."""
    args = [b.const(n, k, _int64(n.attrs[k])) for k in ("starts", "ends", "axes", "steps")]
    b.add("Slice", [n.inputs[0]] + args, n.outputs, n.name)


@writes("gather")
def write_gather(b, n) -> None:
    """Gather with constant indices."""
    b.add(
        "Gather",
        [n.inputs[0], b.const(n, "indices", n.params["indices"])],
        n.outputs,
        n.name,
        axis=int(n.attrs["axis"]),
    )


@writes("gather_elements")
def write_gather_elements(b, n) -> None:
    """GatherElements, constant indices as an initializer."""
    indices = [b.const(n, "indices", n.params["indices"])] if "indices" in n.params else []
    b.add("GatherElements", list(n.inputs) + indices, n.outputs, n.name, axis=int(n.attrs["axis"]))


@writes("gather_nd")
def write_gather_nd(b, n) -> None:
    """GatherND with constant indices."""
    indices = b.const(n, "indices", n.params["indices"])
    b.add("GatherND", [n.inputs[0], indices], n.outputs, n.name, batch_dims=int(n.attrs.get("batch_dims", 0)))


@writes("scatter_elements", "scatter_nd")
def write_scatter(b, n) -> None:
    """ScatterElements / ScatterND with constant indices (opset 18+: every reduction)."""
    extra = {"axis": int(n.attrs["axis"])} if n.op == "scatter_elements" else {}
    b.add(
        "ScatterElements" if n.op == "scatter_elements" else "ScatterND",
        [n.inputs[0], b.const(n, "indices", n.params["indices"]), n.inputs[1]],
        n.outputs,
        n.name,
        reduction=n.attrs.get("reduction", "none"),
        **extra,
    )


@writes("reshape")
def write_reshape(b, n) -> None:
    """Reshape; a kept batch axis is written as ONNX's 0 (copy the input's dim)."""
    a = n.attrs
    shape = ([0] + list(a["shape"])) if a.get("keep_batch") else list(a["shape"])
    b.add("Reshape", [n.inputs[0], b.const(n, "shape", _int64(shape))], n.outputs, n.name)


@writes("flatten")
def write_flatten(b, n) -> None:
    """Flatten."""
    b.add("Flatten", n.inputs, n.outputs, n.name, axis=int(n.attrs.get("axis", 1)))


@writes("transpose")
def write_transpose(b, n) -> None:
    """Transpose."""
    b.add("Transpose", n.inputs, n.outputs, n.name, perm=ints(n.attrs["perm"]))


@writes("pad")
def write_pad(b, n) -> None:
    """Pad with constant pads and fill value."""
    a = n.attrs
    b.add(
        "Pad",
        [n.inputs[0], b.const(n, "pads", _int64(a["pads"])), b.const(n, "value", np.float32(a.get("value", 0.0)))],
        n.outputs,
        n.name,
        mode=a.get("mode", "constant"),
    )


@writes("resize")
def write_resize(b, n) -> None:
    """Resize by constant scales, or by the sizes of axes 1… where the float32 scales would not
    give them back (5 → 9 is a scale of 1.8, and floor(5 · 1.8f) is 8 to shape inference); the
    batch axis stays free either way."""
    a = n.attrs
    scales = np.array(a["scales"], np.float32)
    in_shape = b.graph.shape(n.inputs[0])
    sizes = [int(d) for d in a["sizes"]]
    if in_shape is not None and any(
        int(np.floor(float(d) * float(s))) != o for d, s, o in zip(in_shape[1:], scales[1:], sizes[1:])
    ):
        inputs = [n.inputs[0], "", "", b.const(n, "sizes", _int64(sizes[1:]))]
        extra = {"axes": list(range(1, len(sizes)))}
    else:
        inputs, extra = [n.inputs[0], "", b.const(n, "scales", scales)], {}
    b.add(
        "Resize",
        inputs,
        n.outputs,
        n.name,
        mode=a["mode"],
        coordinate_transformation_mode=a["coordinate_transformation_mode"],
        nearest_mode=a["nearest_mode"],
        **{k: a[k] for k in ("cubic_coeff_a", "exclude_outside") if k in a},
        **extra,
    )


@writes(*REDUCTIONS)
def write_reduction(b, n) -> None:
    """A reduction (:data:`~snncompiler.ir.ops.REDUCTIONS`) with axes as an input (opset 18+)."""
    b.add(
        REDUCTIONS[n.op],
        [n.inputs[0], b.const(n, "axes", _int64(n.attrs["axes"]))],
        n.outputs,
        n.name,
        keepdims=int(n.attrs.get("keepdims", 1)),
    )


@writes("topk")
def write_topk(b, n) -> None:
    """TopK with K as an initializer (opset 11+: largest, sorted)."""
    a = n.attrs
    k = b.const(n, "k", _int64([a["k"]]))
    b.add("TopK", [n.inputs[0], k], n.outputs, n.name, axis=a["axis"], largest=a["largest"], sorted=a["sorted"])


@writes(*ARG_REDUCTIONS)
def write_arg_reduction(b, n) -> None:
    """ArgMax / ArgMin with their three attributes."""
    b.add(
        ARG_REDUCTIONS[n.op],
        n.inputs,
        n.outputs,
        n.name,
        axis=int(n.attrs["axis"]),
        keepdims=int(n.attrs.get("keepdims", 1)),
        select_last_index=int(n.attrs.get("select_last_index", 0)),
    )


@writes("cast")
def write_cast(b, n) -> None:
    """Cast to the recorded numpy dtype."""
    b.add("Cast", n.inputs, n.outputs, n.name, to=int(helper.np_dtype_to_tensor_dtype(np.dtype(n.attrs["dtype"]))))


@writes("identity")
def write_identity(b, n) -> None:
    """Identity."""
    b.add("Identity", n.inputs, n.outputs, n.name)


@writes("constant")
def write_constant(b, n) -> None:
    """Constant holding the value."""
    b.add("Constant", [], n.outputs, n.name, value=numpy_helper.from_array(n.params["value"].cpu().numpy()))
