"""Signed ReLU: LeakyReLU and PReLU as two spiking neurons.

    leaky(x) = relu(x) − α·relu(−x)        (α: LeakyReLU's alpha, or PReLU's slope tensor)

holds exactly, so the ANN computes the same function after this pass. Each ReLU then becomes a
neuron with a threshold of its own (one fires for the positive part of the current, the other
for the negative part), and the difference of their outputs, the second scaled by α, is linear
in spikes: the activation no longer needs an analog island. Two ordinary neurons rather than
one signed neuron (Spiking-YOLO's, Kim et al., AAAI 2020), so every kernel, the artifact, the
standard-ONNX export and ``to_torch`` run it unchanged.

The two neurons read one layer's output through a Neg, so the calibration passes that correct
the bias of the layer feeding a neuron leave them alone (one bias cannot move both); potential
calibration, which is per neuron, still applies.
"""

from __future__ import annotations

import torch

from ..ir import Graph, Node, Value
from . import PassContext

NAME = "signed_relu"
#: The core ops this pass splits, with their ONNX names for messages.
SPLIT = {"leaky_relu": "LeakyRelu", "prelu": "PRelu"}


def negative_slope(node: Node) -> torch.Tensor:
    """α of a LeakyReLU (a scalar) or PReLU (its slope, broadcasting against the input)."""
    if node.op == "prelu":
        return node.params["slope"].to(torch.float32)
    return torch.tensor(float(node.attrs.get("alpha", 0.01)), dtype=torch.float32)


def run(graph: Graph, ctx: PassContext) -> Graph:
    """Replace every LeakyReLU and PReLU by relu(x) − α·relu(−x) (see the module docstring)."""
    for node in [n for n in graph.nodes if n.op in SPLIT]:
        slope = negative_slope(node)
        if not bool(slope.ne(0).any()):  # a zero slope is a ReLU
            node.op, node.attrs, node.params = "relu", {}, {}
            continue
        at = graph.nodes.index(node)
        graph.nodes[at : at + 1] = _pair(graph, node, slope)
        ctx.note(NAME, f"{node.name}: {SPLIT[node.op]} as ReLU(x) − α·ReLU(−x), two neuron layers")
    return graph


def _pair(graph: Graph, node: Node, slope: torch.Tensor) -> list[Node]:
    """The five nodes that replace ``node``: relu(x), neg(x), relu(−x), α·relu(−x) and the
    difference, which keeps the node's name and output; all keep its ONNX source for messages."""
    x, like = node.inputs[0], graph.values.get(node.inputs[0], Value(node.inputs[0]))

    def value(suffix: str) -> str:
        name = graph.unique_name(f"{node.name}/{suffix}_out")
        graph.values[name] = Value(name, like.shape, like.dtype)
        return name

    def make(op: str, suffix: str | None, inputs: list[str], output: str, params=None) -> Node:
        name = node.name if suffix is None else graph.unique_name(f"{node.name}/{suffix}")
        return Node(op, name, inputs, [output], {}, params or {}, node.source)

    negated, positive, negative, scaled = value("neg"), value("pos"), value("neg_relu"), value("slope")
    return [
        make("relu", "pos", [x], positive),
        make("neg", "neg", [x], negated),
        make("relu", "neg_relu", [negated], negative),
        make("mul", "slope", [negative], scaled, {"const": slope}),
        make("sub", None, [positive, scaled], node.outputs[0]),
    ]
