"""torch ``nn.Module`` → ONNX: the one exporter the library, apps and benchmarks share."""

from __future__ import annotations

import inspect
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from ...fileio import write_bytes


def export_onnx_bytes(model: nn.Module, sample_shape, *, opset: int = 17, dynamic_batch: bool = True) -> bytes:
    """A torch model exported to ONNX in memory (input 'x', output 'logits', dynamic batch axis)
    through torch's TorchScript-based exporter, in eval mode (the module's own mode is restored);
    an export failure is a one-line error."""
    from ...errors import SnncError

    dummy = torch.zeros((1,) + tuple(int(d) for d in sample_shape))
    kwargs = dict(input_names=["x"], output_names=["logits"], opset_version=opset)
    if dynamic_batch:
        kwargs["dynamic_axes"] = {"x": {0: "N"}, "logits": {0: "N"}}
    # torch.onnx.export's `dynamo` switch (True by default from torch 2.9) is newer than the
    # torch>=2.4 this package supports; without the switch the TorchScript exporter is the only one
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    buffer = io.BytesIO()
    was_training = model.training
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (dummy,), buffer, **kwargs)
    except Exception as exc:  # an op the exporter cannot trace, a shape the module refuses, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SnncError(
            f"{type(model).__name__}: torch's ONNX exporter failed on an input of shape {list(dummy.shape)}: {first}"
        ) from exc
    finally:
        model.train(was_training)
    return buffer.getvalue()


def export_onnx(model: nn.Module, sample_shape, path, *, opset: int = 17, dynamic_batch: bool = True) -> Path:
    """Export a torch model to ONNX with input 'x' and output 'logits' (dynamic batch axis)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = export_onnx_bytes(model, sample_shape, opset=opset, dynamic_batch=dynamic_batch)
    model.eval()  # as before: the exported module is left in eval mode
    write_bytes(path, data)  # exported in memory, then written atomically like every other output
    return path
