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

import math

from ..errors import SnncError
from ..ir import Graph
from ..runtime.ops import CORE_OPS
from . import PassContext

NAME = "neuronize"
MAXPOOL_STRATEGIES = ("rate", "gated", "input", "output")


def neuron_attrs(options: dict, where: str | None = None) -> dict:
    """The neuron settings recorded on every neuron node, validated. Errors name the setting as
    the CLI flag (``--reset: ...``), or with ``where`` as an attribute of that node (reading an
    artifact: ``model.snn.onnx: node Neuron 'x': attribute 'reset': ...``)."""
    def bad(key: str, message: str) -> SnncError:
        return SnncError(f"--{key}: {message}" if where is None else f"{where}: attribute '{key}': {message}")

    neuron = options.get("neuron", "if")
    if neuron not in ("if", "lif"):
        raise bad("neuron", f"expected if or lif, got '{neuron}'")
    reset = options.get("reset", "soft")
    if reset not in ("soft", "hard"):
        raise bad("reset", f"expected soft or hard, got '{reset}'")
    v0 = options.get("v0", "half")
    if v0 not in ("half", "zero"):
        raise bad("v0", f"expected half or zero, got '{v0}'")
    try:
        tau = float(options.get("tau", 2.0 if neuron == "lif" else 0.0))
    except (TypeError, ValueError):
        raise bad("tau", f"expected a number, got {options.get('tau')!r}") from None
    if not math.isfinite(tau):
        raise bad("tau", f"must be finite, got {tau}")
    if neuron == "lif" and tau <= 1.0:
        raise bad("tau", f"must be > 1 for LIF (decay = 1 - 1/tau), got {tau}")
    return {"neuron": neuron, "tau": tau, "reset": reset, "v0": v0}


def run(graph: Graph, ctx: PassContext) -> Graph:
    """Rewrite sites into neurons using ``ctx.report['thresholds']``; set max-pool strategy."""
    opts = ctx.options
    attrs = neuron_attrs(opts)
    thresholds = ctx.report["thresholds"]
    for node in graph.nodes:
        if node.name in thresholds:
            theta, source = thresholds[node.name]
            node.op, node.params = "neuron", {"theta": theta.float()}
            node.attrs = dict(attrs, theta_source=source)
    strategy = opts.get("maxpool", "rate")
    if strategy not in MAXPOOL_STRATEGIES:
        raise SnncError(f"--maxpool: expected one of {', '.join(MAXPOOL_STRATEGIES)}, got '{strategy}'")
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
            mp.attrs["spiking"] = "output" if strategy == "input" else strategy
        ctx.note(NAME, f"{mp.name}: spiking max pooling '{mp.attrs['spiking']}'")
    islands = [n for n in graph.nodes if CORE_OPS[n.op].conversion_kind(n) == "analog"]
    for n in islands:
        ctx.note(NAME, f"{n.name}: analog island ({n.op}) computed on the rate-decoded input")
    ctx.report["analog_islands"] = [n.name for n in islands]
    ctx.note(NAME, f"{len(thresholds)} neurons ({attrs['neuron'].upper()}, {attrs['reset']} reset, v0={attrs['v0']})")
    return graph
