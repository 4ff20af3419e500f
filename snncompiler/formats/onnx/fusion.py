"""Recognise decomposed GELU and LayerNorm in the IR and fuse each into its core op.

Exporters write GELU as ``x·½·(1 + erf(x/√2))`` below opset 20 (or the tanh approximation
``x·½·(1 + tanh(√(2/π)·(x + 0.044715·x³)))``) and LayerNorm as ReduceMean/Sub/Pow/ReduceMean/
Add/Sqrt/Div(/Mul/Add) below opset 17. Left apart, each piece would be its own analog island,
and the islands would rate-decode one another's outputs (a mean of square roots, not the square
root of a mean); fused, each is one island computed on its rate-decoded input, as with the
native ops. Only exact matches fuse: every intermediate value must be read inside the pattern
alone, and every constant must have the pattern's value.
"""

from __future__ import annotations

import math

import torch

from ...ir import Graph, Node

_SQRT2 = math.sqrt(2.0)
_TANH_SCALE = math.sqrt(2.0 / math.pi)


def _scalar(node: Node) -> float | None:
    """The node's constant operand as a float when it is a single value of at most one axis (a
    [1, 1, 1, 1, 1] constant also adds axes to what it broadcasts with), else None."""
    c = node.params.get("const")
    if c is None or c.numel() != 1 or c.dim() > 1:
        return None
    return float(c.reshape(()))


def _near(value: float | None, target: float, rel: float = 1e-6) -> bool:
    """``value`` is ``target`` as an exporter writes it: rounded to float32 (a relative error of
    at most 2^-24; 1e-6 leaves room for a constant computed in float32, such as 1/√2)."""
    return value is not None and abs(value - target) <= rel * abs(target)


class _Matcher:
    """Graph queries over a snapshot of producers and consumers (the graph is edited only after a match)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.producer = {o: n for n in graph.nodes for o in n.outputs}
        self.readers: dict[str, list[Node]] = {}
        for n in graph.nodes:
            for i in n.inputs:
                self.readers.setdefault(i, []).append(n)
        self.outputs = {v.name for v in graph.outputs}

    def only_reader(self, value: str, op: str | None = None) -> Node | None:
        """The single node reading ``value`` (of core op ``op``), if the value is internal."""
        readers = self.readers.get(value, [])
        if value in self.outputs or len(readers) != 1 or (op is not None and readers[0].op != op):
            return None
        return readers[0]

    def internal(self, value: str, count: int) -> bool:
        """``value`` is read by exactly ``count`` nodes and is no graph output."""
        return value not in self.outputs and len(self.readers.get(value, [])) == count

    def made_by(self, value: str, op: str) -> Node | None:
        node = self.producer.get(value)
        return node if node is not None and node.op == op else None


def _const_mul(node: Node | None, target: float) -> bool:
    """``node`` multiplies its one activation by ``target`` (or divides by 1/target)."""
    if node is None or len(node.inputs) != 1 or node.attrs.get("const_first") and node.op == "div":
        return False
    if node.op == "mul":
        return _near(_scalar(node), target)
    if node.op == "div":
        value = _scalar(node)
        return value is not None and value != 0 and _near(1.0 / value, target)
    return False


def _half_x_times(m: _Matcher, gate: str, x: str) -> tuple[Node, list[Node]] | None:
    """The tail ``y = x · ½ · gate`` in any of its export orders: (final node, its nodes)."""
    first = m.only_reader(gate, "mul")
    if first is None:
        return None
    if len(first.inputs) == 2:  # gate · x, then · ½ ; or gate · (x · ½)
        other = first.inputs[1] if first.inputs[0] == gate else first.inputs[0]
        if other == x:
            last = m.only_reader(first.outputs[0], "mul")
            if last is not None and len(last.inputs) == 1 and _const_mul(last, 0.5):
                return last, [first, last]
            return None
        half = m.made_by(other, "mul")
        if half is not None and half.inputs == [x] and _const_mul(half, 0.5) and m.internal(other, 1):
            return first, [half, first]
        return None
    if _const_mul(first, 0.5):  # (gate · ½) · x
        last = m.only_reader(first.outputs[0], "mul")
        if last is not None and len(last.inputs) == 2 and x in last.inputs and first.outputs[0] in last.inputs:
            return last, [first, last]
    return None


def _gelu_erf(m: _Matcher, erf: Node):
    scaled = m.producer.get(erf.inputs[0])
    if not _const_mul(scaled, 1.0 / _SQRT2) or not m.internal(erf.inputs[0], 1):
        return None
    x = scaled.inputs[0]
    plus = m.only_reader(erf.outputs[0], "add")
    if plus is None or len(plus.inputs) != 1 or not _near(_scalar(plus), 1.0):
        return None
    tail = _half_x_times(m, plus.outputs[0], x)
    if tail is None:
        return None
    return x, tail[0], [scaled, erf, plus] + tail[1], "none"


def _cube_of(m: _Matcher, value: str) -> str | None:
    """x if ``value`` is x³ (Pow(x, 3), or x·x·x as two multiplications), read only here."""
    node = m.producer.get(value)
    if node is None or not m.internal(value, 1):
        return None
    if node.op == "pow" and len(node.inputs) == 1 and not node.attrs.get("const_first") and _near(_scalar(node), 3.0):
        return node.inputs[0]
    if node.op == "mul" and len(node.inputs) == 2:
        a, b = node.inputs
        sq = m.producer.get(a)
        if sq is not None and sq.op == "mul" and sq.inputs == [b, b] and m.internal(a, 1):
            return b
        sq = m.producer.get(b)
        if sq is not None and sq.op == "mul" and sq.inputs == [a, a] and m.internal(b, 1):
            return a
    return None


def _gelu_tanh(m: _Matcher, tanh: Node):
    scaled = m.producer.get(tanh.inputs[0])
    if not _const_mul(scaled, _TANH_SCALE) or not m.internal(tanh.inputs[0], 1):
        return None
    inner = m.producer.get(scaled.inputs[0])
    if inner is None or inner.op != "add" or len(inner.inputs) != 2 or not m.internal(scaled.inputs[0], 1):
        return None
    for x, cubic in (inner.inputs, inner.inputs[::-1]):
        coef = m.producer.get(cubic)
        if not _const_mul(coef, 0.044715) or not m.internal(cubic, 1):
            continue
        if _cube_of(m, coef.inputs[0]) != x:
            continue
        cube_nodes = [m.producer[coef.inputs[0]]]
        if cube_nodes[0].op == "mul":
            a, b = cube_nodes[0].inputs
            cube_nodes.insert(
                0, m.producer[a] if m.producer[a].op == "mul" and m.producer[a].inputs == [b, b] else m.producer[b]
            )
        plus = m.only_reader(tanh.outputs[0], "add")
        if plus is None or len(plus.inputs) != 1 or not _near(_scalar(plus), 1.0):
            return None
        tail = _half_x_times(m, plus.outputs[0], x)
        if tail is None:
            return None
        return x, tail[0], cube_nodes + [coef, inner, scaled, tanh, plus] + tail[1], "tanh"
    return None


def _layer_norm(m: _Matcher, mean: Node):
    """x → ReduceMean → Sub → Pow 2 (or d·d) → ReduceMean → Add ε → Sqrt → Div (→ Mul γ → Add β)."""
    x = mean.inputs[0]
    shape = m.graph.shape(x)
    if shape is None or not mean.attrs.get("keepdims", 1):
        return None
    rank = len(shape)
    axes = sorted(a % rank for a in mean.attrs.get("axes") or [])
    if not axes or axes != list(range(axes[0], rank)) or axes[0] == 0:
        return None
    sub = m.only_reader(mean.outputs[0], "sub")
    if sub is None or sub.inputs != [x, mean.outputs[0]] or not m.internal(sub.outputs[0], 2):
        return None
    d = sub.outputs[0]
    square = div = None
    for reader in m.readers[d]:
        if (
            reader.op == "pow"
            and len(reader.inputs) == 1
            and _near(_scalar(reader), 2.0)
            and not reader.attrs.get("const_first")
        ):
            square = reader
        elif reader.op == "mul" and reader.inputs == [d, d]:
            square = reader
        elif reader.op == "div" and len(reader.inputs) == 2 and reader.inputs[0] == d:
            div = reader
    if square is None or div is None:
        return None
    var = m.only_reader(square.outputs[0], "reduce_mean")
    if var is None or sorted(a % rank for a in var.attrs.get("axes") or []) != axes or not var.attrs.get("keepdims", 1):
        return None
    plus = m.only_reader(var.outputs[0], "add")
    eps = _scalar(plus) if plus is not None and len(plus.inputs) == 1 else None
    if eps is None or eps < 0:
        return None
    root = m.only_reader(plus.outputs[0], "sqrt")
    if root is None or m.only_reader(root.outputs[0], "div") is not div or div.inputs[1] != root.outputs[0]:
        return None
    nodes, last = [mean, sub, square, var, plus, root, div], div
    norm_shape = tuple(shape[axes[0] :])
    params = {"scale": torch.ones(norm_shape)}
    for op, key in (("mul", "scale"), ("add", "bias")):
        nxt = m.only_reader(last.outputs[0], op)
        value = _affine_param(nxt, norm_shape)
        if value is not None:
            params[key] = value
            nodes.append(nxt)
            last = nxt
    return x, last, nodes, {"axis": axes[0], "eps": eps}, params


def _affine_param(node: Node | None, norm_shape: tuple[int, ...]) -> torch.Tensor | None:
    """The constant of a Mul/Add that applies γ or β over the normalised axes, broadcast to them."""
    if node is None or len(node.inputs) != 1 or "const" not in node.params:
        return None
    c = node.params["const"]
    try:
        if tuple(torch.broadcast_shapes(tuple(c.shape), norm_shape)) != norm_shape:
            return None
    except RuntimeError:
        return None
    return torch.broadcast_to(c, norm_shape).float().contiguous().clone()


def _unflatten_softmax(m: _Matcher, flatten: Node) -> bool:
    """Opset ≤ 12 Softmax/LogSoftmax over the axes from k ≥ 2 on, as onnx's version converter
    writes it: Flatten(axis=k) → softmax over axis 1 → Reshape back. The Flatten folds the batch
    into rows, so the loader found samples mixing; rewritten in place to keep the batch axis:
    Reshape to [N, d1 … d(k-1), dk·…] → softmax over the last axis → Reshape back."""
    k, shape = flatten.attrs.get("axis", 1), m.graph.shape(flatten.inputs[0])
    if shape is None or not 2 <= k % len(shape) < len(shape) or not m.internal(flatten.outputs[0], 1):
        return False
    k %= len(shape)
    soft = m.only_reader(flatten.outputs[0])
    if soft is None or soft.op not in ("softmax", "log_softmax") or soft.attrs.get("axis", -1) % 2 != 1:
        return False
    back = m.only_reader(soft.outputs[0], "reshape")
    if back is None or list(back.attrs.get("shape", [])) != list(shape) or back.attrs.get("keep_batch"):
        return False
    rows = list(shape[1:k]) + [math.prod(shape[k:])]
    flatten.op, flatten.attrs = "reshape", {"shape": rows, "keep_batch": True}
    soft.attrs = dict(soft.attrs, axis=-1)
    back.attrs = {"shape": list(shape[1:]), "keep_batch": True}
    for value in (flatten.outputs[0], soft.outputs[0]):
        if value in m.graph.values:
            m.graph.values[value].shape = tuple([shape[0]] + rows)
    return True


def fuse(graph: Graph) -> Graph:
    """Fuse every decomposed GELU and LayerNorm in ``graph`` (in place) into ``gelu`` and
    ``layer_norm`` nodes; the pieces are listed in ``graph.removed`` as fused. Old-opset
    softmaxes over trailing axes keep their batch axis (:func:`_unflatten_softmax`)."""
    m = _Matcher(graph)
    for node in list(graph.nodes):
        if node.op == "flatten":
            _unflatten_softmax(m, node)
    while True:
        m = _Matcher(graph)
        found = None
        for node in graph.nodes:
            if node.op == "erf":
                hit = _gelu_erf(m, node)
            elif node.op == "tanh":
                hit = _gelu_tanh(m, node)
            elif node.op == "reduce_mean":
                hit = _layer_norm(m, node)
            else:
                hit = None
            if hit is not None:
                found = hit
                break
        if found is None:
            return graph
        if len(found) == 4:
            x, last, nodes, approximate = found
            fused = Node(
                "gelu",
                last.name,
                [x],
                list(last.outputs),
                {"approximate": approximate},
                {},
                f"GELU pattern ({len(nodes)} nodes)",
            )
        else:
            x, last, nodes, attrs, params = found
            fused = Node(
                "layer_norm",
                last.name,
                [x],
                list(last.outputs),
                attrs,
                params,
                f"LayerNorm pattern ({len(nodes)} nodes)",
            )
        _replace(graph, nodes, last, fused)


def _replace(graph: Graph, nodes: list[Node], last: Node, fused: Node) -> None:
    """Put ``fused`` where ``last`` was and drop the other pattern nodes and their values."""
    drop = {id(n) for n in nodes}
    for n in nodes:
        graph.removed.append((n.name, n.source_op, f"fused into {fused.op} '{fused.name}'"))
        if n is not last:
            for o in n.outputs:
                graph.values.pop(o, None)
    graph.nodes = [fused if n is last else n for n in graph.nodes if id(n) not in drop or n is last]
