"""Neuronize: every ReLU and Clip(0, c) becomes a neuron node; spiking max pooling is set up;
analog islands are listed (``strict`` refuses them in :func:`snncompiler.compiler.compile`).

Max pooling strategies (``maxpool``), all biased upward relative to the ANN's max of rates:
* ``output``: max over the neurons' spike outputs each step. Spikes of different inputs rarely
  coincide, so the max of spikes fires more often than the most active input: biased up most.
* ``input``: the max pool moves ahead of the neuron and takes the max of the input currents
  (max commutes with clip, so the ANN is unchanged); per-step current fluctuations from
  upstream spiking make the max of currents exceed the current of the max: biased up, less.
* ``rate``: each window emits the increments of its largest running input sum, so the output's
  spike count always equals the largest spike count among its inputs: the max of the rates so
  far. Biased up only by the noise of the counts (E[max] ≥ max E), an O(θ/t) effect that
  vanishes as t grows.
* ``gated``: each window passes the spikes of the input whose running spike count (up to and
  including the current step) is highest; the upward bias is confined to the early steps,
  before the counts separate, and to ties.
``rate`` is the default: it was best on every workload of benchmarks/timestep_accuracy.py.
"""

from __future__ import annotations

from ..errors import OptionError
from ..ir import Graph
from ..ir.neuron import MAXPOOL_STRATEGIES, NeuronSpec, pool_strategy
from ..ir.ops import conversion_kind
from ..options import setting
from . import PassContext

NAME = "neuronize"


def run(graph: Graph, ctx: PassContext) -> Graph:
    """Rewrite sites into neurons using ``ctx.report['thresholds']``; set max-pool strategy."""
    opts = ctx.options
    attrs = NeuronSpec.from_attrs(opts).attrs()
    thresholds = ctx.report["thresholds"]
    for node in graph.nodes:
        if node.name in thresholds:
            theta, source = thresholds[node.name]
            node.op, node.params = "neuron", {"theta": theta.float()}
            node.attrs = dict(attrs, theta_source=source)
    strategy = setting(opts, "maxpool")
    if strategy not in MAXPOOL_STRATEGIES:  # CompileOptions checked it; a pass run on its own checks again
        raise OptionError("maxpool", f"expected one of {', '.join(MAXPOOL_STRATEGIES)}, got '{strategy}'")
    for mp in list(graph.find("maxpool")):
        prev = graph.producer(mp.inputs[0])
        if strategy == "input" and prev is not None and prev.op == "neuron" and len(graph.consumers(mp.inputs[0])) == 1:
            # swap: x -> neuron -> maxpool  becomes  x -> maxpool -> neuron (same ANN function)
            a, b = mp.inputs[0], mp.outputs[0]
            mp.inputs, mp.outputs = [prev.inputs[0]], [a]
            prev.inputs, prev.outputs = [a], [b]
            i, j = graph.nodes.index(prev), graph.nodes.index(mp)
            graph.nodes[i], graph.nodes[j] = mp, prev
            graph.values.pop(a, None)
            mp.attrs["spiking"] = "input"
        else:
            mp.attrs["spiking"] = "output" if strategy == "input" else pool_strategy(strategy, mp.attrs)
        ctx.note(NAME, f"{mp.name}: spiking max pooling '{mp.attrs['spiking']}'")
    islands = [n for n in graph.nodes if conversion_kind(n) == "analog"]
    for n in islands:
        ctx.note(NAME, f"{n.name}: analog island ({n.op}) computed on the rate-decoded input")
    ctx.report["analog_islands"] = [n.name for n in islands]
    per_unit = f", {attrs['population']} per unit" if "population" in attrs else ""
    ctx.note(
        NAME,
        f"{len(thresholds)} neurons ({attrs['neuron'].upper()}, {attrs['reset']} reset, v0={attrs['v0']}{per_unit})",
    )
    return graph
