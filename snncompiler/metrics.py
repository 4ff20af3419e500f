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


def correct(logits, labels) -> int:
    """How many of ``logits`` [N, classes] pick their int label [N]; labels that are not class
    indices of the logits are an error (a silent 0% would hide a mislabelled file)."""
    from .errors import SnncError

    labels = np.asarray(labels)
    if labels.shape != (len(logits),):
        raise SnncError(f"'y': expected {len(logits)} labels (one per sample), got shape {list(labels.shape)}")
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        raise SnncError("'y': labels must be integer class indices, got fractional values")
    classes = int(np.prod(np.shape(logits)[1:])) if np.ndim(logits) > 1 else 0
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise SnncError(f"'y': labels must be class indices 0..{classes - 1} of the model's {classes} outputs, "
                        f"got values from {labels.min()} to {labels.max()}")
    return int((top1(logits) == labels).sum())


def accuracy(logits, labels) -> float:
    """Top-1 accuracy of ``logits`` [N, classes] against int labels [N] (checked as in :func:`correct`)."""
    n = len(np.asarray(labels))
    return correct(logits, labels) / n if n else float("nan")
