"""Converter registry and the context converters write into.

One small function per ONNX operator, registered with :func:`converter`, lowers an ONNX node
onto core ops (onnx2torch style). Converters read constants and static shapes from the
:class:`Ctx` and emit IR nodes through it; they never touch the ONNX graph.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from ...errors import SnncError, UnsupportedOpError
from ...ir import Graph, Node, Value

log = logging.getLogger(__name__)

Converter = Callable[[onnx.NodeProto, "Ctx"], None]
CONVERTERS: dict[tuple[str, str], Converter] = {}


def converter(*op_types: str, domain: str = ""):
    """Register the decorated function as the converter for ONNX ``op_types`` in ``domain``."""

    def register(fn: Converter) -> Converter:
        for op in op_types:
            CONVERTERS[(domain, op)] = fn
        return fn

    return register


#: core op → its write rule ``rule(builder, node)``, which adds the node's ONNX form to the
#: builder (:class:`~snncompiler.formats.onnx.writer.Builder`). Each rule sits beside the read
#: rule of the same op family in converters/.
WRITERS: dict[str, Callable] = {}


def writes(*core_ops: str):
    """Register the decorated function as the ONNX write rule of ``core_ops``."""

    def register(fn):
        for op in core_ops:
            WRITERS[op] = fn
        return fn

    return register


def ints(values) -> list[int]:
    """An attribute's values as Python ints (ONNX attributes refuse numpy and torch scalars)."""
    return [int(i) for i in values]


def lookup(node: onnx.NodeProto) -> Converter | None:
    """The converter for a node, or None."""
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    return CONVERTERS.get((domain, node.op_type))


def describe(node: onnx.NodeProto) -> str:
    """How messages name an ONNX node: ``Conv 'conv1'``."""
    return f"{node.op_type} '{node.name or (node.output[0] if node.output else '?')}'"


class Ctx:
    """Conversion state: constants, static shapes, aliases, and the IR being built."""

    def __init__(self, model: onnx.ModelProto, label: str, opset: int):
        self.label = label
        self.opset = opset
        self.model = model
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, int] = {}
        for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
            tt = vi.type.tensor_type
            dims = list(tt.shape.dim) if tt.HasField("shape") else None
            # a symbolic leading dim is the batch axis, pinned to 1 like the graph inputs
            if dims is not None and all(d.HasField("dim_value") for d in dims[1:]):
                self.shapes[vi.name] = tuple(
                    int(d.dim_value) if i or d.HasField("dim_value") else 1 for i, d in enumerate(dims)
                )
            self.dtypes[vi.name] = tt.elem_type
        self.aliases: dict[str, str] = {}
        self.nodes: list[Node] = []
        self.removed: list[tuple[str, str, str]] = []
        self.current: onnx.NodeProto | None = None
        self._names: set[str] = set()

    # ---- reading --------------------------------------------------------------------
    def where(self, node: onnx.NodeProto | None = None) -> str:
        """``file: node 'x' (Op)`` prefix for messages about the node being converted."""
        node = node or self.current
        return f"{self.label}: node {describe(node)}" if node is not None else self.label

    def fail(self, message: str) -> SnncError:
        """An error about the current node (raise the result)."""
        return SnncError(f"{self.where()}: {message}")

    def resolve(self, name: str) -> str:
        """Follow Identity/Dropout aliases to the value that is actually computed."""
        while name in self.aliases:
            name = self.aliases[name]
        return name

    def is_const(self, name: str) -> bool:
        """True if ``name`` is an initializer or a folded constant."""
        return self.resolve(name) in self.consts

    def const(self, name: str, what: str | None = None) -> np.ndarray:
        """The constant value of ``name``; error naming ``what`` if it is an activation."""
        name = self.resolve(name)
        if name not in self.consts:
            raise self.fail(f"{what or 'input ' + repr(name)} must be a constant (initializer), got an activation")
        return self.consts[name]

    def optional_const(self, node: onnx.NodeProto, index: int, what: str | None = None) -> np.ndarray | None:
        """Constant input ``index`` of ``node`` if present and non-empty, else None."""
        if len(node.input) <= index or not node.input[index]:
            return None
        return self.const(node.input[index], what)

    def shape(self, name: str) -> tuple[int, ...]:
        """Static shape of a value (batch pinned); error if shape inference left it unknown."""
        name = self.resolve(name)
        if name in self.consts:
            return tuple(self.consts[name].shape)
        if name not in self.shapes:
            raise self.fail(f"the shape of '{name}' is unknown after shape inference")
        return self.shapes[name]

    @staticmethod
    def attrs(node: onnx.NodeProto) -> dict:
        """The node's attributes as plain Python values."""
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    # ---- dispatch -------------------------------------------------------------------
    def convert(self, node: onnx.NodeProto, lenient: bool = False) -> None:
        """Convert one ONNX node: folded when its inputs are all constants, else by its
        converter (the reader's loop, and converters that lower a node into standard ones).
        With ``lenient`` an operator without a converter becomes an ``unsupported`` node."""
        outer, self.current = self.current, node
        try:
            if node.op_type != "Constant" and node.input and all(not i or self.is_const(i) for i in node.input):
                if self.fold(node):
                    return
            fn = lookup(node)
            if fn is None:
                if not lenient:
                    raise unsupported(node, self)
                self.emit(
                    "unsupported",
                    [i for i in node.input if i and not self.is_const(i)],
                    list(node.output),
                    {"op_type": node.op_type, "domain": node.domain},
                )
                return
            try:
                fn(node, self)
            except SnncError:
                raise
            except Exception as exc:  # a converter bug or an input it cannot handle: still name the node
                raise SnncError(f"{self.where(node)}: cannot convert ({type(exc).__name__}: {exc})") from exc
        finally:
            self.current = outer

    def fold(self, node: onnx.NodeProto) -> bool:
        """Evaluate a node whose inputs are all constants with onnx's reference evaluator.

        The onnxscript folder leaves some constant subgraphs (size limits, ops it skips); they
        are still constants, and onnx's own evaluator computes them exactly.
        """
        from onnx.reference import ReferenceEvaluator

        try:
            inputs = list(dict.fromkeys(i for i in node.input if i))
            graph = helper.make_graph(
                [node],
                "fold",
                [
                    helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(self.const(i).dtype), None)
                    for i in inputs
                ],
                [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o],
            )
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
            results = ReferenceEvaluator(model).run(None, {i: self.const(i) for i in inputs})
        except Exception as exc:
            log.debug("could not fold %s: %s", describe(node), exc)
            return False
        for name, value in zip([o for o in node.output if o], results):
            self.set_const(name, np.asarray(value))
        self.removed.append((node.name or node.output[0], node.op_type, "constant-folded"))
        return True

    # ---- writing --------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        """A new internal value name derived from ``base``."""
        k = 0
        name = f"{base}__{k}"
        while name in self._names or name in self.shapes or name in self.consts:
            k += 1
            name = f"{base}__{k}"
        self._names.add(name)
        return name

    def emit(
        self,
        op: str,
        inputs: list[str],
        outputs: list[str],
        attrs: dict | None = None,
        params: dict[str, np.ndarray | torch.Tensor] | None = None,
    ) -> Node:
        """Append a core-op node reading ``inputs`` (aliases resolved) and writing ``outputs``."""
        src = self.current
        name = src.name if src is not None and src.name else (outputs[0] if outputs else op)
        base, k = name, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        tensors = {k2: _as_tensor(v) for k2, v in (params or {}).items()}
        node = Node(
            op,
            name,
            [self.resolve(i) for i in inputs],
            list(outputs),
            dict(attrs or {}),
            tensors,
            describe(src) if src is not None else "",
        )
        self.nodes.append(node)
        return node

    def set_const(self, name: str, value: np.ndarray) -> None:
        """Record an output as a compile-time constant (no IR node)."""
        self.consts[name] = np.asarray(value)

    def alias(self, out: str, source: str, why: str) -> None:
        """Make ``out`` another name for ``source`` (Identity, Dropout, no-op casts)."""
        self.aliases[out] = self.resolve(source)
        if self.current is not None:
            self.removed.append((self.current.name or out, self.current.op_type, why))

    def activation_or_const(self, name: str) -> str:
        """An IR value for an input that may be constant: constants get a ``constant`` node."""
        name = self.resolve(name)
        if name in self.consts and not any(name in n.outputs for n in self.nodes):
            node = self.emit("constant", [], [name], params={"value": self.consts[name]})
            # named for what it is (`snnc inspect` showed it as the op that reads it)
            reader = f" read by {describe(self.current)}" if self.current is not None else ""
            node.source = f"Constant '{name}'{reader}"
        return name


def _as_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    arr = np.asarray(value)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    # np.array(copy, order C) rather than np.ascontiguousarray, which turns a 0-d array into shape (1,)
    return torch.from_numpy(np.array(arr, copy=True, order="C"))


def unsupported(node: onnx.NodeProto, ctx: Ctx) -> UnsupportedOpError:
    """The one-line error for an operator without a converter."""
    domain = node.domain or "ai.onnx"
    return UnsupportedOpError(
        f"{ctx.label}: node '{node.name or node.output[0]}': operator {node.op_type} "
        f"(domain '{domain}') is not supported; run `snnc inspect` for the full list"
    )


def build_graph(ctx: Ctx, inputs: list[Value], outputs: list[Value], name: str) -> Graph:
    """Assemble the converted nodes into a Graph, giving aliased graph outputs their own node."""
    nodes = ctx.nodes
    produced = {o for n in nodes for o in n.outputs} | {v.name for v in inputs}
    for out in outputs:
        src = ctx.resolve(out.name)
        if out.name in produced:
            continue
        if src in produced:
            nodes.append(Node("identity", ctx.fresh(out.name), [src], [out.name], source="graph output"))
        elif src in ctx.consts:
            nodes.append(
                Node(
                    "constant",
                    ctx.fresh(out.name),
                    [],
                    [out.name],
                    params={"value": _as_tensor(ctx.consts[src])},
                    source="graph output",
                )
            )
        produced.add(out.name)
    values = {v.name: v for v in inputs}
    for n in nodes:
        for o in n.outputs:
            values[o] = Value(o, ctx.shapes.get(o))
    return Graph(inputs, outputs, nodes, values, removed=ctx.removed, name=name)
