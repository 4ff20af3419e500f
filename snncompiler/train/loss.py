"""Losses over the output at every step, [T, B, C] (time first, as the runtime and run_steps give it).

* :func:`tet_loss`: TET (Deng et al., ICLR 2022), cross-entropy at every step plus a pull of
  every output towards ``means``, mixed convexly: (1 − λ)·(1/T)·Σ_t CE(O(t), y) + λ·MSE(O, φ).
  This is the authors' code (``functions.py::TET_loss``) and SpikingJelly's ``TETLoss``,
  defaults λ = 1e-3, φ = 1.0; the tests hold it to SpikingJelly's.
* :func:`sdt_loss`: standard direct training, cross-entropy of the output averaged over time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import SnncError


def _check(outputs: torch.Tensor, labels: torch.Tensor) -> None:
    if outputs.dim() < 3:
        raise SnncError(f"outputs: expected [T, B, C], got shape {list(outputs.shape)}")
    if labels.shape != outputs.shape[1:2]:
        raise SnncError(
            f"labels: expected shape [{outputs.shape[1]}] to match outputs [T, B, C], got {list(labels.shape)}"
        )


def tet_loss(outputs: torch.Tensor, labels: torch.Tensor, *, lamb: float = 1e-3, means: float = 1.0) -> torch.Tensor:
    """TET loss of outputs [T, B, C] (pre-softmax, every step) against class labels [B]."""
    _check(outputs, labels)
    if not 0.0 <= lamb <= 1.0:
        raise SnncError(f"lamb: must lie in [0, 1] (the loss is (1 - λ)·CE + λ·MSE), got {lamb}")
    steps = outputs.shape[0]
    # one CE over all T·B rows is the mean of the per-step means: every step has B rows
    ce = F.cross_entropy(outputs.flatten(0, 1), labels.repeat(steps))
    if lamb == 0.0:
        return ce
    return (1.0 - lamb) * ce + lamb * F.mse_loss(outputs, torch.full_like(outputs, means))


def sdt_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Standard direct training: cross-entropy of the time-mean output [B, C] against labels [B]."""
    _check(outputs, labels)
    return F.cross_entropy(outputs.mean(0), labels)


LOSSES = {"tet": tet_loss, "sdt": sdt_loss}
