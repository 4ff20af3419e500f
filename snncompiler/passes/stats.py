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

from .. import distributed
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

    def add(self, values: torch.Tensor, top: float | None = None) -> None:
        """Add a [rows, M] batch of values (negative values count as 0). ``top``: the batch's
        largest value when it is larger than these values' own (the whole batch of which they are
        one rank's shard), so that every rank grows the range exactly as one process would."""
        values = values.detach().to(torch.float64).clamp_min(0.0)
        if values.shape[1]:
            self.max = torch.maximum(self.max, values.amax(dim=1))
        if top is None:
            top = float(values.max()) if values.numel() else 0.0
        if self.hi == 0.0:
            self.hi = max(top, 1e-12)
        while top > self.hi:  # grow the range by merging neighbouring bins: memory stays fixed
            merged = self.counts.view(self.rows, self.bins // 2, 2).sum(-1)
            self.counts = torch.cat([merged, torch.zeros_like(merged)], dim=1)
            self.hi *= 2.0
        idx = (values / self.hi * self.bins).long().clamp_(0, self.bins - 1)
        self.counts.scatter_add_(1, idx, torch.ones_like(values))

    def reduce(self) -> None:
        """Sum the counts and take the maxima over ranks (no-op without a process group). Every
        rank must have grown ``hi`` alike (:func:`collect` passes each batch's global ``top``)."""
        self.counts = distributed.all_reduce_sum(self.counts)
        self.max = distributed.all_reduce_max(self.max)

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


def collect(
    graph: Graph, data, *, channelwise: bool, batch_size: int = 128, bins: int = 2048, max_samples: int | None = None
) -> dict[str, StreamingHistogram]:
    """Run the ANN over ``data`` (a Dataset) and histogram every site's output.

    Under a process group every batch of ``batch_size`` samples is split across the ranks; the
    ranks agree on each batch's largest value before binning it and sum their counts at the end,
    so every rank ends with the histograms one process computes over all the samples."""
    sites = {n.name for n in site_nodes(graph)}
    hists: dict[str, StreamingHistogram] = {}
    sharded = distributed.is_distributed()
    pending: dict[str, torch.Tensor] = {}  # sharded: this batch's rows per site, binned once the ranks agree on top

    def observe(node, outs):
        if node.name not in sites:
            return
        a = outs[0]
        if not bool(torch.isfinite(a).all()):  # NaN weights, say: every threshold would be garbage
            raise SnncError(
                f"{node.where}: its activations on the calibration data are not finite (NaN or "
                f"inf); check the model's weights"
            )
        rows = a.transpose(0, 1).reshape(a.shape[1], -1) if channelwise and a.dim() >= 2 else a.reshape(1, -1)
        if node.name not in hists:
            hists[node.name] = StreamingHistogram(rows.shape[0], bins)
        if sharded:
            pending[node.name] = rows
        else:
            hists[node.name].add(rows)

    ex = Executor(graph)
    seen = 0
    with torch.no_grad():
        if sharded:  # every rank creates every histogram, even one whose shard of a batch is empty
            for x, _ in data.batches(1):
                ex.run({graph.inputs[0].name: torch.from_numpy(x)}, observer=observe)
                break
            pending.clear()
        for x, _ in data.batches(batch_size):
            if max_samples is not None and seen >= max_samples:
                break
            x = x[: None if max_samples is None else max_samples - seen]
            seen += len(x)
            x = distributed.shard(x)
            if len(x):
                outputs = ex.run({graph.inputs[0].name: torch.from_numpy(x)}, observer=observe)
                for name, y in outputs.items():
                    if not bool(torch.isfinite(y).all()):
                        raise SnncError(
                            f"graph output '{name}' is not finite (NaN or inf) on the calibration "
                            f"data; check the model's weights"
                        )
            if sharded:
                _add_sharded(hists, pending)
    for hist in hists.values():
        hist.reduce()
    return hists


def _add_sharded(hists: dict[str, StreamingHistogram], pending: dict[str, torch.Tensor]) -> None:
    """Bin one batch's shards: the ranks first agree on the batch's largest value per site."""
    names = sorted(hists)
    local = torch.tensor(
        [float(pending[n].max().clamp_min(0.0)) if n in pending and pending[n].numel() else 0.0 for n in names],
        dtype=torch.float64,
    )
    tops = distributed.all_reduce_max(local).tolist()
    for name, top in zip(names, tops):
        rows = pending.get(name)
        if rows is None:
            rows = torch.zeros(hists[name].rows, 0)
        hists[name].add(rows, top=top)
    pending.clear()


def run(graph: Graph, ctx: PassContext) -> Graph:
    """Collect histograms into ``ctx.report['histograms']`` (the graph is unchanged)."""
    opts = ctx.options
    hists = collect(graph, ctx.calib, channelwise=opts.get("channelwise", False), max_samples=opts.get("calib_samples"))
    ctx.report["histograms"] = hists
    ctx.note(
        NAME,
        f"histogrammed {len(hists)} neuron sites over {min(len(ctx.calib), opts.get('calib_samples') or len(ctx.calib))} samples",
    )
    return graph
