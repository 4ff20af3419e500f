"""Activation statistics on calibration data, streaming and memory-bounded.

For every neuron site (the output of a ReLU or a Clip(0, c)) a :class:`StreamingHistogram`
keeps counts over [0, hi] in a fixed number of bins, per tensor or per channel. When a batch
exceeds ``hi``, ``hi`` doubles and neighbouring bins merge, so memory is fixed however much
data streams through. Percentiles and the MSE threshold search read the histogram; the
maximum is kept exactly. Percentiles count every element, zeros included (as SpikingJelly
does; snn_toolbox excludes zeros).
"""
from __future__ import annotations

import torch

from ..errors import SnncError
from ..ir import Graph, Node
from ..runtime.executor import Executor
from . import PassContext

NAME = "activation_stats"


class StreamingHistogram:
    """Fixed-size histogram of non-negative values, ``rows`` independent rows (channels)."""

    def __init__(self, rows: int, bins: int = 2048):
        self.rows, self.bins = rows, bins
        self.counts = torch.zeros(rows, bins, dtype=torch.float64)
        self.max = torch.zeros(rows, dtype=torch.float64)
        self.hi = 0.0

    def add(self, values: torch.Tensor) -> None:
        """Add a [rows, M] batch of values (negative values count as 0)."""
        values = values.detach().to(torch.float64).clamp_min(0.0)
        self.max = torch.maximum(self.max, values.amax(dim=1))
        top = float(values.max()) if values.numel() else 0.0
        if self.hi == 0.0:
            self.hi = max(top, 1e-12)
        while top > self.hi:  # grow the range by merging neighbouring bins: memory stays fixed
            merged = self.counts.view(self.rows, self.bins // 2, 2).sum(-1)
            self.counts = torch.cat([merged, torch.zeros_like(merged)], dim=1)
            self.hi *= 2.0
        idx = (values / self.hi * self.bins).long().clamp_(0, self.bins - 1)
        self.counts.scatter_add_(1, idx, torch.ones_like(values))

    def centers(self) -> torch.Tensor:
        """Bin centres [bins]."""
        return (torch.arange(self.bins, dtype=torch.float64) + 0.5) * (self.hi / self.bins)

    def percentile(self, q: float) -> torch.Tensor:
        """Per-row q-th percentile (0..100), linearly interpolated inside the bin, capped at the max."""
        cdf = self.counts.cumsum(1)
        total = cdf[:, -1:].clamp_min(1.0)
        target = total * (q / 100.0)
        idx = torch.searchsorted(cdf, target).clamp(max=self.bins - 1)
        below = torch.where(idx > 0, cdf.gather(1, (idx - 1).clamp_min(0)), torch.zeros_like(target))
        in_bin = self.counts.gather(1, idx).clamp_min(1e-12)
        frac = ((target - below) / in_bin).clamp(0, 1)
        value = (idx.double() + frac) * (self.hi / self.bins)
        return torch.minimum(value.squeeze(1), self.max)


def site_nodes(graph: Graph) -> list[Node]:
    """Nodes whose outputs will become neurons: ReLU and Clip(0, c)."""
    from ..ir.ops import conversion_kind

    return [n for n in graph.nodes if n.op in ("relu", "clip", "neuron") and conversion_kind(n) == "spiking"]


def collect(graph: Graph, data, *, channelwise: bool, batch_size: int = 128, bins: int = 2048,
            max_samples: int | None = None) -> dict[str, StreamingHistogram]:
    """Run the ANN over ``data`` (a Dataset) and histogram every site's output."""
    sites = {n.name for n in site_nodes(graph)}
    hists: dict[str, StreamingHistogram] = {}

    def observe(node, outs):
        if node.name not in sites:
            return
        a = outs[0]
        if not bool(torch.isfinite(a).all()):  # NaN weights, say: every threshold would be garbage
            raise SnncError(f"{node.where}: its activations on the calibration data are not finite (NaN or "
                            f"inf); check the model's weights")
        rows = a.transpose(0, 1).reshape(a.shape[1], -1) if channelwise and a.dim() >= 2 else a.reshape(1, -1)
        if node.name not in hists:
            hists[node.name] = StreamingHistogram(rows.shape[0], bins)
        hists[node.name].add(rows)

    ex = Executor(graph)
    seen = 0
    with torch.no_grad():
        for x, _ in data.batches(batch_size):
            if max_samples is not None and seen >= max_samples:
                break
            x = x[: None if max_samples is None else max_samples - seen]
            outputs = ex.run({graph.inputs[0].name: torch.from_numpy(x)}, observer=observe)
            for name, y in outputs.items():
                if not bool(torch.isfinite(y).all()):
                    raise SnncError(f"graph output '{name}' is not finite (NaN or inf) on the calibration data; "
                                    f"check the model's weights")
            seen += len(x)
    return hists


def run(graph: Graph, ctx: PassContext) -> Graph:
    """Collect histograms into ``ctx.report['histograms']`` (the graph is unchanged)."""
    opts = ctx.options
    hists = collect(graph, ctx.calib, channelwise=opts.get("channelwise", False),
                    max_samples=opts.get("calib_samples"))
    ctx.report["histograms"] = hists
    ctx.note(NAME, f"histogrammed {len(hists)} neuron sites over {min(len(ctx.calib), opts.get('calib_samples') or len(ctx.calib))} samples")
    return graph
