"""What each value of a graph carries on the way to the spiking network: the graph input's linear
image, spikes, or dense (analog) values; and what each MAC layer multiplies.

The spiking share of ``snnc inspect`` and compile (:func:`snncompiler.analysis.summary.spiking_share`)
reports it; ``signed_spikes`` (:mod:`snncompiler.passes.signed_inputs`) rewrites the dense inputs
of MAC layers from it.
"""

from __future__ import annotations

from ..ir import Graph
from ..ir.ops import conversion_kind
from .signed_relu import SPLIT

#: Ops that move, pool or pick values without computing new ones: spikes in, spikes out.
ROUTING = {
    "reshape",
    "flatten",
    "transpose",
    "slice",
    "gather",
    "gather_elements",
    "gather_nd",
    "scatter_elements",
    "scatter_nd",
    "split",
    "concat",
    "pad",
    "maxpool",
    "avgpool",
    "reduce_mean",  # a global average pool as exporters write it (x.mean((2, 3)))
    "reduce_sum",
    "identity",
    "expand",
    "tile",
    "cumsum",
    "resize",
    "add",
    "sub",
    "scale",
    "mul",
    "div",
    "neg",
}
#: Layers whose multiply-accumulates are counted.
MAC_LAYERS = {"conv", "conv_transpose", "linear", "matmul", "einsum"}


def is_site(node) -> bool:
    """Whether ``node`` is a neuron, or a ReLU/Clip that the conversion turns into one."""
    return node.op in ("relu", "clip", "neuron") and conversion_kind(node) == "spiking"


def site_neurons(node) -> int:
    """How many neuron layers ``node`` compiles to: 2 for a LeakyReLU or PReLU
    (passes/signed_relu.py), 1 for a ReLU/Clip site or a neuron, else 0."""
    return 2 if node.op in SPLIT else int(is_site(node))


def value_kinds(graph: Graph) -> dict[str, str]:
    """What each value of ``graph`` carries: ``input`` (computed from the graph input by linear
    ops only), ``spikes`` (a neuron's output, or routed, pooled, summed or scaled spikes) or
    ``dense`` (anything else: an island's output, a layer's current)."""
    kind: dict[str, str] = {v.name: "input" for v in graph.inputs}
    for node in graph.nodes:
        seen = {kind.get(i, "input") for i in node.inputs}
        if site_neurons(node):
            out = "spikes"
        elif node.op in MAC_LAYERS:
            out = "input" if mac_source(node, kind) == "input" else "dense"
        elif conversion_kind(node) == "analog":
            out = "dense"
        elif not node.inputs or seen <= {"input"}:
            out = "input"
        elif node.op in ROUTING and seen == {"spikes"} and not (node.op in ("add", "sub") and "const" in node.params):
            out = "spikes"
        else:
            out = "dense"
        for o in node.outputs:
            kind[o] = out
    return kind


def mac_source(node, kinds: dict[str, str]) -> str:
    """What the MAC layer ``node`` multiplies (see :func:`value_kinds`): ``input`` for the
    encoding layer, ``spikes``, or ``dense`` (a product of two activations is always dense)."""
    if conversion_kind(node) == "analog":
        return "dense"
    seen = {kinds.get(i, "input") for i in node.inputs}
    return "input" if seen <= {"input"} else "spikes" if seen == {"spikes"} else "dense"
