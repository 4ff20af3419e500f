"""Event-driven conv2d / linear: the current of a layer computed from its active inputs only.

A layer fed by neurons reads spikes (0 or θ, θ per tensor or per channel), mostly zeros; a
pruned layer's weights are mostly zeros too. :class:`EventLayer` compresses a layer's weights
once (per input channel and kernel tap, the output channels whose weight is nonzero) and runs
the C++ kernel csrc/event_cpu.cpp, which compacts each sample's nonzero inputs and scatters
value × weight into the outputs they reach: work ∝ spike density × weight density, not
∝ the layer's MACs. Results equal :func:`conv2d_reference` / :func:`linear_reference`
(F.conv2d / F.linear) within float32 summation-order error.

Supported: linear, and conv with 2 spatial axes (1 spatial axis runs as height 1), any stride,
padding (asymmetric too), dilation and groups. 3-D convolution is left to the dense path
(:func:`layer_for` returns None). CPU only; without the extension (not built) :func:`available`
is False and the runtime falls back to dense execution.
"""

from __future__ import annotations

import functools
import weakref

import torch
import torch.nn.functional as F

from ..options import EXEC_MODES  # noqa: F401 - execution modes of SpikingRunner (``--exec``), re-exported

#: ``auto`` runs a layer event-driven when spike density × weight density of the chunk is at
#: most this: the share of the dense MACs the event kernel does. Measured break-even on the sdconv
#: SNN's layers (benchmarks/end_to_end.py --only event, 1 thread): 0.013 for the 16→32 conv
#: (weights 8.8 %), 0.009 for the 32→64 conv (3.2 %), 0.023 for the unpruned classifier; 0.01
#: takes the event kernel only where it won on all three (docs/benchmarks.md, "Event-driven execution").
AUTO_MAX_WORK = 0.01


@functools.cache
def load():
    """The compiled ``snncompiler.kernels._event_cpu`` module, or None if it is not built."""
    try:
        from . import _event_cpu
    except ImportError:
        return None
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

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output for x ([N, C, H, W], [N, C, L] or [..., F]) on the event kernel."""
        lib = load()
        if self.kind == "linear":
            lead = x.shape[:-1]
            x4 = x.reshape(-1, x.shape[-1], 1, 1)
            y = self._run(lib, x4, 1, 1)
            return y.reshape(tuple(lead) + (y.shape[1],))
        x4 = x.unsqueeze(2) if self.conv1d else x
        _, _, H, W = x4.shape
        (KH, KW), (sh, sw), (dh, dw), (pt, pl, pb, pr) = self.kernel, self.stride, self.dilation, self.pads
        OH = (H + pt + pb - dh * (KH - 1) - 1) // sh + 1
        OW = (W + pl + pr - dw * (KW - 1) - 1) // sw + 1
        y = self._run(lib, x4, OH, OW)
        return y.squeeze(2) if self.conv1d else y

    def _run(self, lib, x4: torch.Tensor, OH: int, OW: int) -> torch.Tensor:
        x4 = x4.contiguous() if x4.dtype == torch.float32 else x4.float().contiguous()
        N, C, H, W = x4.shape
        O = self.weight_shape[0]  # noqa: E741 - output channels, as in the weight layout [O, C, KH, KW]
        out = torch.empty((N, O, max(OH, 0), max(OW, 0)), dtype=torch.float32)
        if out.numel() == 0:
            return out
        (KH, KW), (sh, sw), (dh, dw), (pt, pl, _, _) = self.kernel, self.stride, self.dilation, self.pads
        lib.conv2d(
            x4.data_ptr(),
            out.data_ptr(),
            0 if self.bias is None else self.bias.data_ptr(),
            self.offsets.data_ptr(),
            self.index.data_ptr(),
            self.value.data_ptr(),
            N,
            C,
            H,
            W,
            O,
            OH,
            OW,
            KH,
            KW,
            sh,
            sw,
            pt,
            pl,
            dh,
            dw,
            torch.get_num_threads(),
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


def work_fraction(x: torch.Tensor, layer: EventLayer) -> float:
    """Spike density of x (nonzero share) × the layer's weight density: the share of the dense
    MACs the event kernel does."""
    return float(torch.count_nonzero(x)) / max(1, x.numel()) * layer.weight_density


def conv2d_reference(x, weight, bias=None, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups: int = 1):
    """The dense computation the event kernel reproduces: F.conv2d with ONNX-order pads
    (begin H, begin W, end H, end W)."""
    pt, pl, pb, pr = pads
    return F.conv2d(F.pad(x, [pl, pr, pt, pb]), weight, bias, tuple(stride), 0, tuple(dilation), groups)


def linear_reference(x, weight, bias=None):
    """The dense computation the event kernel reproduces for a linear layer: F.linear."""
    return F.linear(x, weight, bias)
