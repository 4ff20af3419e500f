"""Shared machinery of the layer-wise calibration passes.

Each calibration pass walks the neurons in topological order and, for one neuron at a time,
compares its ANN target (the original ANN's activation at that site) with its SNN rate (the
time-mean of its spikes over T steps), every upstream correction already in effect.

:class:`LayerwiseSimulator` makes that cheap: it simulates the spiking graph once, node by
node, over all T steps and all calibration samples at once, pausing at every neuron. A pass
changes a parameter and recomputes just the few nodes between the changed layer and the
neuron, instead of re-simulating the network from its input for every layer and round.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from .. import distributed
from ..ir import Graph, Node
from ..options import setting
from ..progress import progress_enabled
from ..runtime.executor import Executor
from ..runtime.snn import SpikingRunner, _dyn, _Static
from . import PassContext


def calibration_size(ctx: PassContext) -> int:
    """How many calibration inputs are used layer by layer (at most ``layer_samples``), over all ranks."""
    n = int(setting(ctx.options, "layer_samples"))
    return min(n, int(ctx.options.get("calib_samples") or n), len(ctx.calib))


def calibration_batch(ctx: PassContext) -> torch.Tensor:
    """The calibration inputs used layer by layer as one tensor: the first :func:`calibration_size`
    samples, or this rank's contiguous shard of them under a process group."""
    start, end = distributed.shard_range(calibration_size(ctx))
    return torch.from_numpy(ctx.calib.x[start:end]).float()


def calibration_memory(graph: Graph, samples: int, timesteps: int, population: int = 1) -> int:
    """Estimated bytes the layer-wise simulator holds: every value is kept over all T steps of
    every calibration sample at once ([T, N, ...] float32), and at a layer both its input and its
    output are live, so samples × T × 4 bytes × twice the largest per-sample activation; a neuron
    of ``population`` B > 1 also holds its B spike planes before their mean (B + 2 activations).
    Values whose shape is unknown count as the largest known one."""
    import math

    sizes = [math.prod(v.shape[1:]) for v in graph.values.values() if v.shape and len(v.shape) >= 1]
    largest = max(sizes, default=1)
    live = 2 if population <= 1 else population + 2
    return int(samples) * int(timesteps) * 4 * live * max(1, largest)


def reference_graph(graph: Graph, ctx: PassContext) -> Graph:
    """The ANN whose activations are the targets: the compiler's pre-neuronize graph if known,
    else this graph with every neuron as a plain ReLU (an artifact calibrated after the fact)."""
    ann = ctx.report.get("ann_graph")
    return ann if ann is not None else neurons_as_relu(graph)


def neurons_as_relu(graph: Graph) -> Graph:
    """A copy of a spiking graph with every neuron read back as a plain ReLU (its unclipped ANN)."""
    ann = graph.copy()
    for n in ann.find("neuron"):
        n.op, n.params, n.attrs = "relu", {}, {}
    return ann


def ann_targets(ann: Graph, x: torch.Tensor, values, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """The ANN's activations at ``values`` on x (unclipped: the targets of calibration)."""
    wanted = set(values)
    parts: dict[str, list] = {v: [] for v in wanted}

    def grab(node, outs):
        for name, t in zip(node.outputs, outs):
            if name in wanted:
                parts[name].append(t.detach())

    ex = Executor(ann)
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            ex.run({ann.inputs[0].name: x[s : s + batch_size]}, observer=grab)
    return {v: torch.cat(p) for v, p in parts.items()}


class LayerwiseSimulator:
    """The spiking graph over all T steps for a fixed input batch, one node at a time.

    Iterate :meth:`neurons`: each neuron is yielded once it (and everything before it) has
    been simulated. While paused, a pass may change parameters of the nodes that feed it and
    call :meth:`recompute` on them; values are kept until the next neuron is reached.
    """

    def __init__(self, graph: Graph, x: torch.Tensor, timesteps: int, backend: str = "auto"):
        self.graph, self.T = graph, int(timesteps)
        self.runner = SpikingRunner(graph, backend=backend)
        self.env: dict[str, object] = {graph.inputs[0].name: _Static(x.float())}
        self.state: dict = {}
        self.static: dict = {}
        self._last_use = {name: i for i, n in enumerate(graph.nodes) for name in n.inputs}

    def neurons(self):
        """Yield every neuron node in topological order, simulated and ready to inspect."""
        for i, node in enumerate(self.graph.nodes):
            with torch.no_grad():  # not around the yield: the caller may train (weight calibration)
                self._compute(node)
            if node.op == "neuron":
                yield node
                self._free(i)

    def recompute(self, *nodes: Node) -> None:
        """Re-simulate ``nodes`` (in the order given) after their parameters changed."""
        with torch.no_grad():
            for node in nodes:
                self._compute(node)

    def shift(self, value: str, delta: torch.Tensor) -> None:
        """Add a per-channel ``delta`` [C] to a stored value (a bias change without re-running the layer)."""
        v = self.env[value]
        t = v.t if isinstance(v, _Static) else v
        axis = 1 if isinstance(v, _Static) else 2  # dynamic values are [T, N, C, ...]
        shape = [1] * t.dim()
        shape[axis] = -1
        t.add_(delta.reshape(shape).to(t.dtype))

    def constant_input_rate(self, neuron: Node, current: torch.Tensor) -> torch.Tensor:
        """The rate of ``neuron`` (time-mean of its outputs over the T steps) when ``current``
        [N, ...] drives it at every step, as the runtime runs it: leak, reset, hard-reset gain,
        population and initial potential included. No gradient."""
        with torch.no_grad():
            out = self.runner.compute_node(neuron, {neuron.inputs[0]: _Static(current)}, self.T, 0, {}, {})[0]
            return _dyn(out, self.T).float().mean(0)

    def mean(self, value: str) -> torch.Tensor:
        """Time-mean of a value: [N, ...] (the rate, for spike trains)."""
        v = self.env[value]
        return v.t if isinstance(v, _Static) else v.float().mean(0)

    def _compute(self, node: Node) -> None:
        self.state.pop(node.name, None)  # a recomputed stateful node starts again from step 0
        for o in node.outputs:
            self.static.pop(o, None)
        outs = self.runner.compute_node(node, self.env, self.T, 0, self.state, self.static)
        self.env.update(zip(node.outputs, outs))

    def _free(self, upto: int) -> None:
        keep = {v.name for v in self.graph.outputs}
        for name in [k for k in self.env if self._last_use.get(k, -1) <= upto and k not in keep]:
            del self.env[name]


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


def fed_neurons(graph: Graph, neurons, ctx: PassContext, pass_name: str):
    """(neuron, layer, residual) for each neuron a conv/linear feeds; the others are noted and skipped."""
    for neuron in neurons:
        fed = feeding_layer(graph, neuron)
        if fed is None:
            ctx.note(pass_name, f"{neuron.name}: no conv/linear directly feeds it, left as is")
            continue
        yield neuron, fed[0], fed[1]


def feeding_chain(graph: Graph, neuron: Node, layer: Node) -> list[Node]:
    """The nodes to recompute after ``layer`` changed: the layer, a residual add, the neuron."""
    chain = [layer]
    src = graph.producer(neuron.inputs[0])
    if src is not layer:
        chain.append(src)
    return chain + [neuron]


def channel_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but the channel axis (1): [C] (over the samples of every rank)."""
    dims = [d for d in range(t.dim()) if d != 1]
    return distributed.mean(t, dims)


def progress(items, desc: str, ctx: PassContext, total: int | None = None):
    """A per-layer progress bar (stderr), silent when ``quiet`` is set, on ranks other than 0, and
    where every other bar is (stderr not a terminal, ``TQDM_DISABLE``: see :mod:`snncompiler.progress`)."""
    return tqdm(
        items,
        desc=desc,
        unit="layer",
        total=total,
        leave=False,
        disable=bool(ctx.options.get("quiet")) or not distributed.is_main() or not progress_enabled(),
    )


def start(graph: Graph, ctx: PassContext, desc: str):
    """What every layer-wise pass begins with: the simulator, the targets, and a progress bar."""
    x = calibration_batch(ctx)
    neurons = graph.find("neuron")
    targets = ann_targets(reference_graph(graph, ctx), x, [n.outputs[0] for n in neurons])
    sim = LayerwiseSimulator(graph, x, int(setting(ctx.options, "timesteps")), setting(ctx.options, "backend"))
    return sim, targets, progress(sim.neurons(), desc, ctx, len(neurons))
