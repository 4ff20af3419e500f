"""Learnable-threshold weight masks (dynamic sparse training) on a small conv net, and the
plain network they export to.

A masked layer keeps W and one threshold t per output filter; its effective weight is
W ⊙ S(|W| − t), with S the unit step. S has no gradient, so backward uses the long-tailed
straight-through estimate of Liu et al. (ICLR 2020, "Dynamic Sparse Training"):
S'(u) = 2 − 4|u| for |u| ≤ 0.4, 0.4 for 0.4 < |u| ≤ 1, 0 beyond. Gradients reach both W and t;
the regulariser α·Σ exp(−t) pushes thresholds up (sparser) against the task loss.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from snncompiler.data import Dataset
from snncompiler.workloads import train_classifier


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return (u > 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        a = u.abs()
        slope = torch.where(a <= 0.4, 2 - 4 * a, torch.where(a <= 1.0, torch.full_like(a, 0.4), torch.zeros_like(a)))
        return grad * slope


class MaskedConv2d(nn.Conv2d):
    """A Conv2d whose weights are masked by a learnable threshold per output filter."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.threshold = nn.Parameter(torch.zeros(self.out_channels))

    def mask(self) -> torch.Tensor:
        """The binary mask S(|W| − t) (differentiable through the straight-through estimate)."""
        return _Step.apply(self.weight.abs() - self.threshold.view(-1, 1, 1, 1))

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def density(self) -> float:
        """Fraction of weights the mask keeps."""
        with torch.no_grad():
            return float(self.mask().mean())


def sparse_cnn(width: int = 32, classes: int = 10, masked: bool = True) -> nn.Sequential:
    """Three conv-BN-ReLU blocks on 8×8 digits, downsampling by stride-2 convolutions rather than
    pooling, so every conv after the first reads spikes directly (an average pool would hand it
    fractional values), then a dense linear classifier."""
    conv = MaskedConv2d if masked else nn.Conv2d
    return nn.Sequential(
        conv(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        conv(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        conv(2 * width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.Flatten(), nn.Linear(2 * width * 4, classes),
    )


def train_sparse(model: nn.Sequential, train: Dataset, *, epochs: int, alpha: float, threshold_lr: float,
                 seed: int = 0) -> nn.Sequential:
    """Adam on weights (cosine schedule), SGD on thresholds, cross-entropy + α·Σ exp(−t).

    A layer whose mask keeps ≤ 1 % of its weights has its thresholds reset to 0, as DST's code
    does, so a layer never collapses to nothing."""
    thresholds = [p for n, p in model.named_parameters() if n.endswith("threshold")]
    if not thresholds:
        return train_classifier(model, train, epochs=epochs, seed=seed)
    others = [p for n, p in model.named_parameters() if not n.endswith("threshold")]
    opt_t = torch.optim.SGD(thresholds, lr=threshold_lr)
    masked = [m for m in model.modules() if isinstance(m, MaskedConv2d)]

    def step_thresholds():
        opt_t.step()
        opt_t.zero_grad()
        for m in masked:
            if m.density() <= 0.01:
                m.threshold.data.zero_()

    return train_classifier(model, train, epochs=epochs, seed=seed, parameters=others,
                            penalty=lambda: alpha * sum(torch.exp(-t).sum() for t in thresholds),
                            after_step=step_thresholds)


def export_form(model: nn.Sequential) -> nn.Sequential:
    """The same function as a plain network: each masked conv becomes an nn.Conv2d holding
    W ⊙ mask, so the ONNX file carries the zeros (BN folding keeps them: it scales whole filters)."""
    layers = []
    for m in model:
        if isinstance(m, MaskedConv2d):
            conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                             m.groups, bias=m.bias is not None)
            with torch.no_grad():
                conv.weight.copy_(m.weight * m.mask())
                if m.bias is not None:
                    conv.bias.copy_(m.bias)
            layers.append(conv)
        else:
            layers.append(m)
    return nn.Sequential(*layers).eval()
