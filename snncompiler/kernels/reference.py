"""The plain-PyTorch oracle for the multi-step IF/LIF neuron.

Every backend (C++, Triton, CUDA) must reproduce :func:`neuron_multistep_reference` exactly:
identical spikes and a final membrane within 1e-6 in float32. Per step t, in float32::

    h    = v + x[t]                 if decay == 1   (IF; the multiply is skipped everywhere)
    h    = (decay * v) + x[t]       otherwise       (LIF; two roundings, never a fused FMA)
    s    = h >= theta
    v    = h - theta * s            reset="soft"  (reset by subtraction)
    v    = v_reset if s else h      reset="hard"
    out  = theta * s                spike_format="value" (in x's dtype)

``decay``, ``theta`` and ``v_reset`` are rounded to float32 once, before the loop, so that
every backend sees the same constants.

Gradients: this loop is differentiable through :class:`~.surrogate.Heaviside`; autograd
through it is the gradient oracle. :func:`neuron_multistep_backward_reference` is the
hand-derived backward (the same formulas the kernels implement), used by the
``"reference"`` backend of the registered op.
"""

from __future__ import annotations

import numpy as np
import torch

from .packing import pack_spikes
from .surrogate import heaviside, resolve, surrogate_grad


def f32(value: float) -> float:
    """Round a Python float to the nearest float32 (what every kernel computes with)."""
    if value == 1.0 or value == 0.0:  # IF's decay and the usual v_reset: exact, and numpy is slow
        return float(value)
    return float(np.float32(value))


def _as_f32_tensor(value, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=like.device, dtype=torch.float32)
    return torch.tensor(f32(value), dtype=torch.float32, device=like.device)


def neuron_multistep_reference(
    x,
    v0,
    theta,
    *,
    decay=1.0,
    reset="soft",
    v_reset=0.0,
    spike_format="value",
    surrogate="atan",
    alpha=None,
    detach_reset=False,
):
    """Run T steps of the IF/LIF neuron with a Python loop over plain torch ops.

    x: [T, ...] float tensor; v0, theta: float or tensor broadcastable to x[0].
    Returns (spikes, v_final) with spikes in ``spike_format`` ("value": theta*s in x's dtype,
    "binary": uint8 0/1, "packed": see :func:`~.packing.pack_spikes`) and v_final float32
    of shape x.shape[1:]. Differentiable w.r.t. x, v0 and theta (value format) through the
    surrogate gradient.
    """
    _, alpha = resolve(surrogate, alpha)
    theta = _as_f32_tensor(theta, x)
    v = _as_f32_tensor(v0, x).expand(x.shape[1:])
    d, vr = f32(decay), f32(v_reset)
    spikes = []
    for t in range(x.shape[0]):
        h = v + x[t].float() if d == 1.0 else v * d + x[t].float()
        s = heaviside(h - theta, surrogate, alpha)
        spikes.append(s)
        sr = s.detach() if detach_reset else s
        v = h - theta * sr if reset == "soft" else sr * vr + (1.0 - sr) * h
    s = torch.stack(spikes) if spikes else x.new_zeros(x.shape, dtype=torch.float32)
    if spike_format == "value":
        out = (theta * s).to(x.dtype)
    elif spike_format == "binary":
        out = s.detach().to(torch.uint8)
    else:
        out = pack_spikes(s.detach())
    v = v.expand(x.shape[1:]).contiguous()
    return out, (v.clone() if x.shape[0] == 0 else v)  # never alias the caller's v0


def pre_reset_membranes(x, v0, theta, d=1.0, hard=False, vr=0.0) -> list[torch.Tensor]:
    """The membrane h[t] of each of the T steps of x [T, ...] before its spike test and reset
    (float32, without autograd): v0 and theta tensors broadcasting to x[0], d the decay, hard
    and vr the reset. Step t spikes where h[t] >= theta. The backward below recomputes the
    forward from it, and the offset-spike correction (runtime/offset_spikes.py) reads it."""
    v = v0.to(torch.float32).expand(x.shape[1:])
    hs = []
    for t in range(x.shape[0]):
        h = v + x[t].float() if d == 1.0 else v * d + x[t].float()
        s = h >= theta
        hs.append(h)
        v = torch.where(s, torch.full_like(h, vr), h) if hard else torch.where(s, h - theta, h)
    return hs


def neuron_multistep_backward_reference(
    grad_spikes, grad_v, x, v0, theta, *, decay, hard, v_reset, surrogate, alpha, detach_reset
):
    """Hand-derived backward of the value-format op, recomputing h from (x, v0, theta).

    grad_spikes ([T, ...] or None) and grad_v (x.shape[1:] or None) are the incoming
    gradients. Returns (grad_x in x's dtype, grad_v0 and grad_theta as float32 of shape
    x.shape[1:], not yet reduced to the shapes of v0 and theta).
    """
    d, vr = f32(decay), f32(v_reset)
    th = theta.to(torch.float32).expand(x.shape[1:])
    hs = pre_reset_membranes(x, v0, th, d, hard, vr)
    shape = x.shape[1:]
    g = grad_v.float().expand(shape) if grad_v is not None else torch.zeros(shape, device=x.device)
    gth = torch.zeros(shape, device=x.device)
    gx = torch.empty_like(x)
    for t in range(x.shape[0] - 1, -1, -1):
        h = hs[t]
        sg = surrogate_grad(h - th, surrogate, alpha)
        s = (h >= th).float()
        if hard:
            dvdh = 1.0 - s if detach_reset else (1.0 - s) + (vr - h) * sg
            dvdth = torch.zeros_like(h) if detach_reset else -(vr - h) * sg
        else:
            dvdh = torch.ones_like(h) if detach_reset else 1.0 - th * sg
            dvdth = -s if detach_reset else th * sg - s
        gh = g * dvdh
        gth = gth + g * dvdth
        if grad_spikes is not None:
            gy = grad_spikes[t].float()
            gh = gh + gy * th * sg
            gth = gth + gy * (s - th * sg)
        gx[t] = gh.to(x.dtype)
        g = gh if d == 1.0 else gh * d
    return gx, g.contiguous(), gth
