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
from . import PassContext
from .layerwise import (ann_activation, calibration_batch, channel_mean, feeding_layer, progress,
                        reference_graph, snn_rates)

NAME = "bias_calibration"


def run(graph: Graph, ctx: PassContext) -> Graph:
    """Correct the bias of the layer feeding each neuron by the mean rate error."""
    x = calibration_batch(ctx)
    ann = reference_graph(graph, ctx)
    for neuron in progress(graph.find("neuron"), "bias calibration", ctx):
        fed = feeding_layer(graph, neuron)
        if fed is None:
            ctx.note(NAME, f"{neuron.name}: no conv/linear directly feeds it, left as is")
            continue
        layer, _ = fed
        value = neuron.outputs[0]
        target = ann_activation(ann, x, value)
        first = None
        for _ in range(int(ctx.options.get("calib_rounds", 3))):
            rate = snn_rates(graph, ctx, x, [value], stop_at=value)[value]
            delta = channel_mean(rate - target)
            first = float(delta.abs().mean()) if first is None else first
            bias = layer.params.get("bias", torch.zeros_like(delta))
            layer.params["bias"] = bias - delta.reshape(bias.shape)
        ctx.note(NAME, f"{neuron.name}: mean |E[s̄ − a]| {first:.4g} corrected via {layer.name}.bias")
    return graph
