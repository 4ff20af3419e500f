"""Run an IR graph with torch, node by node, freeing each activation after its last use."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Mapping

import numpy as np
import torch

from ..errors import SnncError
from ..ir import Graph, Value
from ..ir.graph import BOUND_KEY, DECLARED_KEY, FIXED_BATCH_KEY
from .ops import IMPLEMENTATIONS


def checked_device(device) -> torch.device:
    """torch.device(device), refused with a one-line error if it cannot run here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise SnncError(f"--device: not a device: {device!r} ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SnncError(f"--device: {device!r} requested but no CUDA device is available")
    if dev.type not in ("cpu", "cuda"):
        raise SnncError(f"--device: expected cpu or cuda, got {device!r}")
    return dev


def on_device(graph: Graph, device: torch.device) -> Graph:
    """``graph`` with its parameters on ``device``: the graph itself when they all are already,
    else a copy whose nodes hold copies of the parameters there. The given graph is never
    changed: it is shared (a CompiledModel's, a calibration pass's), and running it on a GPU must
    leave its tensors where they were."""
    if all(p.device == device for node in graph.nodes for p in node.params.values()):
        return graph
    nodes = []
    for node in graph.nodes:
        moved = copy.copy(node)  # attrs, names and source are shared, read-only here
        moved.params = {key: p.to(device) for key, p in node.params.items()}
        nodes.append(moved)
    return dataclasses.replace(graph, nodes=nodes)


def fixed_batch(graph: Graph) -> bool:
    """Whether ``graph`` must be run one sample at a time: pinned at compile time (see
    :data:`FIXED_BATCH_KEY`), or declared at batch 1 with an op that works along axis 0 (found by
    the loader, see :mod:`snncompiler.formats.onnx.batch`), where samples fed together would mix."""
    meta = graph.metadata
    return meta.get(FIXED_BATCH_KEY) == "1" or (bool(meta.get(BOUND_KEY)) and meta.get(DECLARED_KEY) == "1")


@contextlib.contextmanager
def one_thread():
    """Single-sample runs of a fixed-batch graph: tensors that small gain nothing from intra-op
    threads, and on a loaded machine each op's thread barrier cost 30 ms instead of 3 µs."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


class Executor:
    """A callable over a graph: ``Executor(graph)(x)`` returns the graph output(s).

    Accepts numpy arrays or tensors (one per graph input, positionally or by name) of any
    batch size and returns the same kind it was given. ``device`` selects CPU or CUDA.
    """

    def __init__(self, graph: Graph, device: str | torch.device = "cpu"):
        self.device = checked_device(device)
        # parameters are copied to the device: the caller's graph stays where it is
        self.graph = graph = on_device(graph, self.device)
        # Precompute when each value is read for the last time so memory stays bounded.
        self._last_use: dict[str, int] = {}
        for i, node in enumerate(graph.nodes):
            for name in node.inputs:
                self._last_use[name] = i
        self._keep = {v.name for v in graph.outputs}

    def run(self, feeds: Mapping[str, torch.Tensor], observer=None, override=None) -> dict[str, torch.Tensor]:
        """Execute the graph on named input tensors; return all graph outputs by name.

        ``observer(node, outputs)``, if given, sees every node's outputs as they are computed
        (activation statistics and calibration passes hook in here); ``override`` see
        :meth:`interpret`. A graph whose axis 0 is not a free batch axis runs sample by sample
        or refuses the batch size (see :mod:`snncompiler.formats.onnx.batch`).
        """
        batch = int(next(iter(feeds.values())).shape[0]) if feeds else 1
        if fixed_batch(self.graph) and batch > 1:
            with one_thread():
                runs = [
                    self.interpret({k: v[i : i + 1] for k, v in feeds.items()}, observer, override)
                    for i in range(batch)
                ]
            return {name: torch.cat([r[name] for r in runs]) for name in runs[0]}
        self._check_batch(feeds)
        return self.interpret(feeds, observer, override)

    def _check_batch(self, feeds: Mapping[str, torch.Tensor]) -> None:
        """Refuse a batch size at which a graph whose axis 0 is not a free batch axis would give
        other answers than its ONNX semantics (see :mod:`snncompiler.formats.onnx.batch`)."""
        bound = self.graph.metadata.get(BOUND_KEY)
        if not bound or not feeds:
            return
        n = int(next(iter(feeds.values())).shape[0])
        declared = self.graph.metadata.get(DECLARED_KEY, "dynamic")
        if declared == str(n) or (declared == "dynamic" and n == 1):
            return
        source = self.graph.metadata.get("source_file", "model")
        k = 1 if declared == "dynamic" else int(declared)
        runs_at = "batch 1 (its dynamic batch is pinned to 1)" if declared == "dynamic" else f"batch {declared}"
        raise SnncError(
            f"{source}: {bound}; it runs at {runs_at} only, got a batch of {n} "
            f"(feed {k} sample{'s' if k > 1 else ''} per call, e.g. snnc run --batch-size {k})"
        )

    def interpret(self, feeds: Mapping[str, torch.Tensor], observer=None, override=None) -> dict[str, torch.Tensor]:
        """The graph interpreter every mode shares: run the nodes in order on ``feeds``, each
        activation freed after its last use; return the graph outputs by name. No batch checks
        (:meth:`run` makes them): callers that lay out their own batch (shape inference on one
        probe, training on a time-flattened batch) come here.

        ``override(node, inputs)`` may return a node's outputs (a tuple) in place of its core op,
        or None to run the core op: training substitutes trainable neurons and layers this way.
        ``observer(node, outputs)`` sees every node's outputs."""
        env = dict(feeds)
        for i, node in enumerate(self.graph.nodes):
            inputs = [env[n] for n in node.inputs]
            outs = override(node, inputs) if override is not None else None
            if outs is None:
                outs = run_node(node, inputs)
            for name, value in zip(node.outputs, outs):
                env[name] = value
            if observer is not None:
                observer(node, outs)
            for name in node.inputs:
                if self._last_use.get(name) == i and name not in self._keep:
                    env.pop(name, None)
        return {v.name: env[v.name] for v in self.graph.outputs}

    def __call__(self, *args, **kwargs):
        feeds, numpy_in = self._feeds(args, kwargs)
        with torch.no_grad():
            out = self.run(feeds)
        values = [out[v.name] for v in self.graph.outputs]
        if numpy_in:
            values = [to_numpy(v) for v in values]
        return values[0] if len(values) == 1 else values

    def _feeds(self, args, kwargs) -> tuple[dict[str, torch.Tensor], bool]:
        inputs = self.graph.inputs
        if len(args) > len(inputs):
            raise SnncError(f"model takes {len(inputs)} input(s), got {len(args)}")
        given = {v.name: a for v, a in zip(inputs, args)}
        given.update(kwargs)
        feeds, numpy_in = {}, False
        for v in inputs:
            if v.name not in given:
                raise SnncError(f"missing model input '{v.name}'")
            x = given[v.name]
            if not isinstance(x, (np.ndarray, torch.Tensor)):  # nested lists: array-likes, as CompiledModel.run takes
                x = np.asarray(x, dtype=np.float32)
            if isinstance(x, np.ndarray):
                numpy_in = True
                x = torch.from_numpy(np.ascontiguousarray(x))
            check_input(v, x)
            declared = getattr(torch, v.dtype, None)
            if isinstance(declared, torch.dtype) and declared.is_floating_point and x.dtype != declared:
                x = x.to(declared)  # float64 data into a float32 graph: converted, as CompiledModel.run does
            feeds[v.name] = x.to(self.device)
        return feeds, numpy_in


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array; bfloat16 and float8 values (no numpy dtype of their own)
    come back bit-exact in the ml_dtypes types that onnx's numpy_helper uses."""
    t = t.detach().cpu()
    try:
        return t.numpy()
    except TypeError:
        import ml_dtypes

        name = str(t.dtype).replace("torch.", "")
        if not hasattr(ml_dtypes, name) or t.element_size() not in (1, 2):
            raise SnncError(f"an output of type {name} has no numpy equivalent") from None
        bits = t.view(torch.uint8 if t.element_size() == 1 else torch.int16).numpy()
        return bits.view(getattr(ml_dtypes, name))


def check_input(value: Value, x: torch.Tensor, label: str = "input", *, sequence: bool = False) -> None:
    """Raise a one-line error if ``x`` does not fit graph input ``value`` (dtype, rank, per-sample
    shape); with ``sequence`` x carries a time axis after the batch axis: [N, T, ...]."""
    if not torch.is_floating_point(x):
        raise SnncError(f"{label} '{value.name}': expected float32 data, got {str(x.dtype).replace('torch.', '')}")
    if value.shape is not None:
        want = tuple(value.shape[1:])
        lead = 2 if sequence else 1
        if x.dim() != len(want) + lead or tuple(x.shape[lead:]) != want:
            raise SnncError(
                f"{label} '{value.name}': expected shape [N, {'T, ' if sequence else ''}"
                f"{', '.join(map(str, want))}], got {list(x.shape)}"
            )


def run_node(node, inputs: list[torch.Tensor]):
    """Run one node's core op; a failure (a bad parameter shape in a damaged file, say) is a
    one-line error naming the node and its input shapes."""
    try:
        return IMPLEMENTATIONS[node.op](node, *inputs)
    except SnncError:
        raise
    except Exception as exc:
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        raise SnncError(
            f"{node.where}: {node.op} failed on inputs of shape {shapes}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc


def run_graph(graph: Graph, *inputs, device: str = "cpu"):
    """Convenience: run ``graph`` once on ``inputs`` (numpy or torch)."""
    return Executor(graph, device)(*inputs)


def infer_shapes(graph: Graph) -> Graph:
    """Fill every value's static shape, and every computed value's dtype (a mask is bool, a cast
    to int64 is int64), by running one zero sample through the graph."""
    from ..limits import check_array_bytes

    source = graph.metadata.get("source_file", "model")
    for v in graph.inputs:
        if v.shape is not None:  # a damaged file can declare any dims: check before allocating the probe
            check_array_bytes(
                4 * math.prod(int(d) for d in v.shape), f"{source}: input '{v.name}' of shape {tuple(v.shape)}"
            )
    feeds = {v.name: torch.zeros(v.shape, dtype=torch.float32) for v in graph.inputs if v.shape is not None}
    env_shapes: dict[str, tuple[int, ...]] = {k: tuple(t.shape) for k, t in feeds.items()}
    computed_dtypes: dict[str, str] = {}  # of node outputs (the inputs keep their declared type)

    def record(node, outs):
        env_shapes.update((name, tuple(t.shape)) for name, t in zip(node.outputs, outs))
        computed_dtypes.update((name, str(t.dtype).removeprefix("torch.")) for name, t in zip(node.outputs, outs))

    with torch.no_grad():
        Executor(graph).interpret(feeds, observer=record)
    for name, shape in env_shapes.items():
        graph.values.setdefault(name, Value(name)).shape = shape
    for name, dtype in computed_dtypes.items():
        graph.values[name].dtype = dtype
    return graph


def batch_independent(graph: Graph, x: torch.Tensor) -> bool:
    """Whether ``graph`` gives each sample of a batch the answer it gives that sample alone, on
    two samples of ``x`` (a copy of the first, scaled, if there is one). A graph exported with a
    fixed batch of 1 often is not: constants traced at batch 1 (a class token, a reshape that
    moves the batch into another axis) fail or mix samples at batch 2.

    Outputs that do not depend on the input (a constant graph output) are left out: they are the
    same at every batch size. Raises a one-line error when the graph does not even run on one
    sample, or when one sample gives an output whose axis 0 is not 1 (then axis 0 is not a batch
    axis at all, and running sample by sample would stack several rows per sample)."""
    x = x[:2] if len(x) >= 2 else torch.cat([x[:1], 0.5 * x[:1]])
    where = graph.metadata.get("source_file", "model")
    varying = input_dependent(graph) & {v.name for v in graph.outputs}
    probe = {k: v for k, v in graph.metadata.items() if k != FIXED_BATCH_KEY}
    plain = Graph(graph.inputs, graph.outputs, graph.nodes, graph.values, probe, graph.removed, graph.name)
    ex = Executor(plain)
    name = graph.inputs[0].name
    with torch.no_grad():
        try:
            singles = [ex.run({name: x[b : b + 1]}) for b in range(2)]
        except SnncError as exc:
            raise SnncError(f"{where}: the graph does not run on one sample: {exc}") from exc
        for key in sorted(varying):
            shape = tuple(singles[0][key].shape)
            if not shape or shape[0] != 1:
                raise SnncError(
                    f"{where}: axis 0 is not a batch axis: one sample gives output '{key}' of shape {list(shape)}; "
                    "re-export the model with a dynamic batch axis (or at batch 1)"
                )
        try:
            both = ex.run({name: x})
        except SnncError:
            return False
    for key, value in both.items():
        if key not in varying:
            continue
        alone = torch.cat([s[key] for s in singles])
        if value.shape != alone.shape:
            return False
        if value.is_floating_point():
            tol = 1e-4 * max(1.0, float(alone.abs().max()) if alone.numel() else 1.0)
            if not bool(((value - alone).abs() <= tol).all()):
                return False
        elif not torch.equal(value, alone):
            return False
    return True


def input_dependent(graph: Graph) -> set[str]:
    """The values of ``graph`` computed from its inputs (the others are constants)."""
    reached = {v.name for v in graph.inputs}
    for node in graph.nodes:
        if any(i in reached for i in node.inputs):
            reached.update(node.outputs)
    return reached
