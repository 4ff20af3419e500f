"""Weight calibration: per layer, fit the weights so the SNN's rate matches the ANN.

For each neuron fed by a conv/linear (optionally plus a residual), in topological order:

    min_W  ‖ a − Q_STE(W·s̄_in + b [+ r̄]; θ, T) ‖²

with s̄_in and r̄ the actual upstream spike rates (upstream layers already calibrated), a the
ANN activation, and Q the neuron's rate function at the compile T (ClipRound for v0 = θ/2,
ClipFloor for v0 = 0; for a LIF its own rate on the constant current, which the runtime
simulates), its floor passed straight through for the gradient. Adam with a
cosine-decayed learning rate over ``iterations`` minibatch steps of ``calib_batch`` samples;
the squared error is summed over channels and averaged over the rest, as in SNN Calibration.
Under a process group every rank draws the same minibatch indices over all the samples, computes
the loss on the indices of its shard and the gradients are summed: the steps one process takes.
"""

from __future__ import annotations

import functools
import math

import torch

from .. import distributed
from ..ir import Graph, Node
from ..ir.neuron import NeuronSpec
from ..options import setting
from ..runtime.ops import IMPLEMENTATIONS, channel_view
from . import PassContext
from .layerwise import calibration_size, fed_neurons, feeding_chain, start

NAME = "weight_calibration"


def rate_ste(z: torch.Tensor, theta: torch.Tensor, timesteps: int, v0: str, exact=None) -> torch.Tensor:
    """Q(z; θ, T) with a straight-through floor: what an IF neuron's rate is for current z.

    ``exact``: the neuron's own rate for a constant current (a callable on z), for neurons the
    closed form does not describe (leak: :func:`fits_if_rate`); its value is used, and the IF form's
    unfloored slope passes the gradient straight through."""
    th = channel_view(theta, z)
    scaled = z * timesteps / th + (0.5 if v0 == "half" else 0.0)
    if exact is not None:
        smooth = th / timesteps * torch.clamp(scaled, 0, timesteps)
        return smooth + (exact(z.detach()) - smooth).detach()
    floored = scaled + (torch.floor(scaled) - scaled).detach()
    return th / timesteps * torch.clamp(floored, 0, timesteps)


def fits_if_rate(neuron: Node) -> bool:
    """Whether weight calibration fits this neuron with :func:`rate_ste`'s closed form (IF), or
    else with the neuron's own rate on a constant current (LIF). A leak lowers every rate and
    silences small inputs, which the IF form cannot see; a hard-reset IF keeps the closed form,
    since its gain (passes/hard_reset.py) was measured so that its rate on spike trains is IF's
    (its constant-current rate, a staircase, fitted no better on the VGG of
    benchmarks/timestep_accuracy.py trained on 8,000 images: 39.0 / 51.5 / 57.2 / 58.0 % at
    T = 4 / 8 / 16 / 32 against 42.2 / 52.8 / 53.0 / 59.2 %, on 400 test images)."""
    return not NeuronSpec.from_attrs(neuron.attrs).leaks


def layer_loss(
    layer: Node,
    weight: torch.Tensor,
    inputs: torch.Tensor,
    residual,
    target,
    theta,
    T,
    v0,
    samples: int | None = None,
    exact=None,
):
    """The weight-calibration objective for one minibatch. ``samples``: the size of the whole
    minibatch of which ``inputs`` is one rank's share; the share's part of the mean is returned,
    so that the ranks' parts (and their gradients) add up to the objective of the whole."""
    probe = Node(layer.op, layer.name, layer.inputs, layer.outputs, layer.attrs, {**layer.params, "weight": weight})
    z = IMPLEMENTATIONS[layer.op](probe, inputs)[0]
    if residual is not None:
        z = z + residual
    err = (target - rate_ste(z, theta, T, v0, exact)) ** 2
    if samples is None:
        return err.sum(dim=1).mean() if err.dim() > 1 else err.mean()
    per_sample = math.prod(err.shape[2:]) if err.dim() > 1 else 1
    return err.sum() / (samples * per_sample)


def _full_loss(layer, weight, inputs, residual, target, theta, T, v0, samples: int, exact=None) -> float:
    """The objective over every calibration sample (all ranks' shares added up)."""
    with torch.no_grad():
        if not distributed.is_distributed():
            return float(layer_loss(layer, weight, inputs, residual, target, theta, T, v0, exact=exact))
        part = layer_loss(layer, weight, inputs, residual, target, theta, T, v0, samples=samples, exact=exact)
        return distributed.sum_numbers(float(part))[0]


def run(graph: Graph, ctx: PassContext) -> Graph:
    """Fit the weights of every conv/linear that feeds a neuron (see module docstring)."""
    opts = ctx.options
    # a population of B neurons per unit quantises like one neuron over T·B steps (ir/neuron.py)
    T, v0 = NeuronSpec.from_attrs(opts).rate_levels(setting(opts, "timesteps")), setting(opts, "v0")
    iterations, lr = int(setting(opts, "iterations")), float(setting(opts, "lr"))
    batch = int(setting(opts, "calib_batch"))
    gen = torch.Generator().manual_seed(int(setting(opts, "seed")))
    sim, targets, neurons = start(graph, ctx, "weight calibration")
    sharded = distributed.is_distributed()
    total = calibration_size(ctx)  # the minibatches index every rank's samples, drawn alike on every rank
    first, _ = distributed.shard_range(total)
    for neuron, layer, residual_name in fed_neurons(graph, neurons, ctx, NAME):
        inputs = sim.mean(layer.inputs[0])
        residual = sim.mean(residual_name) if residual_name else None
        target = targets[neuron.outputs[0]]
        theta = neuron.params["theta"]
        exact = None if fits_if_rate(neuron) else functools.partial(sim.constant_input_rate, neuron)
        weight = layer.params["weight"].clone().requires_grad_(True)
        opt = torch.optim.Adam([weight], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(iterations, 1))
        before = _full_loss(layer, weight, inputs, residual, target, theta, T, v0, total, exact)
        for _ in range(iterations):
            idx = torch.randint(0, total, (min(batch, total),), generator=gen)
            samples = None
            if sharded:  # this rank's share of the minibatch; the gradients are summed below
                samples = len(idx)
                idx = idx[(idx >= first) & (idx < first + len(inputs))] - first
            loss = layer_loss(
                layer,
                weight,
                inputs[idx],
                None if residual is None else residual[idx],
                target[idx],
                theta,
                T,
                v0,
                samples=samples,
                exact=exact,
            )
            opt.zero_grad()
            loss.backward()
            distributed.sum_gradients([weight])
            opt.step()
            sched.step()
        after = _full_loss(layer, weight, inputs, residual, target, theta, T, v0, total, exact)
        if after < before:
            layer.params["weight"] = weight.detach()
            sim.recompute(*feeding_chain(graph, neuron, layer))
        # (before, after) of the weights actually kept
        ctx.report.setdefault("weight_calibration_loss", {})[neuron.name] = (before, min(before, after))
        ctx.note(
            NAME,
            f"{neuron.name}: layer loss {before:.4g} -> {after:.4g}"
            + ("" if after < before else " (kept old weights)"),
        )
    return graph
