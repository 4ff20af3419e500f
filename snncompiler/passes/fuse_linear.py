"""Linear fusion: a layer reading a linear function of spikes reads the spikes, with composed weights.

MobileNetV2's expansion conv reads ``v = x + P(h)``: the previous block's input plus its
projection (a 1×1 conv with no activation after it) of spikes ``h``. ``v`` is analog, but it is
linear in spikes, and so the layer reading it can be distributed over the sum and composed
with the projection:

    L(x + P(h)) = L(x) + (L∘P)(h)

term by term, at every timestep, exactly (up to float rounding): the spiking network computes
what it computed before, and every term now multiplies a spike tensor (or the input, for the
encoding layer). Unlike ``signed_spikes`` (:mod:`snncompiler.passes.signed_inputs`), which adds
two neurons per analog value and the quantisation they bring, nothing is approximated; the price
is MACs: ``L∘P`` maps the hidden width straight to L's outputs, and a residual chain gives the
reader one term per block it sums (the compile report gives the count before and after).

Fused: a layer ``L`` that is pointwise (a Gemm/linear layer, or a conv whose kernel is 1 in every
axis, with no padding and groups = 1) reading, through Adds of two same-shaped activations, values
that are spikes, the input's linear image, or the outputs of pointwise layers of the same kind
whose inputs fuse in turn. Anything else on the way (an island, a pooling of analog values, a
3×3 projection, a broadcasting Add) leaves ``L`` as it was. Layers no longer read are removed.

It runs on the spiking graph after calibration (``fuse_linear``, ``--fuse-linear``), so the
calibration passes see and correct the network they always did.
"""

from __future__ import annotations

import torch

from ..ir import Graph, Node, Value
from . import PassContext
from .spike_flow import value_kinds

NAME = "fuse_linear"


def pointwise(node: Node) -> bool:
    """Whether ``node`` is a linear map over its channel axis only (fusible on either side)."""
    if node.op == "linear":
        return True
    if node.op != "conv" or node.attrs.get("groups", 1) != 1:
        return False
    weight = node.params["weight"]
    return all(k == 1 for k in weight.shape[2:]) and not any(node.attrs.get("pads", []))


def _matrix(node: Node) -> torch.Tensor:
    """The layer's weight as [out, in]."""
    w = node.params["weight"]
    return w.reshape(w.shape[0], w.shape[1])


def _stride(node: Node) -> list[int]:
    nd = node.params["weight"].dim() - 2
    return list(node.attrs.get("stride", [1] * nd)) if node.op == "conv" else []


class _Terms:
    """The sum a fused layer computes: {(source value, stride): [out, in] weight} plus one bias."""

    def __init__(self, bias: torch.Tensor):
        self.weights: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}
        self.bias = bias

    def add(self, source: str, stride: list[int], weight: torch.Tensor) -> None:
        key = (source, tuple(stride))
        self.weights[key] = self.weights[key] + weight if key in self.weights else weight


def _expand(graph, layer, value, weight, stride, terms, kinds, producers) -> bool:
    """Add the terms of ``weight · value`` to ``terms``; False where ``value`` is not a fusible
    linear function of spikes."""
    if kinds.get(value, "input") in ("spikes", "input"):
        terms.add(value, stride, weight)
        return True
    node = producers.get(value)
    if node is None or value in {v.name for v in graph.outputs}:
        return False
    if node.op == "add" and len(node.inputs) == 2 and "const" not in node.params:
        shapes = [graph.shape(i) for i in node.inputs]
        if shapes[0] is None or shapes[0] != shapes[1]:
            return False  # a broadcasting Add is not a sum of two maps of the same input
        return all(_expand(graph, layer, i, weight, stride, terms, kinds, producers) for i in node.inputs)
    if pointwise(node) and node.op == layer.op:
        inner = _matrix(node)
        if "bias" in node.params:
            terms.bias = terms.bias + weight @ node.params["bias"]
        inner_stride = [a * b for a, b in zip(_stride(node), stride)]
        return _expand(graph, layer, node.inputs[0], weight @ inner, inner_stride, terms, kinds, producers)
    return False


def _terms(graph: Graph, layer: Node, kinds: dict, producers: dict) -> _Terms | None:
    """What ``layer`` computes as a sum of pointwise layers of spikes (or the input), or None."""
    w = _matrix(layer)
    terms = _Terms(layer.params.get("bias", torch.zeros(w.shape[0], dtype=w.dtype)))
    return terms if _expand(graph, layer, layer.inputs[0], w, _stride(layer), terms, kinds, producers) else None


def _fusions(graph: Graph) -> list[tuple[Node, _Terms]]:
    """Every layer :func:`run` fuses, with the sum it computes, all expanded on ``graph`` as it is."""
    kinds = value_kinds(graph)
    producers = {o: n for n in graph.nodes for o in n.outputs}
    candidates = [n for n in graph.nodes if pointwise(n) and kinds.get(n.inputs[0]) == "dense"]
    found = [(n, _terms(graph, n, kinds, producers)) for n in candidates]
    return [(n, terms) for n, terms in found if terms is not None]


def fusible_layers(graph: Graph) -> list[Node]:
    """The layers :func:`run` fuses: pointwise, reading an analog value that is a sum of pointwise
    layers of spikes (on an ANN, ReLU/Clip sites count as the spikes they become)."""
    return [layer for layer, _ in _fusions(graph)]


def run(graph: Graph, ctx: PassContext) -> Graph:
    """With ``ctx.options['fuse_linear']``: every pointwise layer reading a linear function of
    spikes reads the spikes (see the module docstring)."""
    if not ctx.options.get("fuse_linear"):
        return graph
    fusions = _fusions(graph)
    for layer, terms in fusions:  # expanded on the graph as it was: fusing one changes no other's sources
        at = graph.nodes.index(layer)
        graph.nodes[at : at + 1] = _build(graph, layer, terms)
    removed = _remove_unread(graph)
    if fusions:
        ctx.note(
            NAME,
            f"{len(fusions)} layers read spikes through composed weights; {removed} layers no longer read removed",
        )
    return graph


def _build(graph: Graph, layer: Node, terms: _Terms) -> list[Node]:
    """One layer per term (the first with the bias), summed by Adds into ``layer``'s output."""
    like = graph.values.get(layer.outputs[0], Value(layer.outputs[0]))
    items = list(terms.weights.items())

    def value(suffix: str) -> str:
        name = graph.unique_name(f"{layer.name}/{suffix}_out")
        graph.values[name] = Value(name, like.shape, like.dtype)
        return name

    kernel = layer.params["weight"].shape[2:]
    nodes, outs = [], []
    for k, ((source, stride), weight) in enumerate(items):
        single = len(items) == 1
        out = layer.outputs[0] if single else value(f"term{k}")
        params = {"weight": weight.reshape(*weight.shape, *kernel).contiguous()}
        if k == 0:
            params["bias"] = terms.bias
        attrs = {**layer.attrs, "stride": list(stride)} if layer.op == "conv" else dict(layer.attrs)
        name = layer.name if single else graph.unique_name(f"{layer.name}/term{k}")
        nodes.append(Node(layer.op, name, [source], [out], attrs, params, layer.source))
        outs.append(out)
    partial = outs[0]
    for k, out in enumerate(outs[1:], 1):
        total = layer.outputs[0] if k == len(outs) - 1 else value(f"sum{k}")
        nodes.append(
            Node("add", graph.unique_name(f"{layer.name}/sum{k}"), [partial, out], [total], {}, {}, layer.source)
        )
        partial = total
    return nodes


def _remove_unread(graph: Graph) -> int:
    """Drop nodes none of whose outputs is read or a graph output; how many layers went."""
    removed = 0
    while True:
        read = {i for n in graph.nodes for i in n.inputs} | {v.name for v in graph.outputs}
        dead = [n for n in graph.nodes if not any(o in read for o in n.outputs)]
        if not dead:
            return removed
        for node in dead:
            graph.nodes.remove(node)
            for o in node.outputs:
                graph.values.pop(o, None)
            removed += node.op in ("conv", "linear")
