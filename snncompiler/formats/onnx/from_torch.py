"""torch ``nn.Module`` → ONNX: the one exporter the library, apps and benchmarks share."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import nn

from ...fileio import write_bytes


def export_onnx(model: nn.Module, sample_shape, path, *, opset: int = 17, dynamic_batch: bool = True) -> Path:
    """Export a torch model to ONNX with input 'x' and output 'logits' (dynamic batch axis)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros((1,) + tuple(sample_shape))
    kwargs = dict(input_names=["x"], output_names=["logits"], opset_version=opset)
    if dynamic_batch:
        kwargs["dynamic_axes"] = {"x": {0: "N"}, "logits": {0: "N"}}
    buffer = io.BytesIO()  # exported in memory, then written atomically like every other output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (dummy,), buffer, dynamo=False, **kwargs)
    write_bytes(path, buffer.getvalue())
    return path
