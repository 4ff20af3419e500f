"""A compiled spiking graph as a standalone, trainable ``torch.nn.Module`` (``CompiledModel.to_torch()``).

:class:`SpikingModule` runs the graph through the one interpreter
(:meth:`~snncompiler.runtime.executor.Executor.interpret`) with an override, as training's
``GraphNet`` does, but keeps the spiking runtime's semantics (:mod:`snncompiler.runtime.snn`), so
``module(x, timesteps=T)`` returns what ``CompiledModel.run(x, timesteps=T)`` returns, as a
tensor: the mean over T steps of the graph output (a tuple for several outputs).

* Values that do not change over time (the directly encoded input and everything computed from
  it before the first neuron) are computed once on [B, ...], as the runtime does; the rest runs on
  the time-flattened batch [T·B, ...].
* Neurons run through the kernel op :func:`snncompiler.kernels.neuron_multistep` (backend
  ``"auto"``, with its surrogate-gradient backward), or, with ``backend="torch"``, through the
  plain-PyTorch loop :func:`~snncompiler.kernels.reference.neuron_multistep_reference` (the
  kernels' oracle, no custom op: the path for ``torch.compile`` and exotic devices).
* Weights, biases and thresholds are ``nn.Parameter``\\ s; other node tensors (hard-reset gains,
  potential offsets, constants) are buffers.
* Max pooling: ``rate`` as the increments of the window's largest running input sum (in float64,
  exact for spike counts), ``gated`` by the runtime's own function, ``output``/``input`` as the
  plain per-step max; analog islands on the running mean of their inputs, emitting increments of
  t·f(mean) as the runtime does.

Not supported, each a one-line error: rate-encoded inputs (random per step) and graphs that run
only one sample at a time.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import SnncError
from ..ir import Graph, Node
from ..ir.neuron import NeuronSpec, time_invariant
from ..ir.ops import broadcasts_constants, conversion_kind
from ..kernels.reference import f32
from ..kernels.surrogate import Heaviside, resolve
from .executor import Executor, fixed_batch
from .ops import IMPLEMENTATIONS, channel_view
from .snn import gated_maxpool_steps

#: Node tensors that become trainable parameters (θ of neurons too).
TRAINABLE = ("weight", "bias", "theta")
#: Neuron backends of :class:`SpikingModule`: the kernel op's dispatch, or the plain-torch loop.
MODULE_BACKENDS = ("auto", "torch", "reference", "cpu", "triton", "cuda")


def _key(name: str) -> str:
    return re.sub(r"\W", "_", name)  # module and parameter names may not contain '.'


def rate_maxpool_steps(node, seq: torch.Tensor) -> torch.Tensor:
    """The runtime's ``rate`` max pooling over a whole sequence [T, B, ...], differentiably: the
    increments of each window's largest running input sum (summed in float64, so the sums of
    spikes θ·s are exact and ties stay ties)."""
    sums = seq.to(torch.float64).cumsum(0)
    steps = seq.shape[0]
    pooled = IMPLEMENTATIONS["maxpool"](node, sums.flatten(0, 1))[0]
    pooled = pooled.reshape((steps, -1) + tuple(pooled.shape[1:]))
    return torch.diff(pooled, dim=0, prepend=torch.zeros_like(pooled[:1])).to(seq.dtype)


def _torch_neuron(
    x: torch.Tensor, v0, theta: torch.Tensor, decay: float, hard: bool, surrogate: str, alpha: float
) -> torch.Tensor:
    """The neuron over x [T, ...] in plain torch ops, in the kernels' float32 order (see
    :mod:`snncompiler.kernels.reference`, whose loop this is without its argument checks, so that
    torch.compile traces it whole); spikes θ·s, differentiable through the surrogate."""
    v = (v0 if isinstance(v0, torch.Tensor) else torch.tensor(v0)).to(x.device, torch.float32).expand(x.shape[1:])
    spikes = []
    for t in range(x.shape[0]):
        h = v + x[t].float() if decay == 1.0 else v * decay + x[t].float()
        s = Heaviside.apply(h - theta, surrogate, alpha)
        spikes.append(s)
        v = s * 0.0 + (1.0 - s) * h if hard else h - theta * s
    return (theta * torch.stack(spikes)).to(x.dtype)


class SpikingModule(nn.Module):
    """A neuronized IR graph as a standalone ``nn.Module``: ``forward(x, timesteps=T)`` is the mean
    output over T steps, as ``CompiledModel.run`` computes it (see the module docstring).

    ``backend``: ``"auto"`` (the kernel op: C++ on CPU, Triton/CUDA on GPU), an explicit kernel
    backend, or ``"torch"`` (the plain-PyTorch loop, no custom op). ``surrogate`` and ``alpha``
    shape the spike's gradient (default: the triangle as wide as each neuron's mean θ)."""

    def __init__(
        self,
        graph: Graph,
        options: dict,
        *,
        backend: str = "auto",
        surrogate: str = "triangle",
        alpha: float | None = None,
    ):
        super().__init__()
        if backend not in MODULE_BACKENDS:
            raise SnncError(f"backend: expected one of {', '.join(MODULE_BACKENDS)}, got {backend!r}")
        encoding = options.get("encoding", "direct")
        if encoding == "rate":
            raise SnncError(
                "to_torch: rate-encoded inputs are random at every step; only direct and sequence "
                "encodings have a module form"
            )
        if fixed_batch(graph):
            raise SnncError(
                f"to_torch: {graph.metadata.get('source_file', 'model')} runs only one sample at a time "
                "(its batch axis is fixed in the graph); re-export it with a dynamic batch axis"
            )
        self.graph = graph
        self.sequence = encoding == "sequence"
        self.timesteps = int(options.get("timesteps") or 1)
        resolve(surrogate, alpha)  # checked once here: forward passes it on unchecked
        self.backend, self.surrogate, self.alpha = backend, surrogate, alpha
        self.tensors = nn.ModuleDict()
        self._specs, self._alphas, self._decays = {}, {}, {}
        # submodule names: the node's name made an identifier, numbered so that two names that
        # differ only in punctuation ("/0/Conv", "_0_Conv") cannot collide
        self._keys = {node.name: f"{_key(node.name)}_{i}" for i, node in enumerate(graph.nodes)}
        for node in graph.nodes:
            holder = nn.Module()
            for key, value in node.params.items():
                if key in TRAINABLE and value.is_floating_point():
                    holder.register_parameter(key, nn.Parameter(value.detach().float().clone()))
                else:
                    holder.register_buffer(key, value.detach().clone())
            self.tensors[self._keys[node.name]] = holder
            if node.op == "neuron":
                self._specs[node.name] = NeuronSpec.from_attrs(node.attrs, where=node.where)
                # fixed here, not read from θ in forward: a Python float keeps torch.compile's graph whole
                mean = float(node.params["theta"].float().mean())
                self._decays[node.name] = f32(self._specs[node.name].decay)
                self._alphas[node.name] = float(alpha) if alpha is not None else 1.0 / max(mean, 1e-6)
        self._static, self._constant = time_invariant(graph, self.sequence)
        self._executor = Executor(graph)

    def extra_repr(self) -> str:
        """Nodes, neuron layers, backend and default T, for ``print(module)``."""
        neurons = len(self._specs)
        return f"{len(self.graph.nodes)} nodes, {neurons} neuron layers, backend={self.backend}, T={self.timesteps}"

    # ---- forward ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor, timesteps: int | None = None):
        """Mean output over ``timesteps`` steps (default: the compile T; under the sequence
        encoding x is [B, T_in, ...] and the default is T_in): [B, ...], or a tuple of them for
        a graph with several outputs."""
        steps = self.forward_steps(x, timesteps)
        outs = steps if isinstance(steps, tuple) else (steps,)
        # a mask or an index: its value at the last step, as SpikingRunner.run reports it
        means = tuple(o.sum(0) / o.shape[0] if o.is_floating_point() else o[-1] for o in outs)
        return means[0] if len(means) == 1 else means

    def forward_steps(self, x: torch.Tensor, timesteps: int | None = None):
        """The output at every step, [T, B, ...] (a tuple for several outputs): what TET-style
        losses supervise, and what ``SpikingRunner.run_steps`` returns."""
        if timesteps is None:
            timesteps = x.shape[1] if self.sequence else self.timesteps
        T = int(timesteps)
        if T < 1:
            raise SnncError(f"timesteps: must be ≥ 1, got {T}")
        g = self.graph
        if self.sequence:
            if x.dim() < 2 or x.shape[1] < T:
                raise SnncError(
                    f"timesteps: {T} steps asked for, but the input sequence has "
                    f"{x.shape[1] if x.dim() >= 2 else 'no'} steps (sequence inputs are [N, T, ...])"
                )
            batch = x.shape[0]
            feed = x[:, :T].transpose(0, 1).reshape((T * batch,) + tuple(x.shape[2:]))
        else:
            batch = x.shape[0]
            feed = x
        self._T, self._B = T, batch
        try:
            env = self._executor.interpret({g.inputs[0].name: feed.float()}, override=self._node)
        finally:
            self._T = self._B = None
        outs = []
        for v in g.outputs:
            value = env[v.name]
            if v.name in self._static:
                value = self._expand(value, T)
            else:
                value = value.reshape((T, batch) + tuple(value.shape[1:]))
            outs.append(value)
        return outs[0] if len(outs) == 1 else tuple(outs)

    @staticmethod
    def _expand(value: torch.Tensor, T: int) -> torch.Tensor:
        return value.unsqueeze(0).expand((T,) + tuple(value.shape))

    def _view(self, node) -> Node:
        """The node with this module's tensors (parameters and buffers) as its params."""
        holder = self.tensors[self._keys[node.name]]
        return Node(
            node.op,
            node.name,
            node.inputs,
            node.outputs,
            node.attrs,
            {key: getattr(holder, key) for key in node.params},
            node.source,
        )

    def _node(self, node, ins):
        """The interpreter's override: every node on this module's tensors, with the runtime's
        time semantics."""
        T = self._T
        view = self._view(node)
        if node.outputs[0] in self._static:
            return IMPLEMENTATIONS[node.op](view, *ins)
        seqs = [
            self._expand(v, T) if name in self._static else v.reshape((T, -1) + tuple(v.shape[1:]))
            for name, v in zip(node.inputs, ins)
        ]
        if node.op == "neuron":
            out = self._neuron(node, view, seqs[0])
        elif node.op == "maxpool" and node.attrs.get("spiking") == "rate":
            out = rate_maxpool_steps(view, seqs[0])
        elif node.op == "maxpool" and node.attrs.get("spiking") == "gated" and not node.attrs.get("global"):
            out = gated_maxpool_steps(view, seqs[0], {})  # the runtime's own; gradients reach the passed spikes
        elif conversion_kind(node) == "analog":
            outs = self._analog(
                view, seqs, [v if name in self._constant else None for name, v in zip(node.inputs, ins)]
            )
            return tuple(out.flatten(0, 1) for out in outs)
        else:  # a constant broadcasts over the folded [T·B, ...] as it did over [B, ...]: not expanded
            unexpanded = self._constant if broadcasts_constants(node.op) else set()
            res = IMPLEMENTATIONS[node.op](
                view, *[v if name in unexpanded else s.flatten(0, 1) for name, v, s in zip(node.inputs, ins, seqs)]
            )
            return tuple(res)
        return (out.flatten(0, 1),)

    def _neuron(self, node, view, seq: torch.Tensor) -> torch.Tensor:
        from ..kernels import population_mean, population_multistep

        spec = self._specs[node.name]
        theta = view.params["theta"]
        sample = seq[0]
        th = channel_view(theta, sample)
        v0 = spec.start_potential(th, sample.dim(), view.params.get("v_init"))
        gain = view.params.get("gain")
        if gain is not None:
            seq = seq * channel_view(gain, sample)
        alpha = self._alphas[node.name]
        if self.backend == "torch":
            b = spec.population
            xs = seq if b == 1 else seq.unsqueeze(1).expand((seq.shape[0], b) + tuple(sample.shape))
            spikes = _torch_neuron(xs, v0, th, self._decays[node.name], spec.reset == "hard", self.surrogate, alpha)
            return spikes if b == 1 else population_mean(spikes, th, b)
        spikes, _ = population_multistep(
            seq.contiguous(),
            v0,
            th,
            spec.population,
            decay=spec.decay,
            reset=spec.reset,
            backend=self.backend,
            surrogate=self.surrogate,
            alpha=alpha,
        )
        return spikes

    def _analog(self, view, seqs: list[torch.Tensor], constants: list) -> list[torch.Tensor]:
        """An analog island, as the spiking runtime runs it: f of its inputs' running means,
        emitted as increments of t·f(mean). A constant input is its own mean (broadcasting as
        it did over the batch); a mask from an island before is used at each step as it is."""
        T = self._T
        count = torch.arange(1, T + 1, device=seqs[0].device, dtype=torch.float32)
        means = []
        for s, constant in zip(seqs, constants):
            if constant is not None:
                means.append(constant)
            elif not s.is_floating_point():
                means.append(s.flatten(0, 1))
            else:
                # summed in float64 and rounded per step, as the runtime's running sums
                sums = s.double().cumsum(0).to(s.dtype)
                means.append((sums / count.reshape((-1,) + (1,) * (s.dim() - 1))).flatten(0, 1))
        emitted = []
        for out in IMPLEMENTATIONS[view.op](view, *means):
            out = out.reshape((T, -1) + tuple(out.shape[1:]))
            if out.is_floating_point():
                total = out * count.to(out.dtype).reshape((-1,) + (1,) * (out.dim() - 1))
                out = torch.diff(total, dim=0, prepend=torch.zeros_like(total[:1]))
            emitted.append(out)
        return emitted

    # ---- back into the IR -------------------------------------------------------------
    def write_back(self) -> Graph:
        """A copy of the graph holding this module's (trained) tensors."""
        graph = self.graph.copy()
        for node in graph.nodes:
            holder = self.tensors[self._keys[node.name]]
            for key in node.params:
                node.params[key] = getattr(holder, key).detach().cpu().clone().to(node.params[key].dtype)
        return graph
