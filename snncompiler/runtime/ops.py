"""The torch implementation of every core op (names, conversion kinds and costs: :mod:`snncompiler.ir.ops`).

One function per core op of :mod:`snncompiler.ir.ops`, registered with :func:`implements`. Each takes the node and its input
tensors and returns a tuple of outputs. Implementations treat axis 0 as the batch axis and
never depend on its size, so the same code runs a batch of B samples in ANN mode or a
flattened [T*B] batch in SNN mode.

Conversion kinds (how ``snnc compile`` will treat a node): ``spiking`` (becomes or feeds a
neuron), ``linear`` (commutes with rate coding: runs unchanged on spikes), ``folded``
(absorbed by a neighbour at compile time), ``analog`` (an analog island: computed on the
rate-decoded input), ``unsupported``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import SnncError
from ..ir import Node
from ..ir.ops import ARG_REDUCTIONS, BINARY, OPS, PARAMETRIC, PREDICATES, REDUCTIONS, UNARY

#: core op name (an :data:`snncompiler.ir.ops.OPS` key) → its torch implementation.
IMPLEMENTATIONS: dict[str, Callable[..., tuple]] = {}


def implements(name: str):
    """Register the decorated function as the torch implementation of core op ``name``."""
    if name not in OPS:
        raise KeyError(f"'{name}' is not a core op of snncompiler.ir.ops")

    def register(fn):
        IMPLEMENTATIONS[name] = fn
        return fn

    return register


_DEVICE_CONSTANTS: dict[tuple, torch.Tensor] = {}
_MAX_DEVICE_CONSTANTS = 256


def device_constant(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small tensor computed on the host (gather indices, interpolation weights) on ``device``,
    copied there once per value: a copy on every call stalls a GPU's stream at every chunk, and
    a CUDA graph (runtime/cuda_graphs.py) cannot capture one. ``t`` itself on the CPU."""
    if device.type == "cpu":
        return t
    key = (str(device), t.dtype, tuple(t.shape), t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    found = _DEVICE_CONSTANTS.get(key)
    if found is None:
        if len(_DEVICE_CONSTANTS) >= _MAX_DEVICE_CONSTANTS:
            _DEVICE_CONSTANTS.clear()
        found = _DEVICE_CONSTANTS[key] = t.to(device)
    return found


# ---- linear layers ---------------------------------------------------------------------
@implements("conv")
def conv(node: Node, x):
    """N-d convolution; ``pads`` in ONNX order (all begins, then all ends)."""
    w, b = node.params["weight"], node.params.get("bias")
    nd = w.dim() - 2
    pads = list(node.attrs.get("pads", [0] * 2 * nd))
    begin, end = pads[:nd], pads[nd:]
    if begin != end:
        x = F.pad(x, _torch_pad(begin, end))
        padding = 0
    else:
        padding = tuple(begin)
    fn = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    return (
        fn(
            x,
            w,
            b,
            tuple(node.attrs.get("stride", [1] * nd)),
            padding,
            tuple(node.attrs.get("dilation", [1] * nd)),
            node.attrs.get("groups", 1),
        ),
    )


def _torch_pad(begin, end) -> list[int]:
    """ONNX per-axis (begin, end) lists for the trailing axes -> F.pad's reversed pairs."""
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        out += [int(b), int(e)]
    return out


@implements("conv_transpose")
def conv_transpose(node: Node, x):
    """Transposed convolution; ``pads`` crop the full result (any asymmetry), a negative pad
    extends it with rows that receive only the bias (an ``output_shape`` beyond the natural size)."""
    w, b = node.params["weight"], node.params.get("bias")
    nd = w.dim() - 2
    pads = [int(p) for p in node.attrs.get("pads", [0] * 2 * nd)]
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
    y = fn(
        x,
        w,
        None,
        tuple(node.attrs.get("stride", [1] * nd)),
        0,
        tuple(node.attrs.get("output_padding", [0] * nd)),
        node.attrs.get("groups", 1),
        tuple(node.attrs.get("dilation", [1] * nd)),
    )
    if any(pads):
        y = F.pad(y, _torch_pad([-p for p in pads[:nd]], [-p for p in pads[nd:]]))
    if b is not None:
        y = y + b.reshape([1, -1] + [1] * nd)
    return (y,)


@implements("linear")
def linear(node: Node, x):
    """y = x @ W^T + b over the last axis (Gemm, MatMul with a constant right operand)."""
    return (F.linear(x, node.params["weight"], node.params.get("bias")),)


@implements("matmul")
def matmul(node: Node, *xs):
    """numpy-style matmul of two activations, or of an activation and a constant (lhs/rhs)."""
    a = node.params["lhs"] if "lhs" in node.params else xs[0]
    b = node.params["rhs"] if "rhs" in node.params else xs[-1]
    return (torch.matmul(a, b),)


@implements("einsum")
def einsum(node: Node, *xs):
    """ONNX Einsum (numpy's semantics, implicit output included); constant operands from params."""
    activations = iter(xs)
    operands = [node.params[k] if k else next(activations) for k in node.attrs["operands"]]
    return (torch.einsum(node.attrs["equation"], *operands),)


@implements("batchnorm")
def batchnorm(node: Node, x):
    """Inference BatchNormalization over axis 1."""
    p = node.params
    return (F.batch_norm(x, p["mean"], p["var"], p["scale"], p["bias"], False, 0.0, node.attrs.get("eps", 1e-5)),)


@implements("scale")
def scale(node: Node, x):
    """Per-channel affine y = x * scale + shift over axis 1 (a BatchNorm with nothing to fold into)."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    return (x * node.params["scale"].reshape(shape) + node.params["shift"].reshape(shape),)


# ---- activations -----------------------------------------------------------------------
@implements("relu")
def relu(node: Node, x):
    """max(x, 0)."""
    return (torch.relu(x),)


@implements("clip")
def clip(node: Node, x):
    """clamp(x, min, max); min/max may be None (unbounded)."""
    lo, hi = node.attrs.get("min"), node.attrs.get("max")
    if lo is None and hi is None:  # Clip without bounds is the identity (torch.clamp refuses it)
        return (x,)
    return (torch.clamp(x, lo, hi),)


@implements("leaky_relu")
def leaky_relu(node: Node, x):
    """LeakyRelu with slope ``alpha``."""
    return (F.leaky_relu(x, node.attrs.get("alpha", 0.01)),)


@implements("elu")
def elu(node: Node, x):
    """alpha·(eˣ − 1) below 0, x above."""
    return (F.elu(x, node.attrs.get("alpha", 1.0)),)


@implements("selu")
def selu(node: Node, x):
    """gamma·(alpha·(eˣ − 1)) below 0, gamma·x above (ONNX's alpha and gamma, not only torch's)."""
    a, d = node.attrs, PARAMETRIC["selu"][1]
    return (a.get("gamma", d["gamma"]) * torch.where(x > 0, x, a.get("alpha", d["alpha"]) * torch.expm1(x)),)


@implements("celu")
def celu(node: Node, x):
    """max(0, x) + min(0, alpha·(e^(x/alpha) − 1))."""
    return (F.celu(x, node.attrs.get("alpha", 1.0)),)


@implements("thresholded_relu")
def thresholded_relu(node: Node, x):
    """x where x > alpha, else 0."""
    return (torch.where(x > node.attrs.get("alpha", 1.0), x, torch.zeros_like(x)),)


@implements("prelu")
def prelu(node: Node, x):
    """PRelu with a slope tensor broadcast to x (ONNX unidirectional broadcasting)."""
    slope = node.params["slope"]
    return (torch.where(x >= 0, x, x * slope),)


@implements("sigmoid")
def sigmoid(node: Node, x):
    """Logistic sigmoid."""
    return (torch.sigmoid(x),)


@implements("tanh")
def tanh(node: Node, x):
    """Hyperbolic tangent."""
    return (torch.tanh(x),)


@implements("hardsigmoid")
def hardsigmoid(node: Node, x):
    """max(0, min(1, alpha*x + beta))."""
    return (torch.clamp(node.attrs.get("alpha", 0.2) * x + node.attrs.get("beta", 0.5), 0.0, 1.0),)


@implements("hardswish")
def hardswish(node: Node, x):
    """x * hardsigmoid(x; 1/6, 1/2)."""
    return (F.hardswish(x),)


@implements("gelu")
def gelu(node: Node, x):
    """GELU, exact (erf) or tanh-approximated."""
    return (F.gelu(x, approximate=node.attrs.get("approximate", "none")),)


#: The torch function of each pointwise op of :data:`~snncompiler.ir.ops.UNARY` (same keys).
_UNARY = {
    "erf": torch.erf,
    "sqrt": torch.sqrt,
    "exp": torch.exp,
    "log": torch.log,
    "abs": torch.abs,
    "reciprocal": torch.reciprocal,
    "neg": torch.neg,
    "floor": torch.floor,
    "ceil": torch.ceil,
    "round": torch.round,  # half to even, as ONNX Round
    "sign": torch.sign,
    "softplus": lambda x: torch.log1p(torch.exp(-x.abs())) + x.clamp(min=0),  # log(1+eˣ) without overflow
    "softsign": F.softsign,
    "sin": torch.sin,
    "cos": torch.cos,
    "mish": F.mish,
}


def _check_same_ops(functions: dict, ir_table, what: str) -> None:
    """At import: a table of torch functions covers exactly the core ops of the IR's table."""
    if functions.keys() != set(ir_table):
        raise AssertionError(f"runtime/ops.py and ir/ops.py list different {what}")


def _implement_table(functions: dict, ir_table, what: str) -> None:
    """Register each attribute-free torch function of ``functions`` as the op of its core name;
    the names must be those of the IR's table ``ir_table``."""
    _check_same_ops(functions, ir_table, what)
    for name, fn in functions.items():

        def op(node: Node, *xs, fn=fn):
            return (fn(*xs),)

        op.__doc__ = f"ONNX {ir_table[name]}, elementwise."
        implements(name)(op)


_implement_table(_UNARY, UNARY, "pointwise ops")


@implements("softmax")
def softmax(node: Node, x):
    """Softmax over one axis."""
    return (torch.softmax(x, node.attrs["axis"]),)


@implements("hardmax")
def hardmax(node: Node, x):
    """ONNX Hardmax: 1 at the first maximum along one axis, 0 elsewhere."""
    axis = node.attrs["axis"]
    return (torch.zeros_like(x).scatter_(axis, x.argmax(axis, keepdim=True), 1.0),)


@implements("topk")
def topk(node: Node, x):
    """ONNX TopK: the ``k`` largest (``largest`` 0: smallest) entries along ``axis`` and their
    int64 indices, sorted, equal values in index order (a stable sort: onnxruntime's order; the
    spec leaves the order free under ``sorted`` 0, and sorted is one of those orders)."""
    a = node.attrs
    values, indices = torch.sort(x, dim=a["axis"], descending=bool(a.get("largest", 1)), stable=True)
    return values.narrow(a["axis"], 0, a["k"]), indices.narrow(a["axis"], 0, a["k"])


@implements("is_inf")
def is_inf(node: Node, x):
    """ONNX IsInf: true at +inf (``detect_positive``) and at -inf (``detect_negative``)."""
    positive = x == float("inf") if node.attrs.get("detect_positive", 1) else torch.zeros_like(x, dtype=torch.bool)
    negative = x == float("-inf") if node.attrs.get("detect_negative", 1) else torch.zeros_like(x, dtype=torch.bool)
    return (positive | negative,)


@implements("log_softmax")
def log_softmax(node: Node, x):
    """Log-softmax over one axis."""
    return (torch.log_softmax(x, node.attrs["axis"]),)


@implements("lrn")
def lrn(node: Node, x):
    """ONNX LRN: x / (bias + alpha/size * sum of squares over a channel window)^beta.

    The window spans floor((size-1)/2) channels before and ceil((size-1)/2) after, which
    differs from torch's local_response_norm for even sizes, hence this implementation.
    """
    size = node.attrs["size"]
    sq = (x * x).unsqueeze(1)  # [B, 1, C, ...] so the channel axis can be padded and pooled
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = F.pad(sq.flatten(3) if x.dim() > 3 else sq, [0, 0, before, after])
    window = F.avg_pool2d(sq, (size, 1), stride=1) * size
    window = window.reshape((x.shape[0], 1) + tuple(x.shape[1:])).squeeze(1)
    a, b, k = node.attrs.get("alpha", 1e-4), node.attrs.get("beta", 0.75), node.attrs.get("bias", 1.0)
    return (x / (k + a / size * window) ** b,)


@implements("layer_norm")
def layer_norm(node: Node, x):
    """LayerNormalization over axes [axis, rank)."""
    axis = node.attrs.get("axis", -1) % x.dim()
    return (
        F.layer_norm(
            x, tuple(x.shape[axis:]), node.params.get("scale"), node.params.get("bias"), node.attrs.get("eps", 1e-5)
        ),
    )


@implements("instance_norm")
def instance_norm(node: Node, x):
    """InstanceNormalization over the spatial axes of each sample and channel."""
    return (F.instance_norm(x, weight=node.params["scale"], bias=node.params["bias"], eps=node.attrs.get("eps", 1e-5)),)


@implements("lp_norm")
def lp_norm(node: Node, x):
    """LpNormalization: x over its L1 or L2 norm along ``axis``; a zero vector stays zero (as in
    onnxruntime, not 0/0)."""
    axis, p = node.attrs["axis"], node.attrs["p"]
    norm = x.abs().sum(axis, keepdim=True) if p == 1 else (x * x).sum(axis, keepdim=True).sqrt()
    return (x / torch.where(norm == 0, torch.ones_like(norm), norm),)


@implements("mvn")
def mvn(node: Node, x):
    """MeanVarianceNormalization over ``axes`` as the ONNX function defines it:
    (x - E[x]) / (sqrt(E[x²] - E[x]²) + 1e-9)."""
    axes = tuple(node.attrs["axes"])
    mean = x.mean(axes, keepdim=True)
    variance = (x * x).mean(axes, keepdim=True) - mean * mean
    return ((x - mean) / (variance.sqrt() + 1e-9),)


# ---- pooling ---------------------------------------------------------------------------
def _pool_setup(node: Node, x):
    nd = x.dim() - 2
    if node.attrs.get("global"):
        return nd, list(x.shape[2:]), [1] * nd, [0] * 2 * nd
    kernel = list(node.attrs["kernel"])
    return nd, kernel, list(node.attrs.get("stride", [1] * nd)), list(node.attrs.get("pads", [0] * 2 * nd))


def _pool_out_size(size, k, s, pb, pe, d, ceil_mode):
    span = size + pb + pe - ((k - 1) * d + 1)
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + pb:
        out -= 1  # a last window that would start inside the end padding is dropped (as ORT and torch do)
    return out


def _windows(x, nd, kernel, stride, pads, dilation, ceil_mode, fill):
    """Pad x so that a plain (no-padding, floor-mode) pooling yields ONNX's output size."""
    extra = []
    for i in range(nd):
        size = x.shape[2 + i]
        out = _pool_out_size(size, kernel[i], stride[i], pads[i], pads[nd + i], dilation[i], ceil_mode)
        need = (out - 1) * stride[i] + (kernel[i] - 1) * dilation[i] + 1
        extra.append(max(0, need - (size + pads[i] + pads[nd + i])))
    ends = [pads[nd + i] + extra[i] for i in range(nd)]
    if not any(pads[:nd]) and not any(ends):
        return x  # nothing to pad: skip the copy
    return F.pad(x, _torch_pad(pads[:nd], ends), value=fill)


_SEPARABLE_MIN_ELEMENTS = 1 << 16  # below this one pooling call beats several elementwise ones


def _separable_max(x, kernel):
    """Non-overlapping max pooling (stride = kernel, no padding, floor mode) as elementwise
    maxima of strided views, one spatial axis at a time: on CPU 3.5-5x faster than torch's
    max_pool at the 2x2 pools of the digits and VGG workloads (benchmarks/maxpool.py).
    Exact: a max is the same in any order, and NaN propagates as in max_pool."""
    out = x
    for axis, k in enumerate(kernel, start=2):
        n = out.shape[axis] // k
        index = [slice(None)] * out.dim()
        acc = None
        for offset in range(k):
            index[axis] = slice(offset, offset + (n - 1) * k + 1, k)
            view = out[tuple(index)]
            acc = view if acc is None else torch.maximum(acc, view)
        out = acc
    return out.contiguous()


@implements("maxpool")
def maxpool(node: Node, x):
    """Max pooling with ONNX pads (any asymmetry), dilations and ceil_mode."""
    nd, kernel, stride, pads = _pool_setup(node, x)
    if node.attrs.get("global"):
        return (torch.amax(x, dim=tuple(range(2, x.dim())), keepdim=True),)
    dilation = list(node.attrs.get("dilation", [1] * nd))
    ceil_mode = node.attrs.get("ceil_mode", 0)
    # under autograd the separable form is taken whatever the size: its gradient at ties (split
    # evenly) differs from max_pool's (all to one member), and a training step must not depend on
    # how many samples a batch (or a rank's share of it, under DistributedDataParallel) holds
    plain = (
        x.device.type == "cpu"
        and kernel == stride
        and not any(pads)
        and not ceil_mode
        and all(d == 1 for d in dilation)
    )
    training = x.requires_grad and torch.is_grad_enabled()
    # the kernel's vector loop takes 4 outputs of a row at a time: maps 8 wide and more; under
    # torch.compile (a module from to_torch) an opaque C++ call would break the graph
    kernel_ok = not training and not torch.compiler.is_compiling()
    if plain and kernel == [2, 2] and x.shape[-1] >= 8 and x.numel() >= _SEPARABLE_MIN_ELEMENTS and kernel_ok:
        from ..kernels.event import max_pool_2x2

        pooled = max_pool_2x2(x.contiguous())  # the C++ kernel: half the time of the strided maxima
        if pooled is not None:
            return (pooled,)
    if plain and max(kernel) <= 4 and (x.numel() >= _SEPARABLE_MIN_ELEMENTS or training):
        return (_separable_max(x, kernel),)
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
    if not ceil_mode and pads[:nd] == pads[nd:] and all(p <= k // 2 for p, k in zip(pads, kernel)):
        xp, pad = x, pads[:nd]  # torch's own (implicit -inf) padding: no padded copy of x
    else:
        xp, pad = _windows(x, nd, kernel, stride, pads, dilation, ceil_mode, float("-inf")), 0
    if nd == 2 and x.device.type == "cpu":
        # NHWC max pooling on CPU vectorises over channels: faster than NCHW for overlapping
        # windows, conversions included (1.2x at ResNet-18's 3x3/2 pool, benchmarks/maxpool.py)
        return (fn(xp.contiguous(memory_format=torch.channels_last), kernel, stride, pad, dilation).contiguous(),)
    return (fn(xp, kernel, stride, pad, dilation),)


@implements("avgpool")
def avgpool(node: Node, x):
    """Average pooling: ONNX pads, ceil_mode and count_include_pad, or global (``global=True``).

    Computed as a window sum divided by the number of counted positions, which handles
    asymmetric pads and the ceil-mode overhang the way onnxruntime does: padding counts
    only with count_include_pad, the overhang beyond the padding never counts.
    """
    nd, kernel, stride, pads = _pool_setup(node, x)
    if node.attrs.get("global"):
        return (x.mean(dim=tuple(range(2, x.dim())), keepdim=True),)
    ceil_mode = node.attrs.get("ceil_mode", 0)
    xp = _windows(x, nd, kernel, stride, pads, [1] * nd, ceil_mode, 0.0)
    real = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
    if node.attrs.get("count_include_pad", 0):
        region = F.pad(real, _torch_pad(pads[:nd], pads[nd:]), value=1.0)
        overhang = [t - r for t, r in zip(xp.shape[2:], region.shape[2:])]
        mask = F.pad(region, _torch_pad([0] * nd, overhang))
    else:
        mask = _windows(real, nd, kernel, stride, pads, [1] * nd, ceil_mode, 0.0)
    return (_sum_pool(xp, kernel, stride) / _sum_pool(mask, kernel, stride),)


def _sum_pool(x, kernel, stride):
    if len(kernel) == 1:
        return F.avg_pool1d(x, kernel, stride, 0) * kernel[0]
    fn = F.avg_pool2d if len(kernel) == 2 else F.avg_pool3d
    return fn(x, kernel, stride, 0, divisor_override=1)


# ---- elementwise and structural --------------------------------------------------------
_BINARY = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.div,
    "max": torch.maximum,
    "min": torch.minimum,
    "pow": torch.pow,
    "mod": torch.remainder,  # the divisor's sign (Python %); fmod=1 takes torch.fmod below
}


_check_same_ops(_BINARY, BINARY, "binaries")


def _make_binary(op_name: str):
    fn = _BINARY[op_name]

    def binary(node: Node, *xs):
        if "const" in node.params:
            c = node.params["const"]
            a, b = (c, xs[0]) if node.attrs.get("const_first") else (xs[0], c)
        else:
            a, b = xs
        if op_name == "div" and not (a.is_floating_point() or b.is_floating_point()):
            return (torch.div(a, b, rounding_mode="trunc"),)  # ONNX's integer Div truncates, as C does
        if op_name == "mod" and node.attrs.get("fmod"):
            return (torch.fmod(a, b),)  # the dividend's sign, as C's fmod
        return (fn(a, b),)

    binary.__doc__ = f"Broadcasting elementwise {op_name}; one operand may be the constant param 'const'."
    return binary


for _name in _BINARY:
    implements(_name)(_make_binary(_name))


@implements("concat")
def concat(node: Node, *xs):
    """Concatenate along ``axis``."""
    return (torch.cat(xs, dim=node.attrs["axis"]),)


@implements("split")
def split(node: Node, x):
    """Split along ``axis`` into pieces of ``sizes``."""
    return tuple(torch.split(x, list(node.attrs["sizes"]), dim=node.attrs["axis"]))


@implements("slice")
def slice_(node: Node, x):
    """Strided slice with constant starts/ends/axes/steps (negative steps included)."""
    for start, end, axis, step in zip(
        node.attrs["starts"], node.attrs["ends"], node.attrs["axes"], node.attrs["steps"]
    ):
        idx = list(_onnx_slice_range(start, end, step, x.shape[axis]))
        if step == 1 and idx:
            x = x.narrow(axis, idx[0], len(idx))
        else:
            x = torch.index_select(x, axis, device_constant(torch.tensor(idx, dtype=torch.long), x.device))
    return (x,)


def _onnx_slice_range(start: int, end: int, step: int, dim: int) -> range:
    """ONNX Slice bounds: negatives count from the end, then starts clamp to [0, dim] ([0, dim-1]
    for negative steps) and ends to [0, dim] ([-1, dim-1]); unlike Python's slice, a start before
    the axis with a negative step still selects element 0."""
    start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
    if step > 0:
        return range(min(max(start, 0), dim), min(max(end, 0), dim), step)
    return range(min(max(start, 0), dim - 1), min(max(end, -1), dim - 1), step)


@implements("gather")
def gather(node: Node, x):
    """ONNX Gather of an activation with constant indices along ``axis``."""
    idx = node.params["indices"].long()
    axis = node.attrs["axis"] % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = torch.index_select(x, axis, idx.reshape(-1))
    return (out.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1 :])),)


@implements("gather_elements")
def gather_elements(node: Node, x, *indices):
    """ONNX GatherElements along ``axis``: the indices a constant (``params['indices']``: a
    fixed selection of entries, linear) or a computed input (an index from ArgMax or TopK)."""
    idx = (node.params["indices"] if "indices" in node.params else indices[0]).long()
    axis = node.attrs["axis"]
    return (torch.gather(x, axis, torch.where(idx < 0, idx + x.shape[axis], idx)),)


#: ONNX Scatter* reductions as torch's scatter_reduce names ("none": a plain overwrite)
_SCATTER_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _scatter(node: Node, data, dim: int, index, updates):
    """``data`` with ``updates`` written (``reduction`` none) or combined with it (add, mul, max,
    min) at ``index`` along ``dim``: torch's scatter, which is ONNX ScatterElements."""
    reduction, updates = node.attrs.get("reduction", "none"), updates.to(data.dtype)
    if reduction == "none":
        return data.scatter(dim, index, updates)
    return data.scatter_reduce(dim, index, updates, _SCATTER_REDUCE[reduction], include_self=True)


@implements("scatter_elements")
def scatter_elements(node: Node, data, updates):
    """ONNX ScatterElements at constant indices along ``axis``."""
    axis = node.attrs["axis"]
    idx = node.params["indices"].long()
    return (_scatter(node, data, axis, torch.where(idx < 0, idx + data.shape[axis], idx), updates),)


def _nd_offsets(data_shape, idx: torch.Tensor, batch_dims: int = 0) -> torch.Tensor:
    """For ND indices [b..., m..., k] into data [b..., d...] (``batch_dims`` b shared leading
    axes): the flat position in the contiguous data of each addressed slice's first entry,
    shaped [b..., m...]; a slice holds prod(d[k:]) consecutive entries."""
    k = idx.shape[-1]
    dims = device_constant(torch.tensor(data_shape[batch_dims : batch_dims + k]), idx.device)
    idx = torch.where(idx < 0, idx + dims, idx)
    inner = math.prod(data_shape[batch_dims + k :])
    strides = [math.prod(data_shape[batch_dims + j + 1 : batch_dims + k]) * inner for j in range(k)]
    offsets = (idx * device_constant(torch.tensor(strides), idx.device)).sum(-1)
    if batch_dims:  # each batch position starts its own block of prod(data_shape[b:]) entries
        block = math.prod(data_shape[batch_dims:])
        lead = torch.arange(math.prod(data_shape[:batch_dims]), device=idx.device) * block
        offsets = offsets + lead.reshape(tuple(data_shape[:batch_dims]) + (1,) * (offsets.dim() - batch_dims))
    return offsets


@implements("gather_nd")
def gather_nd(node: Node, data):
    """ONNX GatherND at constant indices [b..., m..., k]: the slices data[b..., i0, ..., ik-1]."""
    idx = node.params["indices"].long()
    b, k = node.attrs.get("batch_dims", 0), idx.shape[-1]
    inner = math.prod(data.shape[b + k :])
    flat = _nd_offsets(data.shape, idx, b).unsqueeze(-1) + torch.arange(inner, device=data.device)
    out = torch.index_select(data.contiguous().reshape(-1), 0, flat.reshape(-1))  # refuses, not wraps, a negative
    return (out.reshape(tuple(idx.shape[:-1]) + tuple(data.shape[b + k :])),)


@implements("scatter_nd")
def scatter_nd(node: Node, data, updates):
    """ONNX ScatterND at constant indices [..., k]: each index tuple addresses a slice
    data[i0, ..., ik-1] that the matching slice of ``updates`` overwrites or is combined with."""
    idx = node.params["indices"].long()
    inner = math.prod(data.shape[idx.shape[-1] :])  # the entries of one addressed slice
    flat = _nd_offsets(data.shape, idx).reshape(-1, 1) + torch.arange(inner, device=data.device)
    out = _scatter(node, data.contiguous().reshape(-1), 0, flat.reshape(-1), updates.reshape(-1))
    return (out.reshape(data.shape),)


@implements("reshape")
def reshape(node: Node, x):
    """Reshape; with ``keep_batch`` the target excludes axis 0, which keeps the input's batch size."""
    shape = list(node.attrs["shape"])
    if node.attrs.get("keep_batch"):
        return (x.reshape([x.shape[0]] + shape),)
    return (x.reshape(shape),)


@implements("flatten")
def flatten(node: Node, x):
    """ONNX Flatten: 2-D [prod(dims[:axis]), prod(dims[axis:])]."""
    axis = node.attrs.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    lead = math.prod(x.shape[:axis])
    return (x.reshape(lead, -1) if x.numel() else x.reshape(lead, math.prod(x.shape[axis:])),)


@implements("transpose")
def transpose(node: Node, x):
    """Permute axes by ``perm``."""
    return (x.permute(*node.attrs["perm"]),)


@implements("pad")
def pad(node: Node, x):
    """ONNX Pad (constant, reflect, edge, wrap) with per-axis begin/end pads; negative pads crop."""
    pads = list(node.attrs["pads"])
    rank = x.dim()
    begin, end = pads[:rank], pads[rank:]
    mode = node.attrs.get("mode", "constant")
    if mode == "constant":
        first = next((i for i in range(rank) if begin[i] or end[i]), rank)
        return (F.pad(x, _torch_pad(begin[first:], end[first:]), value=node.attrs.get("value", 0.0)),)
    # torch's reflect/replicate cover only some ranks and axes: gather indices per axis instead,
    # after cropping the negative pads (as onnxruntime does: wrap and reflect read the cropped axis)
    for axis in range(rank):
        crop_begin, crop_end = max(-begin[axis], 0), max(-end[axis], 0)
        if crop_begin or crop_end:
            x = x.narrow(axis, crop_begin, max(x.shape[axis] - crop_begin - crop_end, 0))
        n, b, e = x.shape[axis], max(begin[axis], 0), max(end[axis], 0)
        if not (b or e):
            continue
        i = torch.arange(-b, n + e)
        if mode == "edge":
            i = i.clamp(0, n - 1)
        elif mode == "wrap":
            i = i % n
        else:  # reflect: mirror about the first and last element without repeating them
            period = max(2 * (n - 1), 1)
            i = i.abs() % period
            i = torch.where(i >= n, period - i, i)
        x = torch.index_select(x, axis, device_constant(i, x.device))
    return (x,)


def _source_coords(out_size: int, in_size: int, scale: float, mode: str, roi=None) -> torch.Tensor:
    """Source coordinate of every output index, computed in float32 in the same operation order
    as onnxruntime, so that nearest rounding at exact .0/.5 ties picks the same pixel."""
    f32 = torch.float32
    dst = torch.arange(out_size, dtype=f32)
    s = torch.tensor(scale, dtype=f32)
    if mode == "asymmetric":
        return dst / s
    if mode == "align_corners":
        return dst * (in_size - 1) / (out_size - 1) if out_size > 1 else torch.zeros_like(dst)
    if mode == "pytorch_half_pixel":
        return (dst + 0.5) / s - 0.5 if out_size > 1 else torch.zeros_like(dst)
    if mode == "half_pixel_symmetric":
        adj = torch.tensor(out_size, dtype=f32) / (s * in_size)
        center = torch.tensor(in_size, dtype=f32) / 2
        offset = center * (1 - adj)
        return offset + (dst + 0.5) / s - 0.5
    if mode == "half_pixel":
        return (dst + 0.5) / s - 0.5
    if mode == "tf_half_pixel_for_nn":  # opsets 11-17: half-pixel centres without the -0.5
        return (dst + 0.5) / s
    raise SnncError(f"Resize: coordinate_transformation_mode '{mode}' is not supported")


def _nearest_index(src: torch.Tensor, in_size: int, rounding: str) -> torch.Tensor:
    if rounding == "floor":
        idx = torch.floor(src)
    elif rounding == "ceil":
        idx = torch.ceil(src)
    elif rounding == "round_prefer_ceil":
        idx = torch.floor(src + 0.5)
    else:  # round_prefer_floor
        idx = torch.ceil(src - 0.5)
    return idx.clamp(0, in_size - 1).long()


def _cubic_along(x, axis: int, src: torch.Tensor, in_size: int, a: float, exclude_outside: int):
    """Cubic convolution (Keys, coefficient ``a``) along ``axis`` at source coordinates ``src``:
    the four inputs around each coordinate, the ones beyond the edge repeating the edge value
    or, with ``exclude_outside``, left out with the other weights renormalised (as ONNX)."""
    offsets = torch.arange(-1, 3)
    left = torch.floor(src)
    idx = left.long().unsqueeze(1) + offsets  # [out, 4]
    d = (src - left).unsqueeze(1) - offsets  # signed distance of each input from the coordinate
    d = d.abs().double()
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    w = torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))
    if exclude_outside:
        w = torch.where((idx >= 0) & (idx < in_size), w, torch.zeros_like(w))
        w = w / w.sum(1, keepdim=True)
    idx = idx.clamp(0, in_size - 1)
    shape = [1] * x.dim()
    shape[axis] = idx.shape[0]
    out = 0
    for k in range(4):
        picked = torch.index_select(x, axis, device_constant(idx[:, k].contiguous(), x.device))
        out = out + picked * device_constant(w[:, k].to(x.dtype).contiguous(), x.device).reshape(shape)
    return out


@implements("resize")
def resize(node: Node, x):
    """Resize / Upsample, nearest or (bi/tri)linear, separably per resized axis.

    Source coordinates follow the node's coordinate_transformation_mode and nearest_mode
    exactly as the ONNX spec defines them.
    """
    sizes, scales = node.attrs["sizes"], node.attrs["scales"]
    mode = node.attrs.get("mode", "nearest")
    ctm = node.attrs.get("coordinate_transformation_mode", "half_pixel")
    rounding = node.attrs.get("nearest_mode", "round_prefer_floor")
    for axis in range(x.dim()):
        in_size, out_size, scale = x.shape[axis], sizes[axis], scales[axis]
        if axis == 0 or (in_size == out_size and scale == 1.0):
            continue
        src = _source_coords(out_size, in_size, scale, ctm)
        if mode == "nearest":
            x = torch.index_select(x, axis, device_constant(_nearest_index(src, in_size, rounding), x.device))
            continue
        if mode == "cubic":
            x = _cubic_along(x, axis, src, in_size, node.attrs["cubic_coeff_a"], node.attrs["exclude_outside"])
            continue
        src = src.clamp(0, in_size - 1)
        lo = torch.floor(src).long()
        hi = (lo + 1).clamp(max=in_size - 1)
        w = device_constant((src - lo).to(x.dtype), x.device)
        shape = [1] * x.dim()
        shape[axis] = out_size
        a = torch.index_select(x, axis, device_constant(lo, x.device))
        b = torch.index_select(x, axis, device_constant(hi, x.device))
        x = a + (b - a) * w.reshape(shape)
    return (x,)


def _prod(x, dim, keepdim):
    for axis in sorted(dim, reverse=True):  # torch.prod takes one axis at a time
        x = torch.prod(x, dim=axis, keepdim=keepdim)
    return x


# ReduceL1/L2/SumSquare/LogSum as the ONNX functions define them (onnxruntime computes the same)
_REDUCE = {
    "reduce_mean": torch.mean,
    "reduce_sum": torch.sum,
    "reduce_max": torch.amax,
    "reduce_min": torch.amin,
    "reduce_prod": _prod,
    "reduce_l1": lambda x, dim, keepdim: torch.sum(x.abs(), dim=dim, keepdim=keepdim),
    "reduce_l2": lambda x, dim, keepdim: torch.sum(x * x, dim=dim, keepdim=keepdim).sqrt(),
    "reduce_sum_square": lambda x, dim, keepdim: torch.sum(x * x, dim=dim, keepdim=keepdim),
    "reduce_log_sum": lambda x, dim, keepdim: torch.sum(x, dim=dim, keepdim=keepdim).log(),
    "reduce_log_sum_exp": torch.logsumexp,
}
_check_same_ops(_REDUCE, REDUCTIONS, "reductions")


def _make_reduction(op_name: str):
    fn = _REDUCE[op_name]

    def reduce(node: Node, x):
        axes = node.attrs.get("axes") or list(range(x.dim()))
        return (fn(x, dim=tuple(axes), keepdim=bool(node.attrs.get("keepdims", 1))),)

    reduce.__doc__ = f"{op_name} over ``axes`` (all axes when empty), keeping them with ``keepdims``."
    return reduce


for _name in _REDUCE:
    implements(_name)(_make_reduction(_name))

_PICK = {"argmax": torch.argmax, "argmin": torch.argmin}
_check_same_ops(_PICK, ARG_REDUCTIONS, "index reductions")


def _make_arg_reduction(op_name: str):
    pick = _PICK[op_name]

    def arg_reduce(node: Node, x):
        axis, keepdim = node.attrs["axis"], bool(node.attrs.get("keepdims", 1))
        if node.attrs.get("select_last_index"):  # torch picks the first of equal entries: count from the end
            return (x.shape[axis] - 1 - pick(x.flip(axis), dim=axis, keepdim=keepdim),)
        return (pick(x, dim=axis, keepdim=keepdim),)

    arg_reduce.__doc__ = (
        f"ONNX {ARG_REDUCTIONS[op_name]}: the int64 index of the first (``select_last_index``: last) "
        "extreme entry along ``axis``."
    )
    return arg_reduce


for _name in _PICK:
    implements(_name)(_make_arg_reduction(_name))


@implements("where")
def where(node: Node, *xs):
    """ONNX Where: ``cond ? x : y``; a constant condition (``params['cond']``) makes it a fixed
    per-element selection, which commutes with rate coding; an activation condition is analog."""
    if "cond" in node.params:
        return (torch.where(node.params["cond"], xs[0], xs[1]),)
    cond, x, y = xs
    return (torch.where(cond.bool(), x, y),)


#: The torch function of each comparison or connective of :data:`~snncompiler.ir.ops.PREDICATES`.
_PREDICATE = {
    "equal": torch.eq,
    "greater": torch.gt,
    "less": torch.lt,
    "greater_or_equal": torch.ge,
    "less_or_equal": torch.le,
    "and": torch.logical_and,
    "or": torch.logical_or,
    "xor": torch.logical_xor,
    "not": torch.logical_not,
    "is_nan": torch.isnan,
}
_implement_table(_PREDICATE, PREDICATES, "predicates")


@implements("expand")
def expand(node: Node, x):
    """ONNX Expand to ``shape`` (bidirectional broadcasting, so a batch axis traced as 1 keeps
    the input's batch size)."""
    target = torch.broadcast_shapes(tuple(x.shape), tuple(node.attrs["shape"]))
    return (x.expand(target),)


@implements("tile")
def tile(node: Node, x):
    """ONNX Tile by ``repeats`` (1 on the batch axis, so a folded time axis tiles per sample)."""
    return (x.repeat(*node.attrs["repeats"]),)


@implements("trilu")
def trilu(node: Node, x):
    """ONNX Trilu: the upper (``upper``) or lower triangle of the last two axes from diagonal
    ``k``, the rest zero."""
    k = node.attrs.get("k", 0)
    return (torch.triu(x, k) if node.attrs.get("upper", 1) else torch.tril(x, k),)


@implements("cumsum")
def cumsum(node: Node, x):
    """ONNX CumSum along ``axis``: ``reverse`` sums from the end, ``exclusive`` leaves each
    element out of its own sum."""
    a = node.attrs
    axis = a["axis"]
    if a.get("reverse"):
        x = x.flip(axis)
    y = torch.cumsum(x, dim=axis)
    if a.get("exclusive"):  # shifted by one (not y - x, which rounds differently)
        y = torch.cat([torch.zeros_like(y.narrow(axis, 0, 1)), y.narrow(axis, 0, y.shape[axis] - 1)], dim=axis)
    return (y.flip(axis) if a.get("reverse") else y,)


#: float8_e4m3fn values beyond this round past its largest value, 448 (half an ulp of 32 above it)
_E4M3FN_OVERFLOW = 464.0


@implements("cast")
def cast(node: Node, x):
    """Cast to ``dtype`` (a torch dtype name). Casts to float8 follow ONNX's ``saturate`` as
    onnxruntime does: with it (the default) out-of-range values and infinities become ±max;
    without it they overflow to inf (E5M2) or NaN (the types without infinities)."""
    name = node.attrs["dtype"]
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise SnncError(f"{node.where}: cast to {name} is not supported")
    if name.startswith("float8") and x.is_floating_point():
        if node.attrs.get("saturate", 1):
            top = torch.finfo(dtype).max
            x = x.clamp(-top, top)
        elif name == "float8_e4m3fn":  # torch saturates this one type; ONNX without saturate does not
            x = torch.where(x.abs() > _E4M3FN_OVERFLOW, torch.full_like(x, float("nan")), x)
    return (x.to(dtype),)


def _quantization_params(node: Node, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point broadcasting against ``x``: per tensor, or per ``axis``."""
    axis = node.attrs.get("axis")
    scale, zero = node.params["scale"].to(torch.float32), node.params["zero_point"].to(torch.int32)
    if axis is None or scale.numel() == 1:
        return scale.reshape(()), zero.reshape(())
    return channel_view(scale, x, axis), channel_view(zero, x, axis)


@implements("quantize")
def quantize(node: Node, x):
    """ONNX QuantizeLinear to the integer type ``dtype``: round(x / scale) (half to even) + zero
    point, saturated to the type's range or the narrower ``qmin``…``qmax`` (a Clip the model
    applied to the integers, folded in by passes/fake_quant.py), per tensor or per ``axis``."""
    scale, zero = _quantization_params(node, x)
    info = torch.iinfo(getattr(torch, node.attrs["dtype"]))
    q = torch.round(x.to(torch.float32) / scale) + zero.to(torch.float32)
    lo, hi = node.attrs.get("qmin", info.min), node.attrs.get("qmax", info.max)
    return (q.clamp(lo, hi).to(getattr(torch, node.attrs["dtype"])),)


@implements("dequantize")
def dequantize(node: Node, x):
    """ONNX DequantizeLinear: (x − zero point) · scale in float32, per tensor or per ``axis``.
    A float input (a rate-decoded integer in a spiking run) is taken as it is."""
    scale, zero = _quantization_params(node, x)
    shifted = (
        x.to(torch.float32) - zero.to(torch.float32) if x.is_floating_point() else (x.to(torch.int32) - zero).float()
    )
    return (shifted * scale,)


@implements("identity")
def identity(node: Node, x):
    """Pass the input through (kept only where a graph output must be a copy)."""
    return (x,)


@implements("constant")
def constant(node: Node):
    """A constant tensor (``params['value']``) that the graph returns or feeds to an op."""
    return (node.params["value"],)


@implements("unsupported")
def unsupported(node: Node, *xs):
    """Placeholder for an ONNX op without a converter, kept only so ``inspect`` can list it."""
    raise SnncError(
        f"{node.where}: operator {node.attrs.get('op_type')} (domain '{node.attrs.get('domain') or 'ai.onnx'}') is not supported"
    )


# ---- spiking ---------------------------------------------------------------------------
def channel_view(t: torch.Tensor, x: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """Reshape a per-channel [C] (or scalar) parameter so it broadcasts against x along ``axis``."""
    if t.numel() == 1:
        return t.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


@implements("neuron")
def neuron(node: Node, x):
    """A spiking neuron in ANN mode: clip(x, 0, θ), θ per tensor or per channel.

    The spiking runtime (runtime/snn.py) runs the same node as an IF/LIF neuron over time;
    this ANN form is what it approximates, which separates clipping from flooring error.
    """
    return (torch.minimum(torch.relu(x), channel_view(node.params["theta"], x)),)
