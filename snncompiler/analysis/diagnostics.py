"""Where accuracy is lost: per-layer conversion error of a spiking model.

For each neuron, on the given inputs, with a the reference ANN's activation at its site and
s̄ the SNN rate after T steps:

* clipping error  E[(a − min(a, θ))²]            (what the threshold cuts off)
* flooring error  E[(min(a, θ) − s̄)²]            (quantisation of the rate, plus every upstream
                                                   mismatch that reaches this layer)
* firing rate     spikes per neuron per step
* cosine          cos(a, s̄) per sample, averaged
"""

from __future__ import annotations

import numpy as np
import torch

from ..ir import Graph
from ..options import setting
from ..passes import PassContext
from ..passes.layerwise import LayerwiseSimulator, ann_targets, reference_graph
from ..runtime.ops import channel_view


def layer_errors(model, x, timesteps: int, *, reference: Graph | None = None) -> list[dict]:
    """One dict per neuron: layer, theta, clipping_error, flooring_error, firing_rate, cosine."""
    ctx = PassContext(options={**model.options, "timesteps": int(timesteps)})
    if reference is not None:
        ctx.report["ann_graph"] = reference
    elif getattr(model, "ann_graph", None) is not None:
        ctx.report["ann_graph"] = model.ann_graph
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    neurons = model.graph.find("neuron")
    targets = ann_targets(reference_graph(model.graph, ctx), xt, [n.outputs[0] for n in neurons])
    sim = LayerwiseSimulator(model.graph, xt, int(timesteps), setting(model.options, "backend"))
    rows = []
    for neuron in sim.neurons():
        a, s = targets[neuron.outputs[0]], sim.mean(neuron.outputs[0])
        theta = channel_view(neuron.params["theta"], a)
        clipped = torch.minimum(a, theta)
        cos = torch.nn.functional.cosine_similarity(a.flatten(1), s.flatten(1), dim=1, eps=1e-12)
        rows.append(
            {
                "layer": neuron.name,
                "theta": float(neuron.params["theta"].mean()),
                "clipping_error": float(((a - clipped) ** 2).mean()),
                "flooring_error": float(((clipped - s) ** 2).mean()),
                "firing_rate": float((s / theta).mean()),
                "cosine": float(cos.mean()),
            }
        )
    return rows
