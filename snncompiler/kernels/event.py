"""Event-driven conv2d / linear: the current of a layer computed from its active inputs only.

A layer fed by neurons reads spikes (0 or θ, θ per tensor or per channel), mostly zeros; a
pruned layer's weights are mostly zeros too. :class:`EventLayer` runs the C++ kernel
csrc/event_cpu.cpp in one of three forms:

* gather: per output pixel and tile of 64 output channels (held in registers), the nonzero
  inputs that its kernel taps reach, each adding value × a packed weight row. Work ∝ spike
  density × the taps that land on real input (padding taps cost nothing). groups = 1. The form
  for converted networks with dense weights: 2-30× faster than dense at 10-25 % spike density
  on ResNet-18's layers (benchmarks/end_to_end.py).
* scatter: per input channel and tap, the events scattered through the CSR-compressed nonzero
  weights (compressed once per layer). Work ∝ spike density × weight density: pruned layers at
  very low spike density.
* pruned: per output channel, its nonzero weights only, each adding weight × the input plane it
  reads to the whole output plane (16 pixels per vector, the input placed by stride phase so
  that a tap is one offset). Work ∝ weight density × output pixels plus one pass placing the
  sample's spikes; convolutions only. The form for pruned layers at the 5-30 % spike densities
  of converted networks, where the event lists cost more than the zeros they skip. Its sum runs
  in the gather form's order, and equals it bit for bit. (A NaN input reaches only the outputs of
  its nonzero weights; dense execution spreads it through zero weights too. Spikes are never NaN.)

Which form (or dense) runs a layer is chosen per chunk by a measured cost model
(:mod:`snncompiler.kernels.exec_cost`). Results equal :func:`conv2d_reference` /
:func:`linear_reference` (F.conv2d / F.linear) within float32 summation-order error; the gather
and pruned forms' sums run in one fixed order with fused multiply-adds on every instruction set,
so their result does not depend on the ISA or the thread count.

Supported: linear, and conv with 2 spatial axes (1 spatial axis runs as height 1), any stride,
padding (asymmetric too), dilation and groups (gather: groups = 1; pruned: conv only). 3-D convolution is left to
the dense path (:func:`layer_for` returns None). CPU only; without the extension (not built)
:func:`available` is False and the runtime falls back to dense execution.
"""

from __future__ import annotations

import functools
import os
import weakref

import torch
import torch.nn.functional as F

from ..options import EXEC_MODES  # noqa: F401 - execution modes of SpikingRunner (``--exec``), re-exported

#: the event kernel's forms (the module docstring says which suits what)
FORMS = ("gather", "scatter", "pruned")


@functools.cache
def load():
    """The compiled ``snncompiler.kernels._event_cpu`` module, or None if it is not built. The
    first call applies ``SNNC_CPU_ISA`` (baseline, avx2, avx512), as for the neuron kernel."""
    try:
        from . import _event_cpu
    except ImportError:
        return None
    name = os.environ.get("SNNC_CPU_ISA", "").strip().lower()
    if name and name != "auto" and name in _event_cpu.supported_isas():
        _event_cpu.set_isa(name)  # an ISA this CPU lacks: the neuron kernel's loader warns once
    return _event_cpu


def available() -> bool:
    """Whether the event-driven C++ kernel is built."""
    return load() is not None


def compress(weight: torch.Tensor, groups: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSR form of a conv weight [O, C/groups, KH, KW] (a linear weight [O, F] is [O, F, 1, 1]):
    one row per (global input channel c, ky, kx) listing the output channels of c's group whose
    weight is nonzero, ascending. Returns (offsets int64 [C·KH·KW + 1], index int32, value float32)."""
    w = weight.detach().float().cpu()
    if w.dim() == 2:
        w = w[:, :, None, None]
    O, Cg, KH, KW = w.shape  # noqa: E741 - the weight layout's own names, [O, C/groups, KH, KW]
    Og = O // groups
    # [G, Cg, KH, KW, Og]: rows in global input-channel order c = g·Cg + c_local
    rows = w.reshape(groups, Og, Cg, KH, KW).permute(0, 2, 3, 4, 1).reshape(groups * Cg * KH * KW, Og)
    mask = rows != 0
    r, col = mask.nonzero(as_tuple=True)
    index = (col + (r // (Cg * KH * KW)) * Og).to(torch.int32)
    offsets = torch.zeros(rows.shape[0] + 1, dtype=torch.int64)
    offsets[1:] = mask.sum(1).cumsum(0)
    return offsets, index.contiguous(), rows[mask].contiguous()


class EventLayer:
    """One conv/linear layer in event-driven form: its weights compressed once (they never change
    during a run), its geometry, and a call that maps inputs [N, ...] to outputs like the node."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        kind: str = "conv",
        stride=(1, 1),
        pads=(0, 0, 0, 0),
        dilation=(1, 1),
        groups: int = 1,
    ):
        if kind not in ("conv", "linear"):
            raise ValueError(f"kind: expected conv or linear, got {kind!r}")
        self.kind, self.groups = kind, int(groups)
        self.conv1d = kind == "conv" and weight.dim() == 3
        if self.conv1d:  # length L runs as a 1 × L image
            weight = weight.unsqueeze(2)
            stride, dilation = (1, *stride), (1, *dilation)
            pads = (0, pads[0], 0, pads[1])
        self.weight_shape = tuple(weight.shape)
        self.kernel = (1, 1) if kind == "linear" else tuple(int(k) for k in weight.shape[2:])
        self.offsets, self.index, self.value = compress(weight, self.groups)
        self.bias = None if bias is None else bias.detach().float().cpu().contiguous()
        self.weight_density = self.value.numel() / max(1, weight.numel())
        self.stride, self.dilation = tuple(int(s) for s in stride), tuple(int(d) for d in dilation)
        self.pads = tuple(int(p) for p in pads)  # ONNX order: begin H, begin W, end H, end W
        # the gather form's weights, [KH·KW, C, O padded to 16] (built on first use; groups = 1 only)
        self._packed: tuple[torch.Tensor, torch.Tensor | None] | None = None
        # the pruned form's weights: per output channel its nonzero ones (built on first use)
        self._pruned: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        dense = weight.detach().float().cpu()
        self._dense_weight = dense if dense.dim() == 4 else dense[:, :, None, None]  # [O, C/groups, KH, KW]

    @property
    def gather_ok(self) -> bool:
        """Whether the gather form applies: groups = 1, and packed weights the kernel addresses
        with 32-bit offsets (fewer than 2^31 floats)."""
        if self.groups != 1:
            return False
        o, c, kh, kw = self._dense_weight.shape
        return kh * kw * c * (-(-o // 16) * 16) < 2**31

    def supports(self, form: str) -> bool:
        """Whether ``form`` (one of :data:`FORMS`) applies to this layer."""
        return form == "scatter" or (form == "gather" and self.gather_ok) or (form == "pruned" and self.pruned_ok)

    @property
    def pruned_ok(self) -> bool:
        """Whether the pruned form applies: any convolution (any stride, padding, dilation and
        groups); a linear layer has one output per channel, no plane to vectorise over."""
        return self.kind == "conv"

    def __call__(self, x: torch.Tensor, form: str = "scatter", scale: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's output for x ([N, C, H, W], [N, C, L] or [..., F]) on the event kernel, in
        the scatter form (work ∝ nonzero inputs × nonzero weights: pruned layers, very sparse
        spikes) or the gather form (work ∝ nonzero inputs × the taps that reach a real input, with
        the outputs in registers: dense weights at a few % spike density and up; groups = 1).

        x may be binary spikes (uint8 0/1, the neuron kernel's "binary" format) with ``scale``
        (float32 [C], per input feature [F] for a linear layer) the value a spike of each channel
        carries: the result is bit for bit that of the float32 input ``where(x, scale, 0)``, from
        a quarter of the bytes."""
        if form not in FORMS:
            raise ValueError(f"form: expected one of {', '.join(FORMS)}, got {form!r}")
        if form == "gather" and not self.gather_ok:
            raise ValueError("form: the gather form needs groups = 1 (and fewer than 2^31 packed weights)")
        if form == "pruned" and not self.pruned_ok:
            raise ValueError("form: the pruned form is for convolutions (a linear layer has no plane)")
        if (x.dtype == torch.uint8) != (scale is not None):
            raise ValueError("scale: needed exactly when x is uint8 binary spikes")
        lib = load()
        if self.kind == "linear":
            lead = x.shape[:-1]
            x4 = x.reshape(-1, x.shape[-1], 1, 1)
            y = self._run(lib, x4, 1, 1, form, scale)
            return y.reshape(tuple(lead) + (y.shape[1],))
        x4 = x.unsqueeze(2) if self.conv1d else x
        OH, OW = self.output_size(x4.shape[2], x4.shape[3])
        y = self._run(lib, x4, OH, OW, form, scale)
        return y.squeeze(2) if self.conv1d else y

    def output_size(self, H: int, W: int) -> tuple[int, int]:
        """(OH, OW) of an H × W input (1 × 1 for a linear layer)."""
        if self.kind == "linear":
            return 1, 1
        (KH, KW), (sh, sw), (dh, dw), (pt, pl, pb, pr) = self.kernel, self.stride, self.dilation, self.pads
        return (H + pt + pb - dh * (KH - 1) - 1) // sh + 1, (W + pl + pr - dw * (KW - 1) - 1) // sw + 1

    def _gather_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._packed is None:
            w = self._dense_weight
            O = w.shape[0]  # noqa: E741 - output channels, as in the weight layout [O, C, KH, KW]
            opad = -(-O // 16) * 16
            packed = torch.zeros((w.shape[2] * w.shape[3], w.shape[1], opad), dtype=torch.float32)
            packed[:, :, :O] = w.permute(2, 3, 1, 0).reshape(-1, w.shape[1], O)
            bias = None
            if self.bias is not None:
                bias = torch.zeros(opad, dtype=torch.float32)
                bias[:O] = self.bias
            self._packed = (packed.contiguous(), bias)
        return self._packed

    def _pruned_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(offsets int64 [O + 1], c·KH·KW + tap int32 [nnz], value float32 [nnz]): each output
        channel's nonzero weights in the gather form's summation order, taps row-major, then input
        channels ascending (c global: c_local + the group's first channel)."""
        if self._pruned is None:
            w = self._dense_weight
            O, Cg, KH, KW = w.shape  # noqa: E741 - the weight layout's own names
            rows = w.permute(0, 2, 3, 1).reshape(O, KH * KW, Cg)  # [O, tap, c]: nonzero() walks o, tap, c
            mask = rows != 0
            o, tap, c_local = mask.nonzero(as_tuple=True)
            c = c_local + (o // (O // self.groups)) * Cg
            offsets = torch.zeros(O + 1, dtype=torch.int64)
            offsets[1:] = mask.flatten(1).sum(1).cumsum(0)
            self._pruned = (offsets, (c * KH * KW + tap).to(torch.int32).contiguous(), rows[mask].contiguous())
        return self._pruned

    def _run(self, lib, x4: torch.Tensor, OH: int, OW: int, form: str = "scatter", scale=None) -> torch.Tensor:
        if scale is None:
            x4 = x4.contiguous() if x4.dtype == torch.float32 else x4.float().contiguous()
        else:
            x4 = x4.contiguous()
            scale = scale.to(torch.float32).contiguous()
            if scale.numel() != x4.shape[1]:
                raise ValueError(f"scale: expected one value per input channel ({x4.shape[1]}), got {scale.numel()}")
        N, C, H, W = x4.shape
        O = self.weight_shape[0]  # noqa: E741 - output channels, as in the weight layout [O, C, KH, KW]
        out = torch.empty((N, O, max(OH, 0), max(OW, 0)), dtype=torch.float32)
        if out.numel() == 0:
            return out
        (KH, KW), (sh, sw), (dh, dw), (pt, pl, _, _) = self.kernel, self.stride, self.dilation, self.pads
        geometry = (N, C, H, W, O, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw)  # the kernels' argument order
        tail = (torch.get_num_threads(), 0 if scale is None else scale.data_ptr())
        bias = 0 if self.bias is None else self.bias.data_ptr()
        if form == "pruned":
            offsets, taps, value = self._pruned_weights()
            lib.conv2d_pruned(
                x4.data_ptr(),
                out.data_ptr(),
                bias,
                offsets.data_ptr(),
                taps.data_ptr(),
                value.data_ptr(),
                *geometry,
                *tail,
            )
        elif form == "gather":  # its weights padded to Opad output channels, given after O
            packed, padded_bias = self._gather_weights()
            lib.conv2d_gather(
                x4.data_ptr(),
                out.data_ptr(),
                0 if padded_bias is None else padded_bias.data_ptr(),
                packed.data_ptr(),
                *geometry[:5],
                packed.shape[2],
                *geometry[5:],
                *tail,
            )
        else:
            lib.conv2d(
                x4.data_ptr(),
                out.data_ptr(),
                bias,
                self.offsets.data_ptr(),
                self.index.data_ptr(),
                self.value.data_ptr(),
                *geometry,
                *tail,
            )
        return out


# weight tensor -> (its version, the settings, the EventLayer): a runner is made per run() call,
# and the weights of a compiled model do not change between them, so they are compressed once
# (keyed by id: a tensor's == is elementwise; the entry goes when the tensor does)
_LAYERS: dict[int, tuple] = {}


def layer_for(node) -> EventLayer | None:
    """The :class:`EventLayer` of an IR conv/linear node, or None where the event kernel does not
    apply (3-D convolution, parameters off the CPU or not float32). Cached per weight tensor
    (rebuilt if the weights, bias or geometry change)."""
    w = node.params.get("weight")
    if w is None or w.device.type != "cpu" or w.dtype != torch.float32:
        return None
    if not ((node.op == "linear" and w.dim() == 2) or (node.op == "conv" and w.dim() in (3, 4))):
        return None
    bias = node.params.get("bias")
    nd = max(1, w.dim() - 2)
    geometry = (
        node.op,
        tuple(node.attrs.get("stride", [1] * nd)),
        tuple(node.attrs.get("pads", [0] * 2 * nd)),
        tuple(node.attrs.get("dilation", [1] * nd)),
        int(node.attrs.get("groups", 1)),
    )
    key = (w._version, None if bias is None else (id(bias), bias._version), geometry)
    cached = _LAYERS.get(id(w))
    if cached is not None and cached[0] == key:
        return cached[1]
    if node.op == "linear":
        layer = EventLayer(w, bias, kind="linear")
    else:
        _, stride, pads, dilation, groups = geometry
        layer = EventLayer(w, bias, kind="conv", stride=stride, pads=pads, dilation=dilation, groups=groups)
    if id(w) not in _LAYERS:
        weakref.finalize(w, _LAYERS.pop, id(w), None)
    _LAYERS[id(w)] = (key, layer)
    return layer


def count_nonzero(x: torch.Tensor) -> int:
    """The number of nonzero entries of x (NaN counts), with the C++ kernel for a contiguous
    float32 or uint8 (binary spikes) CPU tensor (torch.count_nonzero is ten times slower there),
    torch otherwise."""
    lib = load()
    if lib is None or x.dtype not in (torch.float32, torch.uint8) or x.device.type != "cpu" or not x.is_contiguous():
        return int(torch.count_nonzero(x))
    return int(lib.count_nonzero(x.data_ptr(), x.numel(), torch.get_num_threads(), x.dtype == torch.uint8))


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor | None:
    """2×2 max pooling, stride 2, no padding, floor mode, of a contiguous float32 CPU tensor
    [..., H, W] with the C++ kernel (NaN propagates, as in max_pool2d); None where it does not
    apply or the extension is not built (the caller pools with torch)."""
    lib = load()
    if lib is None or x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() < 3 or not x.is_contiguous():
        return None
    H, W = x.shape[-2:]
    out = torch.empty(tuple(x.shape[:-2]) + (H // 2, W // 2), dtype=torch.float32)
    if out.numel():
        lib.max_pool_2x2(x.data_ptr(), out.data_ptr(), x.numel() // max(1, H * W), H, W, torch.get_num_threads())
    return out


def running_sums(x: torch.Tensor, carry: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Running sums of x over the leading (time) axis continued from ``carry`` (float64 shaped
    like x[0], or None for 0): (the sums in float32, each rounded from the float64 running sum,
    and the float64 carry for the next call). Unlike ``cumsum_steps(x, init)`` the result does
    not depend on how the steps are split over calls, and sums of spikes are exact, so two equal
    spike counts give equal sums whatever their timing (an ArgMax over running means keeps their
    tie). Float32 CPU tensors without a gradient run on the C++ kernel, the rest on torch."""
    lib = load()
    if carry is None:
        carry = torch.zeros(x.shape[1:], dtype=torch.float64, device=x.device)
    if (
        lib is None
        or x.dtype != torch.float32
        or x.device.type != "cpu"
        or x.dim() < 1
        or (torch.is_grad_enabled() and x.requires_grad)
        or torch.compiler.is_compiling()
    ):
        sums = torch.cat([carry.unsqueeze(0), x.double()]).cumsum(0)[1:]
        return sums.to(torch.float32), (sums[-1] if len(sums) else carry)
    x = x.contiguous()
    carry = carry.expand(x.shape[1:]).clone(memory_format=torch.contiguous_format)  # the kernel writes it
    out = torch.empty(x.shape, dtype=torch.float32)
    if out.numel():
        lib.cumsum_steps_carried(
            x.data_ptr(), carry.data_ptr(), out.data_ptr(), x.shape[0], carry.numel(), torch.get_num_threads()
        )
    return out, carry


def cumsum_steps(x: torch.Tensor, init=None) -> torch.Tensor:
    """``x.cumsum(0) + init``: running sums over the leading (time) axis, plus ``init`` (a tensor
    broadcastable to x[0], or None). Float32 CPU tensors without a gradient to track run on the
    C++ kernel (bit for bit torch's result: sums in double, rounded per step; torch's own cumsum
    along the leading axis is several times slower than a copy); anything else runs torch."""
    lib = load()
    plain = isinstance(init, torch.Tensor) or init is None
    if (
        lib is None
        or not plain
        or x.dtype != torch.float32
        or x.device.type != "cpu"
        or x.dim() < 1
        or (torch.is_grad_enabled() and (x.requires_grad or (init is not None and init.requires_grad)))
        or torch.compiler.is_compiling()
    ):
        return x.cumsum(0) + (0 if init is None else init)
    if init is not None:
        if init.dtype != torch.float32 or init.device.type != "cpu":
            return x.cumsum(0) + init
        init = init.expand(x.shape[1:]).contiguous()
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=torch.float32)
    T, n = x.shape[0], x[0].numel() if x.shape[0] else 0
    if out.numel():
        lib.cumsum_steps(
            x.data_ptr(), 0 if init is None else init.data_ptr(), out.data_ptr(), T, n, torch.get_num_threads()
        )
    return out


def rate_max_pool_steps(s, theta, kernel, stride, pads, out_hw, sums=None, previous=None):
    """The spiking runtime's rate max pooling of spikes on the C++ kernel: for s [T, B, C, H, W]
    (float32, CPU; a spike is any nonzero value), each input's running spike count, each window's
    largest count, and its increments times θ (a scalar or one per channel): (out [T, B, C, OH,
    OW], counts [B, C, H, W], maxima [B, C, OH, OW]), the last two to carry into the next chunk
    (``sums`` and ``previous``; None starts from zero). ``kernel``, ``stride``: 2-D; ``pads``: the
    begin pads (padding never wins); ``out_hw``: the output size the pooling's mode gives. Equal,
    bit for bit, to the torch composition (counts are exact integers in float32). None where it
    does not apply or the extension is not built."""
    lib = load()
    if lib is None or s.dim() != 5 or s.dtype != torch.float32 or s.device.type != "cpu":
        return None
    T, B, C, H, W = s.shape
    theta = torch.as_tensor(theta, dtype=torch.float32).reshape(-1).contiguous()
    if theta.numel() not in (1, C) or H * W == 0:
        return None
    OH, OW = out_hw
    s = s.contiguous()
    out = torch.empty((T, B, C, OH, OW), dtype=torch.float32)
    sums_out = torch.empty((B, C, H, W), dtype=torch.float32)
    prev_out = torch.empty((B, C, OH, OW), dtype=torch.float32)
    sums = None if sums is None else sums.to(torch.float32).contiguous()
    previous = None if previous is None else previous.to(torch.float32).contiguous()
    lib.rate_max_pool_steps(
        s.data_ptr(),
        theta.data_ptr(),
        theta.numel(),
        0 if sums is None else sums.data_ptr(),
        0 if previous is None else previous.data_ptr(),
        out.data_ptr(),
        sums_out.data_ptr(),
        prev_out.data_ptr(),
        T,
        B * C,
        H,
        W,
        kernel[0],
        kernel[1],
        stride[0],
        stride[1],
        pads[0],
        pads[1],
        OH,
        OW,
        torch.get_num_threads(),
    )
    return out, sums_out, prev_out


class _RateMaxPool2x2(torch.autograd.Function):
    """The C++ rate max pooling (forward and gradient); see :func:`rate_max_pool_2x2`."""

    @staticmethod
    def forward(ctx, x):
        T, M, H, W = x.shape
        out = torch.empty((T, M, H // 2, W // 2), dtype=torch.float32)
        codes = torch.empty(out.shape, dtype=torch.uint8)
        if out.numel():
            load().rate_max_pool_2x2_forward(
                x.data_ptr(), out.data_ptr(), codes.data_ptr(), T, M, H, W, torch.get_num_threads()
            )
        ctx.save_for_backward(codes)
        ctx.input_shape = x.shape
        ctx.mark_non_differentiable(codes)
        return out, codes

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad, _codes_grad):
        (codes,) = ctx.saved_tensors
        T, M, H, W = ctx.input_shape
        gx = torch.empty(ctx.input_shape, dtype=torch.float32)
        if gx.numel():
            grad = grad.contiguous()
            load().rate_max_pool_2x2_backward(
                grad.data_ptr(), codes.data_ptr(), gx.data_ptr(), T, M, H, W, torch.get_num_threads()
            )
        return gx


def rate_max_pool_2x2(x: torch.Tensor) -> torch.Tensor | None:
    """Rate max pooling, 2×2, stride 2, no padding, floor mode, differentiable, on the C++ kernel:
    for x [T, M, H, W] (float32, CPU; M = batch × channels) the step-t output is the increase of
    the window maxima of the running sums x_0 + … + x_t, what the spiking runtime's rate max
    pooling emits. Values and gradient equal, bit for bit, torch autograd's through
    ``cumsum`` → max over row pairs then column pairs → ``diff`` (ties split the gradient
    evenly at each maximum). None where it does not apply or the extension is not built (the
    caller composes it in torch)."""
    if load() is None or x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4:
        return None
    if torch.compiler.is_compiling():
        return None  # an opaque C++ call would break a torch.compile graph
    return _RateMaxPool2x2.apply(x.contiguous())[0]


def conv2d_reference(x, weight, bias=None, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups: int = 1):
    """The dense computation the event kernel reproduces: F.conv2d with ONNX-order pads
    (begin H, begin W, end H, end W)."""
    pt, pl, pb, pr = pads
    return F.conv2d(F.pad(x, [pl, pr, pt, pb]), weight, bias, tuple(stride), 0, tuple(dilation), groups)


def linear_reference(x, weight, bias=None):
    """The dense computation the event kernel reproduces for a linear layer: F.linear."""
    return F.linear(x, weight, bias)
