"""The C++ CPU backend: loads the pybind11 extension built from csrc/lif_cpu.cpp.

The extension receives the addresses of contiguous buffers (``data_ptr()``: zero-copy, and no
torch headers on the C++ side); this module checks dtype/layout, allocates the outputs and
passes the sizes. If the extension
was not built (no compiler at install time), :func:`load` returns None and the op falls back
to the PyTorch reference with a one-time warning.
"""
from __future__ import annotations

import functools
import math

import torch

FORMATS = {"value": 0, "binary": 1, "packed": 2}


@functools.lru_cache(maxsize=None)
def load():
    """The compiled ``snncompiler.kernels._lif_cpu`` module, or None if it is not built."""
    try:
        from . import _lif_cpu
    except ImportError:
        return None
    return _lif_cpu


def available() -> bool:
    """Whether the C++ kernel can run."""
    return load() is not None


def _addr(t: torch.Tensor | None, dtype=torch.float32) -> int:
    """Address of a contiguous CPU tensor for the extension (0 for None)."""
    if t is None:
        return 0
    if t.dtype != dtype or not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError(f"internal: C++ kernel needs contiguous {dtype} CPU buffers, got {t.dtype} {t.device}")
    return t.data_ptr()


def forward(x, v0, theta, inner, decay, hard, v_reset, spike_format):
    """Run the fused forward. x: [T, ...] float32 contiguous; v0: float32 [N] contiguous;
    theta: float32 [period] with neuron n using theta[(n // inner) % period]."""
    T, n = x.shape[0], math.prod(x.shape[1:])
    if spike_format == "packed":
        out = torch.empty((T, (n + 7) // 8), dtype=torch.uint8)
    else:
        out = torch.empty(x.shape, dtype=torch.float32 if spike_format == "value" else torch.uint8)
    vout = torch.empty(x.shape[1:], dtype=torch.float32)
    assert v0.numel() == n and theta.numel() >= 1
    load().forward(_addr(x), _addr(v0), _addr(theta), inner, theta.numel(), _addr(out, out.dtype), _addr(vout),
                   T, n, decay, hard, v_reset, FORMATS[spike_format], torch.get_num_threads())
    return out, vout


def backward(grad_spikes, grad_v, x, v0, theta, inner, decay, hard, v_reset, surrogate_id, alpha,
             detach_reset, theta_grad):
    """Surrogate-gradient backward (recomputes the membrane). Returns (grad_x, grad_v0 [N],
    grad_theta [N] or None), the last two per neuron, before any broadcast reduction."""
    T, n = x.shape[0], math.prod(x.shape[1:])
    gx = torch.empty(x.shape, dtype=torch.float32)
    gv0 = torch.empty(n, dtype=torch.float32)
    gth = torch.empty(n, dtype=torch.float32) if theta_grad else None
    assert v0.numel() == n and (grad_spikes is None or grad_spikes.shape == x.shape)
    assert grad_v is None or grad_v.numel() == n
    load().backward(_addr(x), _addr(v0), _addr(theta), inner, theta.numel(), _addr(grad_spikes), _addr(grad_v),
                    _addr(gx), _addr(gv0), _addr(gth), T, n, decay, hard, v_reset, surrogate_id, alpha,
                    detach_reset, torch.get_num_threads())
    return gx, gv0, gth
