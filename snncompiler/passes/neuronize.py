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

import torch

from ..errors import OptionError
from ..ir import Graph
from ..ir.neuron import MAXPOOL_STRATEGIES, NeuronSpec, pool_strategy
from ..ir.ops import conversion_kind
from ..options import setting
from . import PassContext

NAME = "neuronize"


def trained_start(spec: NeuronSpec, site_attrs: dict, theta: torch.Tensor) -> torch.Tensor | None:
    """The ``v_init`` that starts a trained staircase's neuron at δ·θ (passes/fake_quant.py: a site
    with ``levels`` computes θ/L·clamp(floor(x·L/θ + δ), 0, L)), so that from a constant current it
    computes that staircase in T = L steps; None where the ``v0`` setting already does (δ = ½ with
    v0 "half", δ = 0 with "zero") or cannot: δ = 1 (a Ceil) would fire on a zero input. A
    population of B shares it: neuron j starts at θ·(j + δ)/B."""
    shift = site_attrs.get("shift") if site_attrs.get("levels") else None
    setting_shift = spec.initial_potential(1.0)  # where --v0 starts it, as a fraction of θ
    if shift is None or shift == setting_shift or not 0.0 <= shift < 1.0:
        return None
    top = float(theta.reshape(-1)[0])  # a staircase's θ is its one trained top (passes/thresholds.py)
    return torch.tensor((shift - setting_shift) * top / spec.population)


def run(graph: Graph, ctx: PassContext) -> Graph:
    """Rewrite sites into neurons using ``ctx.report['thresholds']``; set max-pool strategy."""
    opts = ctx.options
    spec = NeuronSpec.from_attrs(opts)
    attrs = spec.attrs()
    thresholds = ctx.report["thresholds"]
    for node in graph.nodes:
        if node.name in thresholds:
            theta, source = thresholds[node.name]
            v_init = trained_start(spec, node.attrs, theta)
            node.op, node.params = "neuron", {"theta": theta.float()}
            node.attrs = dict(attrs, theta_source=source)
            if v_init is not None:
                node.params["v_init"] = v_init
                ctx.note(NAME, f"{node.name}: starts at v0 + {float(v_init):.4g}, its trained staircase's shift")
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
