"""Bias calibration (SNN Calibration's light pipeline).

For each neuron, in topological order, with every upstream correction in effect:

    b_c ← b_c − E_{N,H,W}[ s̄_c − a_c ]

where a is the ANN activation at the neuron's site, s̄ the SNN rate (time-mean of θ·s over
the compile T) and b the bias of the conv/linear that drives the neuron. It removes the mean
(per-channel) part of the conversion error, clipping and flooring alike.

A bias shift moves the rate only where the neuron is active, so one step under-corrects
(measured: about half the error remains on a digits CNN). The same update is therefore
repeated ``calib_rounds`` times per layer (default 3), re-measuring s̄ each time.
"""

from __future__ import annotations

import torch

from ..ir import Graph
from ..options import setting
from . import PassContext
from .layerwise import channel_mean, fed_neurons, feeding_chain, start

NAME = "bias_calibration"


def run(graph: Graph, ctx: PassContext) -> Graph:
    """Correct the bias of the layer feeding each neuron by the mean rate error."""
    sim, targets, neurons = start(graph, ctx, "bias calibration")
    for neuron, layer, _ in fed_neurons(graph, neurons, ctx, NAME):
        target, first = targets[neuron.outputs[0]], None
        for _ in range(int(setting(ctx.options, "calib_rounds"))):
            delta = channel_mean(sim.mean(neuron.outputs[0]) - target)
            first = float(delta.abs().mean()) if first is None else first
            bias = layer.params.get("bias", torch.zeros_like(delta))
            layer.params["bias"] = bias - delta.reshape(bias.shape)
            # the layer's output moves by exactly −delta: shift it instead of re-running the layer
            sim.shift(layer.outputs[0], -delta)
            sim.recompute(*feeding_chain(graph, neuron, layer)[1:])
        ctx.note(NAME, f"{neuron.name}: mean |E[s̄ − a]| {first:.4g} corrected via {layer.name}.bias")
    return graph
