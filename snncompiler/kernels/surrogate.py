"""Surrogate gradients for the spike nonlinearity s = H(h - theta).

The forward pass is always the exact Heaviside step (s = 1 iff h >= theta); only the
derivative ds/du at u = h - theta is replaced. Each surrogate has one shape parameter
``alpha`` (its sharpness; the support or width scales as 1/alpha):

=========  ==============================================  =========  ========================
name       ds/du                                           default α  SpikingJelly equivalent
=========  ==============================================  =========  ========================
triangle   max(0, α - α²|u|)   (width 1/α on each side)    1.0        PiecewiseQuadratic(α)
atan       (α/2) / (1 + (π/2 · α · u)²)                    2.0        ATan(α)
sigmoid    α · σ(αu) · (1 - σ(αu))                         4.0        Sigmoid(α)
=========  ==============================================  =========  ========================

The integer ids are what the C++, Triton and CUDA kernels receive.
"""

from __future__ import annotations

import math

import torch

from ..errors import SnncError

#: name -> (kernel id, default alpha)
SURROGATES: dict[str, tuple[int, float]] = {"triangle": (0, 1.0), "atan": (1, 2.0), "sigmoid": (2, 4.0)}


def resolve(surrogate: str, alpha: float | None) -> tuple[int, float]:
    """Validate a surrogate name and alpha; return (kernel id, alpha with the default filled in)."""
    if surrogate not in SURROGATES:
        raise SnncError(f"surrogate: unknown surrogate {surrogate!r} (expected one of {sorted(SURROGATES)})")
    sid, default = SURROGATES[surrogate]
    alpha = default if alpha is None else float(alpha)
    if not (math.isfinite(alpha) and alpha > 0):
        raise SnncError(f"alpha: must be a positive finite number, got {alpha}")
    return sid, alpha


def surrogate_grad(u: torch.Tensor, surrogate: str, alpha: float) -> torch.Tensor:
    """ds/du of the named surrogate at u = h - theta (float32 tensor in, same shape out)."""
    if surrogate == "triangle":
        return (alpha - alpha * alpha * u.abs()).clamp_min(0.0)
    if surrogate == "atan":
        z = (math.pi / 2 * alpha) * u
        return (alpha / 2) / (1 + z * z)
    if surrogate == "sigmoid":
        sg = torch.sigmoid(alpha * u)
        return alpha * sg * (1 - sg)
    raise SnncError(f"surrogate: unknown surrogate {surrogate!r} (expected one of {sorted(SURROGATES)})")


class Heaviside(torch.autograd.Function):
    """s = (u >= 0) as float32 in forward; surrogate derivative in backward."""

    @staticmethod
    def forward(ctx, u, surrogate: str, alpha: float):
        ctx.save_for_backward(u)
        ctx.surrogate, ctx.alpha = surrogate, alpha
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        return grad * surrogate_grad(u, ctx.surrogate, ctx.alpha), None, None


def heaviside(u: torch.Tensor, surrogate: str = "atan", alpha: float | None = None) -> torch.Tensor:
    """Differentiable spike function: exact step forward, surrogate gradient backward."""
    _, alpha = resolve(surrogate, alpha)
    return Heaviside.apply(u, surrogate, alpha)
