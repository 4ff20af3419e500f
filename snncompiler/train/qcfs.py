"""Quantization-aware ANN training for few-timestep conversion: the QCFS activation.

QCFS (quantization clip-floor-shift; Bu et al., ICLR 2022) trains the ANN with the staircase an
IF neuron computes from a constant input in L steps when its membrane starts at θ/2:

    y = λ · clamp(floor(x · L / λ + ½) / L, 0, 1)

with λ learnt per layer (the straight-through estimator passes the gradient through the floor).
The ONNX export is plain arithmetic (Div, Clip, Mul, Add, Floor, Div, Mul), which
``snnc compile`` recognises (:mod:`snncompiler.passes.fake_quant`): each becomes a neuron with
θ = λ, and the SNN comes closest to the ANN at T ≈ L (docs/benchmarks.md, "Quantization-aware
ANNs").

    net = DigitsCNN(); snnc.train.use_qcfs(net, levels=4)   # every nn.ReLU → QCFS(4)
    ...train the ANN as usual, export to ONNX, snnc compile --timesteps 4...
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import OptionError


class _FloorSTE(torch.autograd.Function):
    """floor forward, identity backward (the straight-through estimator)."""

    @staticmethod
    def forward(ctx, x):
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class QCFS(nn.Module):
    """The QCFS activation: ``levels`` uniform steps from 0 to a trainable top λ, rounded half up.

    Args:
        levels: L, the number of steps (QCFS uses 4 on CIFAR, 8 on ImageNet).
        init: λ's initial value. QCFS starts its CIFAR networks at 8.0; after BatchNorm, whose
            outputs are about unit-variance, 2.0 trained better on every digits workload of
            benchmarks/quantization_aware.py, hence the default.
    """

    def __init__(self, levels: int = 4, init: float = 2.0):
        super().__init__()
        if int(levels) != levels or levels < 1:
            raise OptionError("levels", f"expected a positive integer, got {levels!r}")
        if not init > 0:
            raise OptionError("init", f"expected a positive threshold, got {init!r}")
        self.levels = int(levels)
        self.top = nn.Parameter(torch.tensor([float(init)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """λ·clamp(floor(x·L/λ + ½)/L, 0, 1), with the gradient passed straight through the floor."""
        y = torch.clamp(x / self.top, 0, 1)
        return _FloorSTE.apply(y * self.levels + 0.5) / self.levels * self.top

    def extra_repr(self) -> str:
        return f"levels={self.levels}, top={float(self.top):.4g}"


def use_qcfs(model: nn.Module, levels: int = 4, init: float = 2.0) -> nn.Module:
    """Replace every ``nn.ReLU`` and ``nn.ReLU6`` module of ``model`` (in place) by a
    :class:`QCFS` activation; returns the model. ReLUs called as functions (``F.relu``) are
    not modules and stay: write them as modules to train them quantized. Raises if there is none."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (nn.ReLU, nn.ReLU6):
                setattr(parent, name, QCFS(levels, init))
                replaced += 1
    if not replaced:
        raise OptionError("model", f"{type(model).__name__} has no nn.ReLU or nn.ReLU6 module to replace")
    return model
