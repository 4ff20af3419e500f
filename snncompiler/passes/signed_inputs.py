"""Signed spikes: a layer that reads an unbounded analog value reads it as spikes instead.

A MAC layer (conv, linear, matmul with constant weights) whose input no neuron produced multiplies
analog values: MobileNetV2's linear bottlenecks (a projection conv with no activation, and the
residual sums of such outputs) feed the next block's expansion conv that way, and so does a
layer after an analog island. With ``signed_spikes`` each such input ``v`` is rewritten

    v = relu(v) − relu(−v)

which holds exactly, so the ANN computes the same function. Each ReLU becomes a neuron with a
threshold of its own (:mod:`snncompiler.passes.signed_relu` builds the same pair for
LeakyReLU, with a slope), and the layer then multiplies the difference of two spike trains:
every MAC after the input layer is spike-driven. The pair sits on the layer's input only, so a
residual path that adds ``v`` back stays as it was; layers reading one value share one pair.
The encoding layer (reading the input through linear ops) and products of two activations
(analog whatever their inputs) are left alone.

The price is quantisation of values that were exact: two more neuron layers per rewritten input,
whose rate code needs timesteps like any other (docs/benchmarks.md, "Linear bottlenecks").
"""

from __future__ import annotations

from ..ir import Graph, Value
from ..ir.ops import conversion_kind
from . import PassContext
from .fuse_linear import fusible_layers
from .signed_relu import signed_pair
from .spike_flow import MAC_LAYERS, mac_source, value_kinds

NAME = "signed_inputs"


def analog_mac_inputs(graph: Graph, skip=()) -> dict[str, list]:
    """{value: the MAC layers reading it} for every analog value (``dense``: neither the input's
    linear image nor spikes) that a MAC layer with constant weights multiplies; layers in ``skip``
    are left out."""
    kinds = value_kinds(graph)
    readers: dict[str, list] = {}
    for node in graph.nodes:
        if node.op not in MAC_LAYERS or conversion_kind(node) == "analog" or mac_source(node, kinds) != "dense":
            continue
        if any(node is s for s in skip):
            continue
        for name in node.inputs:
            if kinds.get(name) == "dense" and node not in readers.get(name, []):
                readers.setdefault(name, []).append(node)
    return readers


def run(graph: Graph, ctx: PassContext) -> Graph:
    """With ``ctx.options['signed_spikes']``: every analog input of a MAC layer becomes the
    difference of two spiking ReLUs (see the module docstring)."""
    if not ctx.options.get("signed_spikes"):
        return graph
    # with fuse_linear too, the layers it will fuse exactly (after calibration) keep their inputs
    readers = analog_mac_inputs(graph, fusible_layers(graph) if ctx.options.get("fuse_linear") else ())
    for value, layers in readers.items():
        first = min(graph.nodes.index(n) for n in layers)
        name = graph.unique_name(f"{value}/signed")
        spiked = graph.unique_name(f"{value}/signed_out")
        like = graph.values.get(value, Value(value))
        graph.values[spiked] = Value(spiked, like.shape, like.dtype)
        graph.nodes[first:first] = signed_pair(graph, value, spiked, name, layers[0].source)
        for layer in layers:
            layer.inputs = [spiked if i == value else i for i in layer.inputs]
    if readers:
        layers = sum(len(v) for v in readers.values())
        ctx.note(
            NAME, f"{layers} layers read {len(readers)} analog values as ReLU(x) − ReLU(−x): two neuron layers each"
        )
    return graph
