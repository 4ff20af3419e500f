"""snncompiler: compile trained ANNs (ONNX) into spiking neural networks.

    import snncompiler as snnc
    model = snnc.load("model.onnx")      # a callable over numpy arrays or tensors
    y = model(x)
"""
from __future__ import annotations

from .errors import SnncError
from .ir import Graph, Node, Value

__version__ = "0.1.0"


def load_graph(path, *, lenient: bool = False) -> Graph:
    """Read an ONNX model into the IR (see :func:`snncompiler.frontend.load_graph`)."""
    from .frontend import load_graph as _load

    return _load(path, lenient=lenient)


def load(path, *, device: str = "cpu"):
    """Load an ONNX model and return a callable running it with snnc's torch runtime.

    The callable takes numpy arrays or tensors of any batch size and returns the same kind.
    """
    from .runtime import Executor

    return Executor(load_graph(path), device)


__all__ = ["load", "load_graph", "Graph", "Node", "Value", "SnncError", "__version__"]
