"""Bit-packed spike trains: 8 neurons per byte.

Layout (``spike_format="packed"``): for spikes of shape [T, *S] with N = prod(S) neurons,
the packed tensor is uint8 [T, ceil(N / 8)]; neuron n of step t is bit (n % 8) of byte
[t, n // 8], least-significant bit first (numpy's ``packbits(bitorder="little")`` over the
flattened neuron axis). Padding bits of the last byte are zero.
"""

from __future__ import annotations

import math

import torch

from ..errors import SnncError


def _bit_weights(device) -> torch.Tensor:
    return torch.tensor([1 << i for i in range(8)], dtype=torch.int32, device=device)


def output_buffers(
    x: torch.Tensor, v0: torch.Tensor, spike_format: str, empty=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uninitialised (spikes, v_final) for a forward kernel: spikes in ``spike_format`` ("value":
    like x; "binary": uint8 like x; "packed": uint8 [T, ceil(N/8)]) and v_final float32 of shape
    x.shape[1:]. x must be contiguous (or a time-broadcast view of a contiguous input) and v0
    float32, of that shape or broadcast (as the C++ and Triton kernels read it).

    ``empty(shape, dtype)``, if given, may supply either buffer (the CPU backend's buffer
    cache); when it returns None, or otherwise, torch allocates them."""
    # Allocation forms chosen by cost from Python (a small layer's kernel takes about a
    # microsecond): empty_like and new_empty(*ints) cost a third of torch.empty(Size, dtype=...).
    state = x.shape[1:]
    packed = spike_format == "packed"
    if packed:
        shape, dtype = (x.shape[0], (math.prod(state) + 7) // 8), torch.uint8
    else:
        shape, dtype = x.shape, (x.dtype if spike_format == "value" else torch.uint8)
    out = empty(shape, dtype) if empty is not None else None
    if out is None:
        if packed:
            out = x.new_empty(shape, dtype=dtype)
        else:  # (empty_like of a time-broadcast view is dense too: it only keeps dense layouts)
            out = torch.empty_like(x) if dtype == x.dtype else torch.empty_like(x, dtype=dtype)
    vout = empty(state, torch.float32) if empty is not None else None
    if vout is None:
        if v0.shape == state:
            vout = torch.empty_like(v0)
        elif state and x.dtype == torch.float32:
            vout = x.new_empty(*state)
        else:
            vout = x.new_empty(state, dtype=torch.float32)
    return out, vout


def time_steps(x: torch.Tensor) -> tuple:
    """How a fused kernel reads x [T, ...]: (T, neurons per step, the buffer it reads, elements
    between its steps). An input repeated over time by a stride-0 time axis (the runtime's first
    layer under direct encoding) is one contiguous step read T times (step 0); any other x is
    made contiguous (step = neurons)."""
    T = x.shape[0]
    n = x.numel() // T if T else math.prod(x.shape[1:])
    if T > 1 and x.dim() > 1 and x.stride(0) == 0:
        return T, n, x[0].contiguous(), 0
    return T, n, x.contiguous(), n


def count_spikes(spikes: torch.Tensor, theta, spike_format: str = "value", shape=None) -> torch.Tensor:
    """Number of spikes with a nonzero value (s = 1 where theta != 0) in a neuron op's output,
    as a 0-d int64 tensor on its device: what ``neuron_multistep(..., return_count=True)``
    returns (the C++ kernel counts while it runs; this is the count for the other backends).

    spikes: [T, ...] in ``spike_format``; theta: float or tensor broadcastable to x[0];
    shape: x's shape, needed only for packed spikes. Value spikes are θ·s: their sum over steps
    divided by θ is a count, exact in float64 and cheaper than testing every element.
    """
    if spike_format == "packed":
        if shape is None:
            raise SnncError("shape: needed to count packed spikes")
        spikes, spike_format = unpack_spikes(spikes, shape), "binary"
    if not (isinstance(theta, torch.Tensor) and theta.dtype == torch.float32 and theta.device == spikes.device):
        theta = torch.as_tensor(theta, dtype=torch.float32, device=spikes.device)
    lead = spikes.dim() - theta.dim()  # the step axis, and leading axes theta is broadcast over
    per_neuron = spikes.sum(dim=tuple(range(lead)), dtype=torch.float64)
    if spike_format == "value":
        # spikes hold θ rounded to their dtype: k of them sum exactly (float64) to k·θ', and
        # k·θ' / θ' is exactly k (a correctly rounded division of an exact multiple)
        emitted = theta if spikes.dtype == torch.float32 else theta.to(spikes.dtype)
        counts = torch.where(emitted != 0, per_neuron / emitted, 0.0)
    else:
        counts = torch.where(theta != 0, per_neuron, 0.0)
    return counts.sum().to(torch.int64)


def pack_spikes(spikes: torch.Tensor) -> torch.Tensor:
    """Pack a [T, ...] spike tensor (nonzero = spike) into uint8 [T, ceil(N/8)]."""
    if spikes.dim() < 1:
        raise SnncError(f"spikes: need a [T, ...] tensor, got a {spikes.dim()}-d tensor")
    T = spikes.shape[0]
    n = math.prod(spikes.shape[1:])
    s = (spikes != 0).reshape(T, n).to(torch.int32)
    s = torch.nn.functional.pad(s, (0, (-n) % 8)).reshape(T, (n + 7) // 8, 8)
    return (s * _bit_weights(s.device)).sum(-1).to(torch.uint8)


def unpack_spikes(packed: torch.Tensor, shape, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Inverse of :func:`pack_spikes`: uint8 [T, ceil(N/8)] -> 0/1 tensor of ``shape`` ([T, ...])."""
    shape = tuple(int(d) for d in shape)
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise SnncError(f"packed: need a 2-d uint8 tensor, got {packed.dtype} of shape {tuple(packed.shape)}")
    n = math.prod(shape[1:]) if shape else 0
    if not shape or packed.shape != (shape[0], (n + 7) // 8):
        raise SnncError(f"shape: {shape} does not match packed spikes of shape {tuple(packed.shape)}")
    bits = (packed.to(torch.int32).unsqueeze(-1) & _bit_weights(packed.device)) != 0
    return bits.reshape(shape[0], packed.shape[1] * 8)[:, :n].reshape(shape).to(dtype)
