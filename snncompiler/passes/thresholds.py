"""Threshold balancing: choose each neuron's θ from the activation histograms.

Modes (``--threshold``):
* ``max``: the largest activation seen;
* ``pNN.N``: a percentile of all activations, zeros included (``p99.9``, ``p99.99``);
* ``mse``: the θ on the grid max·(1 − 0.01·i), i = 0..94, minimising ‖a − Q(a; θ, T)‖² where Q
  is what an IF neuron computes as a rate at the compile T: ClipRound with v0 = θ/2
  (θ/T·clamp(floor(a·T/θ + ½), 0, T)) and ClipFloor with v0 = 0 (SNN Calibration's grid).
Layer-wise by default; per output channel with ``channelwise``.
"""

from __future__ import annotations

import torch

from ..ir import Graph
from ..ir.neuron import NeuronSpec
from ..options import parse_threshold, setting
from . import PassContext
from .stats import StreamingHistogram

NAME = "thresholds"


def parse_mode(mode: str) -> tuple[str, float | None]:
    """'max' | 'mse' | 'pNN.N' → (kind, percentile) (:func:`snncompiler.options.parse_threshold`)."""
    return parse_threshold(mode)


def staircase_rate(a: torch.Tensor, theta, steps: int, shift: float) -> torch.Tensor:
    """θ/L·clamp(floor(a·L/θ + δ), 0, L): what an IF neuron with soft reset started at δ·θ
    produces as a rate for a constant input a over L steps (a trained staircase's form too)."""
    return theta / steps * torch.clamp(torch.floor(a * steps / theta + shift), 0, steps)


def quantize(a: torch.Tensor, theta: torch.Tensor, timesteps: int, v0: str) -> torch.Tensor:
    """The rate an IF neuron with soft reset produces for a constant input a after T steps."""
    return staircase_rate(a, theta, timesteps, 0.5 if v0 == "half" else 0.0)


def mse_threshold(hist: StreamingHistogram, timesteps: int, v0: str, grid: int = 95) -> torch.Tensor:
    """Per-row θ minimising the histogram-weighted ‖a − Q(a; θ, T)‖² over the max-scaled grid."""
    centers = hist.centers().unsqueeze(0)
    best_loss = torch.full((hist.rows,), float("inf"), dtype=torch.float64)
    best = hist.max.clone()
    for i in range(grid):
        theta = (hist.max * (1 - 0.01 * i)).clamp_min(1e-12).unsqueeze(1)
        err = (centers - quantize(centers, theta, timesteps, v0)) ** 2
        loss = (hist.counts * err).sum(1)
        better = loss < best_loss
        best_loss = torch.where(better, loss, best_loss)
        best = torch.where(better, theta.squeeze(1), best)
    return best


def choose(hist: StreamingHistogram, mode: str, timesteps: int, v0: str) -> torch.Tensor:
    """θ per row of ``hist`` for a threshold mode."""
    kind, q = parse_mode(mode)
    if kind == "max":
        theta = hist.max.clone()
    elif kind == "percentile":
        theta = hist.percentile(q)
    else:
        theta = mse_threshold(hist, timesteps, v0)
    # a site that never fired on the calibration data still needs a positive threshold
    return torch.where(theta > 0, theta, torch.ones_like(theta)).float()


def run(graph: Graph, ctx: PassContext) -> Graph:
    """Store θ per site in ``ctx.report['thresholds']`` as {node name: (θ tensor, source text)}."""
    opts = ctx.options
    mode, v0 = setting(opts, "threshold"), setting(opts, "v0")
    # a population of B neurons per unit quantises like one neuron over T·B steps (ir/neuron.py)
    timesteps = NeuronSpec.from_attrs(opts).rate_levels(setting(opts, "timesteps"))
    result = {}
    for name, hist in ctx.report["histograms"].items():
        theta = choose(hist, mode, timesteps, v0)
        node = graph.node(name)
        levels = node.attrs.get("levels") if node.op == "clip" else None
        if levels:  # a trained quantized activation (passes/fake_quant.py): θ is its top
            theta = torch.full_like(theta, float(node.attrs["max"]))
            source = f"the model's trained {levels}-level activation (θ = its top)"
        else:
            if node.op == "clip" and node.attrs.get("max") is not None:
                theta = torch.clamp(theta, max=float(node.attrs["max"]))  # θ ≤ c keeps Clip(0, c) exact
            capped = node.op == "clip" and node.attrs.get("max") is not None
            per = "per channel" if theta.numel() > 1 else "per tensor"
            source = f"{mode} of {int(hist.counts.sum())} activations ({per}{', capped by Clip max' if capped else ''})"
        result[name] = (theta, source)
        ctx.note(NAME, f"{name}: θ={float(theta.mean()):.4g} from {source}")
    ctx.report["thresholds"] = result
    return graph
