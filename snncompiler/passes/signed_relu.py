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
        # the difference keeps the node's name and output
        graph.nodes[at : at + 1] = signed_pair(
            graph, node.inputs[0], node.outputs[0], node.name, node.source, slope, keep_name=True
        )
        ctx.note(NAME, f"{node.name}: {SPLIT[node.op]} as ReLU(x) − α·ReLU(−x), two neuron layers")
    return graph


def signed_pair(
    graph: Graph,
    x: str,
    output: str,
    name: str,
    source,
    slope: torch.Tensor | None = None,
    keep_name: bool = False,
) -> list[Node]:
    """Nodes computing ``output`` = relu(x) − α·relu(−x) (no product when ``slope`` is None:
    α = 1, the identity as two neurons); the difference is named ``name`` when ``keep_name``, the
    others ``name/pos``, ``name/neg``, ...; every node carries ``source`` for messages."""
    like = graph.values.get(x, Value(x))

    def value(suffix: str) -> str:
        value_name = graph.unique_name(f"{name}/{suffix}_out")
        graph.values[value_name] = Value(value_name, like.shape, like.dtype)
        return value_name

    def make(op: str, suffix: str | None, inputs: list[str], out: str, params=None) -> Node:
        node_name = name if suffix is None else graph.unique_name(f"{name}/{suffix}")
        return Node(op, node_name, inputs, [out], {}, params or {}, source)

    negated, positive, negative = value("neg"), value("pos"), value("neg_relu")
    nodes = [
        make("relu", "pos", [x], positive),
        make("neg", "neg", [x], negated),
        make("relu", "neg_relu", [negated], negative),
    ]
    if slope is not None:
        scaled = value("slope")
        nodes.append(make("mul", "slope", [negative], scaled, {"const": slope}))
        negative = scaled
    nodes.append(make("sub", None if keep_name else "diff", [positive, negative], output))
    return nodes
