"""Accuracy and related measurements shared by the CLI, the API and the benchmarks."""
from __future__ import annotations

import numpy as np
import torch


def top1(logits) -> np.ndarray:
    """Predicted class per sample (argmax over the last axis, flattened to [N])."""
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().cpu().numpy()
    logits = np.asarray(logits)
    return logits.reshape(logits.shape[0], -1).argmax(axis=1)


def accuracy(logits, labels) -> float:
    """Top-1 accuracy of ``logits`` [N, classes] against int labels [N]."""
    return float((top1(logits) == np.asarray(labels)).mean())
