"""Potential calibration: a per-neuron initial membrane potential.

For each neuron, in topological order, with every upstream correction in effect:

    v_init ← v_init + T · E_N[ a − s̄ ]        (per neuron: shape [C, H, W]; N over every rank's samples)

composed with the ``v0`` setting (the runtime starts at v0 + v_init). Over T steps an extra
initial charge of T·δ adds δ to the rate, so the mean per-neuron error is cancelled where the
neuron is active; samples in which it stays silent dilute the step, so, as in bias calibration,
the update is repeated ``calib_rounds`` times (default 3), re-measuring s̄ each time.
"""

from __future__ import annotations

from .. import distributed
from ..ir import Graph
from ..options import setting
from . import PassContext
from .layerwise import start

NAME = "potential_calibration"


def run(graph: Graph, ctx: PassContext) -> Graph:
    """Set each neuron's ``v_init`` from its mean rate error on the calibration data."""
    T = int(setting(ctx.options, "timesteps"))
    sim, targets, neurons = start(graph, ctx, "potential calibration")
    for neuron in neurons:
        target = targets[neuron.outputs[0]]
        for _ in range(int(setting(ctx.options, "calib_rounds"))):
            offset = T * distributed.mean(target - sim.mean(neuron.outputs[0]), 0)
            neuron.params["v_init"] = neuron.params.get("v_init", 0) + offset
            sim.recompute(neuron)
        ctx.note(NAME, f"{neuron.name}: mean |v_init| {float(neuron.params['v_init'].abs().mean()):.4g}")
    return graph
