"""Shared machinery of the layer-wise calibration passes.

Each calibration pass walks the neurons in topological order and, for one neuron at a time,
measures its ANN target (the original ANN's activation at that site) and its SNN rate (the
time-mean of its spikes over T steps, with every upstream correction already applied),
computing nothing past the layer it is working on.
"""
from __future__ import annotations

import torch
from tqdm import tqdm

from ..ir import Graph, Node
from ..runtime.executor import Executor
from ..runtime.snn import SpikingRunner
from . import PassContext


def calibration_batch(ctx: PassContext) -> torch.Tensor:
    """The calibration inputs (at most ``calib_samples``) as one tensor."""
    n = int(ctx.options.get("calib_samples") or len(ctx.calib))
    return torch.from_numpy(ctx.calib.x[:n]).float()


def reference_graph(graph: Graph, ctx: PassContext) -> Graph:
    """The ANN whose activations are the targets: the compiler's pre-neuronize graph if known,
    else this graph with every neuron as a plain ReLU (an artifact calibrated after the fact)."""
    ann = ctx.report.get("ann_graph")
    if ann is not None:
        return ann
    ann = graph.copy()
    for n in ann.find("neuron"):
        n.op, n.params, n.attrs = "relu", {}, {}
    return ann


def ann_activation(ann: Graph, x: torch.Tensor, value: str, batch_size: int = 256) -> torch.Tensor:
    """The ANN's activation ``value`` on x (unclipped: the target of calibration)."""
    ex = Executor(ann)
    parts: list[torch.Tensor] = []

    def grab(node, outs):
        for name, t in zip(node.outputs, outs):
            if name == value:
                parts.append(t.detach())

    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            ex.run({ann.inputs[0].name: x[s:s + batch_size]}, observer=grab)
    return torch.cat(parts)


def snn_rates(graph: Graph, ctx: PassContext, x: torch.Tensor, names: list[str], stop_at: str,
              batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Time-mean of the named values over the compile T, stopping after ``stop_at``."""
    T = int(ctx.options.get("timesteps", 32))
    runner = SpikingRunner(graph, backend=ctx.options.get("backend", "auto"))
    out: dict[str, list] = {n: [] for n in names}
    for s in range(0, len(x), batch_size):
        rates = runner.rates(x[s:s + batch_size], T, names, stop_at=stop_at)
        for n in names:
            out[n].append(rates[n])
    return {n: torch.cat(v) for n, v in out.items()}


def feeding_layer(graph: Graph, neuron: Node) -> tuple[Node, str | None] | None:
    """The conv/linear whose output drives ``neuron``, and the residual added to it (if any).

    Recognised: neuron ← conv/linear, and neuron ← add(conv/linear, residual) where the
    layer's output has no other reader. Anything else (a max pool ahead of the neuron, a
    concat, ...) returns None and the passes leave that neuron alone.
    """
    src = graph.producer(neuron.inputs[0])
    if src is None:
        return None
    if src.op in ("conv", "linear") and len(graph.consumers(src.outputs[0])) == 1:
        return src, None
    if src.op == "add" and len(src.inputs) == 2 and "const" not in src.params:
        for i, value in enumerate(src.inputs):
            layer = graph.producer(value)
            if layer is not None and layer.op in ("conv", "linear") and len(graph.consumers(value)) == 1:
                return layer, src.inputs[1 - i]
    return None


def channel_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but the channel axis (1): [C]."""
    dims = [d for d in range(t.dim()) if d != 1]
    return t.mean(dim=dims)


def progress(items, desc: str, ctx: PassContext):
    """A per-layer progress bar (stderr), silent when ``quiet`` is set."""
    return tqdm(items, desc=desc, unit="layer", leave=False, disable=bool(ctx.options.get("quiet")))
