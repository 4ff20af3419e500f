"""IR → executable torch code. ANN mode here; the spiking runtime builds on the same core ops."""

from .executor import Executor, infer_shapes, run_graph
from .ops import IMPLEMENTATIONS

__all__ = ["Executor", "run_graph", "infer_shapes", "IMPLEMENTATIONS"]
