"""Offset-spike correction by pre-simulation (COS; Hao et al., ICLR 2023), ``--presim ρ``.

A converted IF neuron with soft reset fires the spike count its ANN activation asks for, give or
take one spike: the *offset spike* that uneven input spike trains cause (one too many when early
input pushed it over θ and later negative input cannot take the spike back; one too few when the
charge arrives late). COS measures it per neuron and per sample: the layer first runs ρ steps of
its input (the pre-simulation), then every neuron whose membrane ends below 0 after firing (one
spike too many) starts again lower, every neuron whose membrane ends at θ or above (one too few)
starts higher, and the layer runs its T steps from those starts.

How far a start moves (in θ, at least one threshold): down by the smallest membrane it fired at
less 0.999·θ, so that that spike is not fired again; up by 1.001·θ less the highest membrane it
stayed quiet at, so that that step fires. A neuron that fired at every pre-simulation step and
still ends at θ or above has no quiet membrane to lift; it moves up by θ (COS's code lifts it by
about 1000·θ, which makes it fire at every later step whatever it receives).

The runtime applies this layer by layer, as COS does: a layer's pre-simulation reads the first ρ
steps of its input, which the layers before it computed from their own corrected starts.

The cost: ρ extra membrane updates per neuron (the pre-simulation's spikes are not sent on, so
synaptic operations do not grow: its input currents are the first ρ steps' currents, computed
anyway), and latency: a layer's first output waits for its pre-simulation, so an SNN of L
spiking layers run as a pipeline answers after L·ρ + T steps, not T. docs/benchmarks.md quotes
accuracy against both counts.
"""

from __future__ import annotations

import torch

from ..kernels.reference import pre_reset_membranes


def offset_spike_start(x: torch.Tensor, v0, theta) -> torch.Tensor:
    """The corrected start [B, ...] of each neuron after pre-simulating the steps of ``x``
    ([ρ, B, ...], input currents, ρ ≥ 1) from ``v0`` (broadcasting against one step of x) with
    IF neurons, soft reset and threshold ``theta`` (broadcasting likewise). The
    pre-simulation's spikes are not emitted: only the start is kept."""
    start = (torch.zeros_like(x[0]) + v0).contiguous()
    theta = torch.as_tensor(theta, dtype=start.dtype, device=start.device)
    h = torch.stack(pre_reset_membranes(x, start, theta))
    spike = h >= theta
    end = torch.where(spike[-1], h[-1] - theta, h[-1])
    lowest_fired = torch.where(spike, h, float("inf")).amin(0)
    highest_quiet = torch.where(spike, float("-inf"), h).amax(0)
    too_many = (end < 0) & spike.any(0)
    too_few = end >= theta
    down = torch.maximum(lowest_fired - 0.999 * theta, theta)
    lift = torch.where(torch.isinf(highest_quiet), theta, 1.001 * theta - highest_quiet)
    up = torch.maximum(lift, theta)
    start = torch.where(too_many, start - down, start)
    return torch.where(too_few, start + up, start)
