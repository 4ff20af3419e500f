"""The intermediate representation every stage shares: :class:`Graph`, :class:`Node`, :class:`Value`.

A graph is a list of nodes in topological order over a small closed set of *core ops*
(:data:`snncompiler.ir.ops.OPS`). Activations are named values; a value's shape is
static, as inferred with the batch axis (axis 0) pinned, and every op that could run on a
different batch size treats axis 0 as the batch. Parameters (weights, constants) are
tensors owned by the node that uses them, so passes can rewrite a node without touching
a global table. Every node remembers the ONNX node it came from, so any message can name it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where tensors are used: `snnc --help` must not pay for it
    import torch

from ..errors import SnncError
from .ops import OPS, is_float_dtype

# ---- graph metadata keys that the loader, compiler and runtime share --------------------------
#: The graph runs only at this batch size (its exporter hard-coded the batch axis, or an op works
#: across it); executors and the spiking runtime then run one sample at a time.
FIXED_BATCH_KEY = "snncompiler.fixed_batch"
#: Why axis 0 is not a free batch axis (absent when it is); see :mod:`snncompiler.formats.onnx.batch`.
BOUND_KEY = "snncompiler.batch_bound_by"
#: The declared batch size of the input model, or ``dynamic``.
DECLARED_KEY = "snncompiler.batch_declared"


class IRError(SnncError):
    """A graph that breaks an IR invariant; the message names the offending node."""


@dataclass
class Value:
    """A named activation tensor: static shape (axis 0 = batch) and dtype."""

    name: str
    shape: tuple[int, ...] | None = None
    dtype: str = "float32"

    def __str__(self) -> str:
        dims = "?" if self.shape is None else "x".join(str(d) for d in self.shape)
        return f"%{self.name}[{dims}]"


@dataclass
class Node:
    """One core op: ``outputs = op(inputs; attrs, params)``.

    ``source`` is the ONNX node it was lowered from, formatted for messages
    (``Conv 'conv1'``); passes that create nodes set it to the node they replace.
    """

    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    source: str = ""

    @property
    def where(self) -> str:
        """How messages refer to this node: its name and the ONNX node it came from."""
        if not self.source or self.source == self.name:
            return f"node '{self.name}'"
        fmt = "" if self.source.startswith("NIR ") else "ONNX "  # NIR-read nodes carry their format
        return f"node '{self.name}' (from {fmt}{self.source})"

    @property
    def source_op(self) -> str:
        """The op type of the source node (``Conv``, ``Conv2d``, ...), or the core op."""
        parts = self.source.split(" ") if self.source else []
        if parts and parts[0] == "NIR":
            parts = parts[1:]
        return parts[0] if parts else self.op

    def param_count(self) -> int:
        """Number of trainable/stored scalars owned by this node."""
        return int(sum(p.numel() for p in self.params.values()))

    def __str__(self) -> str:
        attrs = ", ".join(f"{k}={_short(v)}" for k, v in self.attrs.items())
        params = ", ".join(f"{k}:{'x'.join(map(str, p.shape)) or 'scalar'}" for k, p in self.params.items())
        extra = "; ".join(s for s in (attrs, params) if s)
        ins = ", ".join(f"%{i}" for i in self.inputs)
        outs = ", ".join(f"%{o}" for o in self.outputs)
        return f"{outs} = {self.op}({ins}{'; ' + extra if extra else ''})  # {self.name}"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return f"[{', '.join(map(str, value[:8]))}, ...]"
    return str(value)


@dataclass
class Graph:
    """A model: graph inputs and outputs, nodes in topological order, value shapes, metadata.

    ``removed`` lists ONNX nodes the frontend dropped or folded (``(name, op_type, why)``),
    so ``snnc inspect`` can still account for every node of the source file.
    """

    inputs: list[Value]
    outputs: list[Value]
    nodes: list[Node]
    values: dict[str, Value] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    removed: list[tuple[str, str, str]] = field(default_factory=list)
    name: str = "graph"

    # ---- queries -------------------------------------------------------------------
    def producer(self, value: str) -> Node | None:
        """The node that writes ``value`` (None for graph inputs)."""
        for node in self.nodes:
            if value in node.outputs:
                return node
        return None

    def consumers(self, value: str) -> list[Node]:
        """Nodes that read ``value``, in order."""
        return [n for n in self.nodes if value in n.inputs]

    def node(self, name: str) -> Node:
        """The node called ``name``."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def shape(self, value: str) -> tuple[int, ...] | None:
        """Static shape of a value, or None if unknown."""
        v = self.values.get(value)
        return None if v is None else v.shape

    def dtype(self, value: str) -> str:
        """A value's torch dtype name as the runtime computes it (float32 unless recorded)."""
        v = self.values.get(value)
        return "float32" if v is None else v.dtype

    def is_float(self, value: str) -> bool:
        """Whether a value is a float (a rate that spikes can carry), not a mask or an index."""
        return is_float_dtype(self.dtype(value))

    def find(self, op: str) -> list[Node]:
        """All nodes of one core op."""
        return [n for n in self.nodes if n.op == op]

    def param_count(self) -> int:
        """Total number of parameters owned by all nodes."""
        return sum(n.param_count() for n in self.nodes)

    # ---- editing -------------------------------------------------------------------
    def copy(self) -> Graph:
        """A deep copy: passes mutate copies, never their input."""
        return copy.deepcopy(self)

    def replace_uses(self, old: str, new: str, after: Node | None = None) -> None:
        """Make every reader of ``old`` (optionally only those after ``after``) read ``new``."""
        start = 0 if after is None else self.nodes.index(after) + 1
        for n in self.nodes[start:]:
            n.inputs = [new if i == old else i for i in n.inputs]
        for out in self.outputs:
            if out.name == old:
                out.name = new

    def unique_name(self, base: str) -> str:
        """A value/node name not yet used in this graph."""
        taken = set(self.values) | {n.name for n in self.nodes}
        if base not in taken:
            return base
        k = 1
        while f"{base}_{k}" in taken:
            k += 1
        return f"{base}_{k}"

    # ---- checks --------------------------------------------------------------------
    def validate(self, known_ops: Iterable[str] | None = None) -> Graph:
        """Check the IR invariants; raise :class:`IRError` naming the first offending node.

        Invariants: nodes are topologically ordered (every input is defined earlier),
        each value is written once, node names are unique, ops are core ops, and every
        graph output is defined.
        """
        if known_ops is None:
            known_ops = OPS
        known = set(known_ops)
        defined = {v.name for v in self.inputs}
        names: set[str] = set()
        for node in self.nodes:
            if node.name in names:
                raise IRError(f"{node.where}: duplicate node name")
            names.add(node.name)
            if node.op not in known:
                raise IRError(f"{node.where}: unknown core op '{node.op}'")
            for i in node.inputs:
                if i not in defined:
                    raise IRError(
                        f"{node.where}: input %{i} is not defined before it (graph not topologically ordered?)"
                    )
            for o in node.outputs:
                if o in defined:
                    raise IRError(f"{node.where}: value %{o} is written twice")
                defined.add(o)
        for out in self.outputs:
            if out.name not in defined:
                raise IRError(f"graph output %{out.name} is never computed")
        return self

    def __str__(self) -> str:
        lines = [f"graph {self.name}(" + ", ".join(str(v) for v in self.inputs) + ") {"]
        for n in self.nodes:
            lines.append("  " + str(n))
        lines.append("  return " + ", ".join(str(self.values.get(o.name, o)) for o in self.outputs))
        lines.append("}")
        return "\n".join(lines)


def check_finite_parameters(graph: Graph, where: str) -> None:
    """Every floating-point parameter of ``graph`` is finite (an artifact, a NIR file): a NaN bias
    would otherwise run and score near chance with exit status 0. ``where`` names the file."""
    import torch

    for node in graph.nodes:
        for key, tensor in node.params.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise SnncError(f"{where}: {node.where}: parameter '{key}' has {bad} non-finite value(s) (NaN or Inf)")
