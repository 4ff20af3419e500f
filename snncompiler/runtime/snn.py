"""The spiking runtime: run a converted graph for T steps over [T, B, ...], layer by layer.

* Stateless ops run once per chunk on the flattened [C·B, ...] batch (C steps of the chunk).
* Values that do not change over time (everything computed from a constant, directly encoded
  input before the first neuron) are computed once and broadcast: the first layer's current
  is computed a single time.
* Neurons go through one kernel op, :func:`snncompiler.kernels.neuron_multistep`, carrying
  their membrane across chunks, so memory does not grow with T.
* Analog islands (nonlinear ops that spikes cannot carry) see the running mean of their input
  over the steps so far (the rate-decoded input) and emit their output as current.
* Graph outputs are accumulated; the running mean at every step t ≤ T is available, so the
  accuracy at every T ≤ T_max comes from one T_max run.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings

import torch
import torch.nn.functional as F

from ..errors import OptionError, SnncError
from ..ir import Graph, Node
from ..ir.neuron import ENCODINGS, NeuronSpec, binary_outputs, time_invariant
from ..ir.ops import broadcasts_constants, conversion_kind
from ..limits import timestep_count
from ..options import CUDA_GRAPH_MODES, DEFAULT_CHUNK, MAX_CHUNK
from . import cuda_graphs
from .executor import checked_device, fixed_batch, on_device, one_thread
from .memory import retain_freed_memory
from .offset_spikes import offset_spike_start
from .ops import IMPLEMENTATIONS, _pool_out_size, _pool_setup, _windows, channel_view

#: Ops that only reshape a value: a neuron's outputs pass through them unchanged.
_SHAPE_OPS = ("flatten", "reshape")

# How `profile` groups the time spent per node (everything else is "other ops").
_PROFILE_GROUPS = {
    "neuron": "neurons",
    "conv": "conv/linear",
    "conv_transpose": "conv/linear",
    "linear": "conv/linear",
    "matmul": "conv/linear",
    "einsum": "conv/linear",
}


def auto_chunk(graph, batch: int, device: torch.device) -> int:
    """Steps per chunk when none is given: on CPU the largest power of two in
    [DEFAULT_CHUNK, MAX_CHUNK] whose largest activation (batch × steps × the graph's largest value,
    float32) fits the last-level cache; fewer steps per chunk only add per-node overhead and
    smaller GEMMs until the working set leaves the cache. DEFAULT_CHUNK on a GPU, and where no
    shape is known."""
    if device.type != "cpu":
        return DEFAULT_CHUNK
    from ..kernels.cpu import last_level_cache_bytes

    # values whose every non-batch axis is a known size (a symbolic one would make prod a string or fail)
    sizes = [
        math.prod(v.shape[1:])
        for v in graph.values.values()
        if v.shape and all(isinstance(d, int) for d in v.shape[1:])
    ]
    sizes = [s for s in sizes if s > 0]
    if not sizes:
        return DEFAULT_CHUNK
    fits = last_level_cache_bytes() // (4 * max(batch, 1) * max(sizes))
    chunk = DEFAULT_CHUNK
    while chunk * 2 <= min(fits, MAX_CHUNK):
        chunk *= 2
    return chunk


def _checked_presim(graph: Graph, presim) -> int:
    """``presim`` as an int, after checking that every neuron of ``graph`` can take the
    offset-spike correction (an IF neuron with soft reset, one per unit)."""
    if isinstance(presim, bool) or not isinstance(presim, numbers.Integral) or presim < 0:
        raise OptionError("presim", f"must be an integer ≥ 0 (pre-simulation steps; 0: none), got {presim!r}")
    if not presim:
        return 0
    presim = int(presim)  # a numpy integer too
    if fixed_batch(graph):
        raise OptionError("presim", "the graph runs one sample at a time, one step at a time (a fixed batch)")
    for node in graph.find("neuron"):
        spec = NeuronSpec.from_attrs(node.attrs, node.where)
        if spec.leaks or spec.reset != "soft" or spec.population != 1:
            raise OptionError(
                "presim",
                f"{node.where}: the offset-spike correction is for IF neurons with soft reset, one per "
                f"unit; this one is {spec.neuron}, {spec.reset} reset, population {spec.population}",
            )
    return presim


def _check_steps(timesteps: int, chunk: int | None) -> None:
    timestep_count(timesteps)
    if chunk is not None and chunk < 1:
        raise OptionError("chunk", f"must be ≥ 1, got {chunk}")


class _Static:
    """A value constant over time, stored once as [B, ...]."""

    __slots__ = ("t",)

    def __init__(self, t):
        self.t = t


def _single(values: list):  # also used by CompiledModel, for the same convention
    """One output as itself, several as a tuple (the ANN executor's convention)."""
    return values[0] if len(values) == 1 else tuple(values)


class _BinarySpikes:
    """A neuron's spikes as uint8 0/1 [steps, B, ...] (the kernel's "binary" format) and θ viewed
    against one sample: what a layer on the event kernel reads (a quarter of the bytes of the
    float32 spikes), kept as values only where something else needs them."""

    __slots__ = ("bits", "theta")

    def __init__(self, bits: torch.Tensor, theta: torch.Tensor):
        self.bits, self.theta = bits, theta

    def values(self) -> torch.Tensor:
        """The float32 spikes the "value" format gives: θ where a spike is, 0 elsewhere."""
        return torch.where(self.bits.bool(), self.theta.to(torch.float32), 0.0)


def _first_steps(value, steps: int):
    """A chunk's value cut to its first ``steps`` steps (a static value is the same at every step)."""
    if isinstance(value, _Static):
        return value
    if isinstance(value, _BinarySpikes):
        return _BinarySpikes(value.bits[:steps], value.theta)
    return value[:steps]


def _dyn(value, steps: int) -> torch.Tensor:
    """A value as [C, B, ...] (broadcasting a static one without copying; binary spikes as values)."""
    if isinstance(value, _Static):
        return value.t.unsqueeze(0).expand((steps,) + tuple(value.t.shape))
    if isinstance(value, _BinarySpikes):
        return value.values()
    return value


class SpikingRunner:
    """Runs a neuronized graph as an SNN. One runner holds state for one batch at a time."""

    def __init__(
        self,
        graph: Graph,
        *,
        backend: str = "auto",
        device: str = "cpu",
        encoding: str = "direct",
        seed: int = 0,
        exec_mode: str = "dense",
        cuda_graphs: str = "auto",
        presim: int = 0,
    ):
        from ..kernels.event import EXEC_MODES

        if encoding not in ENCODINGS:
            raise OptionError("encoding", f"expected {', '.join(ENCODINGS)}, got '{encoding}'")
        if exec_mode not in EXEC_MODES:
            raise OptionError("exec", f"expected {', '.join(EXEC_MODES)}, got '{exec_mode}'")
        self.exec_mode = exec_mode
        self.backend, self.encoding, self.seed = backend, encoding, seed
        #: pre-simulation steps per spiking layer for the offset-spike correction (0: none; see
        #: runtime/offset_spikes.py)
        self.presim = _checked_presim(graph, presim)
        self.device = checked_device(device)
        if self.device.type == "cpu":
            retain_freed_memory()  # chunk-sized tensors would be page-faulted afresh on every chunk
        # parameters are copied to the device: the graph is shared (a CompiledModel's) and stays where it is
        self.graph = graph = on_device(graph, self.device)
        self.steps_run = 0  # total simulated steps (tests count these, no timing)
        #: called with (samples, steps) after every simulated chunk (a progress bar); None: nothing
        self.on_chunk = None
        self.profile: dict[str, float] | None = None  # set to {} to accumulate seconds per op group
        # constants (independent of the input) meet the folded [steps·B, ...] values unexpanded
        # where the op broadcasts them, as the torch module and the standard export do
        self._constant = time_invariant(graph, encoding == "sequence")[1]
        self._last_use: dict[str, int] | None = None
        # θ of the neuron feeding each rate max pool: its input is then 0 or θ, so counting suffices
        self._spike_theta = {}
        for mp in graph.find("maxpool"):
            src = graph.producer(mp.inputs[0])
            if mp.attrs.get("spiking") == "rate" and src is not None and src.op == "neuron" and binary_outputs(src):
                self._spike_theta[mp.name] = src.params["theta"]
        self._nonnegative_theta = {name for name, th in self._spike_theta.items() if bool((th >= 0).all())}
        self._spikes = None  # running spike total, kept on the device: reading it would sync a GPU per layer
        self.neuron_steps = 0
        # auto: a layer read straight from a neuron (through flatten/reshape at most) takes its
        # chunk's spike count from the neuron kernel, which counts anyway; counting the input
        # again cost more than the event kernel saved on the sdconv SNN
        self._spike_source: dict[str, str] = {}
        self._chunk_spikes: dict[str, torch.Tensor] = {}
        self._event_layers = self._event_setup() if exec_mode != "dense" else {}
        #: value -> the value of a spike per channel, for the spikes that travel as uint8 0/1 (a
        #: neuron's whose readers are all event-kernel layers)
        self._binary_spikes: dict[str, torch.Tensor] = self._binary_setup()
        #: per spike-driven layer, the chunks each form ran (dense or an event form; chosen per chunk)
        self.exec_counts: dict[str, dict[str, int]] = {
            name: dict.fromkeys(("dense", *_event_forms()), 0) for name in self._event_layers
        }
        self._costs: dict[str, object] = {}  # per layer, kernels.exec_cost.Costs (measured or cached)
        if cuda_graphs not in CUDA_GRAPH_MODES:
            raise OptionError("cuda_graphs", f"expected {', '.join(CUDA_GRAPH_MODES)}, got '{cuda_graphs}'")
        self.cuda_graphs = cuda_graphs
        #: makes the chunk graphs (runtime/cuda_graphs.py); None: every chunk runs eagerly
        self._graph_factory = self._graph_setup(cuda_graphs)
        self._captured: dict[tuple, cuda_graphs.CapturedChunk] = {}
        self._warm: set[tuple] = set()  # chunk keys run eagerly once, ready to capture
        self.graph_replays = 0  # chunks run as a replayed CUDA graph (tests count these)

    def _graph_setup(self, mode: str):
        """The chunk-graph factory under ``--cuda-graphs mode``, or None (eager chunks)."""
        if mode == "off":
            return None
        reasons = cuda_graphs.blockers(self.graph, device=self.device, encoding=self.encoding, exec_mode=self.exec_mode)
        if not reasons:
            return cuda_graphs.CudaChunkGraph
        if mode == "on":
            raise SnncError(f"--cuda-graphs on: {reasons[0]}")
        if self.device.type == "cuda":
            _warn_once(f"--cuda-graphs auto: running every chunk eagerly: {reasons[0]}")
        return None

    def _event_setup(self) -> dict:
        """EventLayer (weights compressed once) for each conv/linear node whose input is spikes:
        produced by a neuron, directly or through flatten/reshape or a spiking max pool. Other
        layers stay dense."""
        from ..kernels import event

        if self.device.type != "cpu" or not event.available():
            where = (
                "the event kernel is CPU-only"
                if self.device.type != "cpu"
                else "the event-driven kernel (snncompiler.kernels._event_cpu) is not built"
            )
            _warn_once(f"--exec {self.exec_mode}: {where}; running every layer dense")
            return {}
        layers = {}
        for node in self.graph.nodes:
            if node.op not in ("conv", "linear") or not self._reads_spikes(node):
                continue
            layer = event.layer_for(node)
            if layer is not None:
                layers[node.name] = layer
                src = self._neuron_source(node)
                if src is not None:
                    self._spike_source[node.name] = src
        return layers

    def _binary_setup(self) -> dict:
        """The values that travel as binary spikes: {value name: θ per channel}. A neuron's
        spikes do when every reader is a layer on the event kernel taking them directly as its
        input, θ is one value per channel (or one in all) and the layers' input channels match:
        uint8 0/1 with θ per channel beside them, bit for bit the same currents
        (kernels/event.py) from a quarter of the bytes written and read. (Through max pools of
        the spikes themselves they could stay binary too; on the digits CNN that was a wash three
        times, the last with the gather form reading masks: 10.7 against 11.0 ms a batch, within
        the spread of runs, torch's uint8 pool costing about what its float32 pool does.)"""
        if not self._event_layers:
            return {}
        graph_outputs = {v.name for v in self.graph.outputs}
        binary = {}
        for node in self.graph.find("neuron"):
            out = node.outputs[0]
            users = self.graph.consumers(out)
            if out in graph_outputs or not users or not binary_outputs(node):  # a population emits k·θ/B
                continue
            if not all(u.name in self._event_layers and u.inputs[0] == out and out not in u.inputs[1:] for u in users):
                continue
            channels = {self._event_layers[u.name].weight_shape[1] * self._event_layers[u.name].groups for u in users}
            if len(channels) != 1:
                continue
            (c,) = channels
            theta = node.params["theta"].detach().to(torch.float32).cpu()
            if theta.numel() == 1:
                binary[out] = theta.reshape(1).expand(c).contiguous()
            elif theta.dim() >= 1 and theta.shape[0] == c == theta.numel():
                binary[out] = theta.reshape(c).contiguous()
            # else θ per neuron: a spike's value depends on more than its channel
        return binary

    def _walk_back(self, value: str, passes) -> tuple[Node | None, list[Node]]:
        """The producer reached from ``value`` by walking back through first inputs of the nodes
        ``passes`` accepts (ops that hand a neuron's outputs on unchanged in kind), and the
        nodes walked through, nearest first."""
        path, src = [], self.graph.producer(value)
        while src is not None and passes(src):
            path.append(src)
            src = self.graph.producer(src.inputs[0])
        return src, path

    def _reads_spikes(self, node: Node) -> bool:
        """Whether ``node`` reads a neuron's spikes: directly, through flatten/reshape or through a
        max pool of the spikes themselves ("rate", "gated", "output": 0 or θ again)."""
        src, _ = self._walk_back(
            node.inputs[0],
            lambda n: (
                n.op in _SHAPE_OPS or (n.op == "maxpool" and n.attrs.get("spiking") in ("rate", "gated", "output"))
            ),
        )
        return src is not None and src.op == "neuron"

    def _neuron_source(self, node: Node) -> str | None:
        """The neuron output that ``node`` reads unchanged in count (through flatten/reshape only)."""
        src, _ = self._walk_back(node.inputs[0], lambda n: n.op in _SHAPE_OPS)
        return src.outputs[0] if src is not None and src.op == "neuron" else None

    def _spikes_behind(self, name: str, value: torch.Tensor) -> torch.Tensor | None:
        """For a value carrying a population's outputs (through flatten/reshape and spiking max
        pools at most), the spikes behind each entry summed over the chunk's steps: an output
        k·θ/B is k spikes, each an event for the synapses reading it. None for any other value
        (an entry is one event)."""
        src, path = self._walk_back(name, lambda n: n.op in _SHAPE_OPS or n.op == "maxpool")
        if src is None or src.op != "neuron":
            return None
        # the last value with channels on axis 1: the nearest max pool's output, else the neuron's
        channels_at = next((n.outputs[0] for n in path if n.op == "maxpool"), None)
        population = NeuronSpec.from_attrs(src.attrs).population
        if population == 1:  # outputs of 0 or θ: one event each
            return None
        shape = self.graph.shape(channels_at or src.outputs[0])
        steps, batch = value.shape[:2]
        spikes = value.float().reshape((steps, batch) + tuple(int(d) for d in shape[1:]))
        unit = channel_view(src.params["theta"], spikes[0]).float() / population
        return torch.round(spikes / unit).sum(0).reshape(value.shape[1:])

    def _presim_steps(self, x: torch.Tensor) -> int:
        """Steps the pre-simulation reads: ``presim``, or the frames a shorter sequence input has."""
        return min(self.presim, x.shape[1]) if self.encoding == "sequence" else self.presim

    # ---- public -----------------------------------------------------------------------
    def run(self, x: torch.Tensor, timesteps: int, *, checkpoints=None, chunk: int | None = None) -> dict:
        """Simulate ``timesteps`` steps on input x [B, ...] ([B, T_in, ...] under the "sequence"
        encoding, timesteps ≤ T_in); return {t: mean output over steps 1..t} (a tuple of them, in
        graph order, for a graph with several outputs). An output that is not a float (a mask, an
        index: ArgMax, Greater) is its value at step t instead, in its own dtype: it was computed
        from the running means of steps 1..t, and its mean over the steps would be neither a
        mask nor an index.

        ``checkpoints`` (default: only ``timesteps``) selects the t to report; all come from
        this one run.
        """
        _check_steps(timesteps, chunk)
        checkpoints = sorted(set(checkpoints or [timesteps]))
        if checkpoints[0] < 1 or checkpoints[-1] > timesteps:
            raise OptionError("checkpoints", f"must lie in 1..{timesteps} (the steps run)")
        sums: list | None = None
        results: dict[int, list] = {}
        for done, steps, outs in self._simulate(x, timesteps, chunk):
            # a mask or an index (not a float) is reported as its value at step t (see the docstring)
            cums = [
                cumsum_steps(o.float(), sums[k] if sums is not None else None) if o.is_floating_point() else o
                for k, o in enumerate(outs)
            ]
            for t in checkpoints:
                if done < t <= done + steps:
                    results[t] = [c[t - done - 1] / t if c.is_floating_point() else c[t - done - 1] for c in cums]
            sums = [c[-1] for c in cums]
        return {t: _single(v) for t, v in results.items()}

    def run_steps(self, x: torch.Tensor, timesteps: int, *, chunk: int | None = None):
        """The output at every step (not averaged): [T, B, ...] (a tuple, one per graph output,
        when there are several). For cross-checks and decoding."""
        chunks = [outs for _, _, outs in self._simulate(x, timesteps, chunk)]
        return _single([torch.cat([c[k].float() for c in chunks]) for k in range(len(self.graph.outputs))])

    def rates(
        self, x: torch.Tensor, timesteps: int, names, *, chunk: int | None = None, stop_at: str | None = None
    ) -> dict:
        """Time-mean over ``timesteps`` steps of the named values, [B, ...] each (rate-decoded).

        With ``stop_at`` (a value name) nothing after that value is computed: calibration
        measures one layer at a time without paying for the rest of the network.
        """
        return self._time_means(x, timesteps, names, chunk, stop_at=stop_at)

    def event_rates(self, x: torch.Tensor, timesteps: int, names, *, chunk: int | None = None) -> dict:
        """Fraction of the ``timesteps`` steps in which each entry of the named values is nonzero,
        [B, ...] each: the events a layer reading that value must process (a spike, or any
        nonzero current). A value constant over time counts as an event at every step where it is
        nonzero."""
        return self._time_means(x, timesteps, names, chunk, events=True)

    def record(self, x: torch.Tensor, timesteps: int, names, *, chunk: int | None = None) -> dict:
        """The named values at every step, [timesteps, B, ...] each (on the CPU): spike trains
        of neuron outputs (θ·s) for rasters. Memory grows with T × B: for a few samples."""
        traces: dict[str, list] = {name: [] for name in names}
        for _ in self._simulate(x, timesteps, chunk, observe=set(names), sums={}, traces=traces):
            pass
        return {name: torch.cat(parts).cpu() for name, parts in traces.items()}

    def _time_means(self, x, timesteps, names, chunk, stop_at=None, events=False) -> dict:
        sums: dict[str, torch.Tensor] = {}
        for _ in self._simulate(x, timesteps, chunk, observe=set(names), sums=sums, stop_at=stop_at, events=events):
            pass
        return {k: v / timesteps for k, v in sums.items()}

    def _simulate(self, x, timesteps, chunk, observe=frozenset(), sums=None, stop_at=None, events=False, traces=None):
        _check_steps(timesteps, chunk)
        if self.encoding == "sequence" and (x.dim() < 2 or timesteps > x.shape[1]):
            have = f"{x.shape[1]} steps" if x.dim() >= 2 else "no time axis"
            raise SnncError(
                f"--timesteps: {timesteps} steps asked for, but the input sequence has {have} "
                "(sequence inputs are [N, T, ...])"
            )
        x = x.to(self.device, torch.float32)
        if chunk is None:
            chunk = auto_chunk(self.graph, len(x), self.device)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        state: dict = {}
        static: dict[str, _Static] = {}
        done = 0
        one_by_one = fixed_batch(self.graph)
        if one_by_one:  # one state per sample: the graph runs on [1, ...] only, one step at a time
            state, static = [{} for _ in range(len(x))], [{} for _ in range(len(x))]
        # plain runs replay captured chunks; observing values, profiling or stopping early run eagerly
        graphs = self._graph_factory is not None and not observe and stop_at is None and self.profile is None
        run_token = object()  # tells a captured chunk that its input buffers hold another run's values
        with torch.no_grad():
            while done < timesteps:
                # the first chunk holds the pre-simulation's steps (offset_spikes.py), even past
                # `timesteps` (then the last chunk: the steps past it are cut off below), so that
                # a run for T reports what a longer run reports at T
                presim = 0 if done else self._presim_steps(x)
                steps = min(max(chunk, presim), timesteps - done)
                run_steps = max(steps, presim)
                outs = None
                if one_by_one:
                    with one_thread():
                        env = self._chunk_per_sample(x, steps, done, state, static, gen, stop_at, observe)
                elif graphs and self._graph_factory is not None:
                    env, outs = {}, self._graph_chunk(x, run_steps, done, state, static, run_token)
                else:
                    env = self._chunk(x, run_steps, done, state, static, gen, stop_at, keep=observe)
                if run_steps > steps:
                    env = {name: _first_steps(value, steps) for name, value in env.items()}
                    outs = outs and [o[:steps] for o in outs]
                for name in observe:
                    value = env[name]
                    if isinstance(value, _BinarySpikes):
                        value = value.values()
                    if traces is not None:
                        traces[name].append(_dyn(value, steps).float().cpu())
                    if events:
                        if isinstance(value, _Static):
                            part = (value.t != 0).float() * steps
                        else:
                            part = self._spikes_behind(name, value)
                            part = (value != 0).float().sum(0) if part is None else part
                    else:
                        part = value.t * steps if isinstance(value, _Static) else value.float().sum(0)
                    sums[name] = sums[name] + part if name in sums else part
                if outs is None and not stop_at:
                    outs = [_dyn(env[v.name], steps) for v in self.graph.outputs]
                yield done, steps, outs
                done += steps
                self.steps_run += steps
                if self.on_chunk is not None:
                    self.on_chunk(len(x), steps)

    @property
    def spike_count(self) -> float:
        """Spikes emitted by all neurons over everything run so far."""
        return float(self._spikes) if self._spikes is not None else 0.0

    @property
    def firing_rate(self) -> float:
        """Mean spikes per neuron per step over everything run so far."""
        return self.spike_count / self.neuron_steps if self.neuron_steps else 0.0

    # ---- one chunk as a CUDA graph (runtime/cuda_graphs.py) -------------------------------
    def _graph_chunk(self, x, steps, t0, state, static, run_token) -> list:
        """The outputs of one chunk, replayed from its captured graph; a chunk of a shape not
        seen before runs eagerly once (the warm-up) and is captured the next time it comes."""
        key = (tuple(x.shape), steps, t0 == 0)  # the first chunk starts the state; the others carry it
        captured, check = self._captured.get(key), None
        if captured is None and key in self._warm and len(self._captured) < cuda_graphs.MAX_GRAPHS:
            captured = self._capture(key, x, steps, state, static)
            if captured is not None:  # its first replay is checked against the same chunk run eagerly
                check = self._eager_check(x, steps, t0, state, static)
        if captured is None:
            self._warm.add(key)
            with cuda_graphs.side_stream(self.device):
                env = self._chunk(x, steps, t0, state, static, None)
            return [_dyn(env[v.name], steps) for v in self.graph.outputs]
        if captured.run is not run_token:  # a new run: its input and static values into the buffers
            captured.x.copy_(x)
            captured.run = run_token
        for name, buffer in captured.static_in.items():
            if static[name] is not buffer:
                buffer.t.copy_(static[name].t)
                static[name] = buffer
        for name, buffer in captured.state_in.items():
            if state[name] is not buffer:
                buffer.copy_(state[name])
                state[name] = buffer
        captured.graph.replay()
        self.graph_replays += 1
        state.update(captured.state_out)
        static.update(captured.static_out)
        self._spikes = captured.count.clone() if self._spikes is None else self._spikes + captured.count
        self.neuron_steps += captured.neuron_steps
        outs = [out.clone() for out in captured.outs]  # the next replay overwrites the captured ones
        if check is not None:
            return self._checked_replay(key, outs, captured, state, static, check)
        return outs

    def _eager_check(self, x, steps, t0, state, static) -> dict:
        """The chunk run eagerly on the state a freshly captured graph is about to start from,
        leaving ``state``, ``static`` and the runner's totals as they were: what its first replay
        must give (see :meth:`_checked_replay`)."""
        totals = self._spikes, self.neuron_steps
        ref_state, ref_static = dict(state), dict(static)  # the chunk replaces entries, never writes into them
        env = self._chunk(x, steps, t0, ref_state, ref_static, None)
        check = {
            "outs": [_dyn(env[v.name], steps).clone() for v in self.graph.outputs],
            "state": ref_state,
            "static": ref_static,
            "totals": (self._spikes, self.neuron_steps),
        }
        self._spikes, self.neuron_steps = totals
        return check

    def _checked_replay(self, key, outs, captured, state, static, check) -> list:
        """A new graph's first replay against the eager chunk: where they differ (a kernel the
        capture missed, an address that moved), the graphs go (an error under ``--cuda-graphs
        on``) and the eager results stand."""
        problem = _differs(check["outs"], outs, "output") or _differs(
            [check["state"][k] for k in captured.state_out], list(captured.state_out.values()), "state"
        )
        if problem is None:
            return outs
        if self.cuda_graphs == "on":
            raise SnncError(f"--cuda-graphs on: a replayed chunk differs from the same chunk run eagerly: {problem}")
        _warn_once(f"--cuda-graphs auto: a replayed chunk differs from the eager chunk ({problem}); running eagerly")
        self._graph_factory, self._captured = None, {}
        state.clear()
        state.update(check["state"])
        static.clear()
        static.update(check["static"])
        self._spikes, self.neuron_steps = check["totals"]
        return check["outs"]

    def _capture(self, key, x, steps, state, static):
        """Capture the chunk ``key`` on buffers of its own (see the module docstring of
        runtime/cuda_graphs.py); None, with the graphs off from here on, where capturing fails
        under ``--cuda-graphs auto``."""
        if any(not isinstance(v, torch.Tensor) for v in state.values()):
            return None  # blockers() keeps host-side state out; a value that is not a tensor cannot be replayed
        x_in = x.clone()
        state_in = {name: v.clone() for name, v in state.items()}
        static_in = {name: _Static(v.t.clone()) for name, v in static.items()}
        work_state: dict = {}
        work_static: dict = {}  # the chunk adds the static values it computes (a first chunk: all of them)
        neuron_steps = []

        def step():
            """The chunk as a function of the input buffers alone (what a replay reads), leaving
            the runner's totals as they were: its outputs, then its spike count."""
            work_state.clear()
            work_state.update(state_in)
            work_static.clear()
            work_static.update(static_in)
            totals = self._spikes, self.neuron_steps
            self._spikes, self.neuron_steps = None, 0
            try:
                env = self._chunk(x_in, steps, 0, work_state, work_static, None)
                count = (
                    self._spikes if self._spikes is not None else torch.zeros((), dtype=torch.int64, device=x.device)
                )
                neuron_steps[:] = [self.neuron_steps]
            finally:
                self._spikes, self.neuron_steps = totals
            for name, buffer in state_in.items():  # the next replay starts from this chunk's end
                buffer.copy_(work_state[name])
            return [_dyn(env[v.name], steps) for v in self.graph.outputs] + [count]

        try:
            graph = self._graph_factory(self.device)
            *outs, count = graph.capture(step, list(state_in.values()))
        except Exception as exc:
            if self.cuda_graphs == "on":
                raise SnncError(f"--cuda-graphs on: capturing a chunk failed: {_first_line(exc)}") from exc
            _warn_once(f"--cuda-graphs auto: capturing a chunk failed, running eagerly: {_first_line(exc)}")
            self._graph_factory = None
            return None
        # a steady chunk's state lives in (and is carried by) its input buffers; a first chunk's in
        # the tensors it made, which each replay overwrites
        state_out = state_in if state_in else work_state
        captured = cuda_graphs.CapturedChunk(
            graph, x_in, static_in, state_in, work_static, state_out, outs, count, neuron_steps[0]
        )
        self._captured[key] = captured
        return captured

    # ---- one chunk ----------------------------------------------------------------------
    def _chunk(self, x, steps, t0, state, static, gen, stop_at=None, keep=frozenset()):
        g = self.graph
        env: dict[str, object] = {}
        if self._last_use is None:
            self._last_use = {name: i for i, n in enumerate(g.nodes) for name in n.inputs}
        keep = set(keep) | {v.name for v in g.outputs}
        name = g.inputs[0].name
        if self.encoding == "rate":
            p = x.clamp(0, 1).unsqueeze(0).expand((steps,) + tuple(x.shape))
            env[name] = (torch.rand(p.shape, generator=gen).to(self.device) < p).float()
        elif self.encoding == "sequence":
            env[name] = x[:, t0 : t0 + steps].transpose(0, 1)  # [steps, B, ...]: this chunk's frames
        else:
            env[name] = _Static(x)
        for i, node in enumerate(g.nodes):
            started = time.perf_counter() if self.profile is not None else 0.0
            try:
                outs = self.compute_node(node, env, steps, t0, state, static)
            except SnncError:
                raise
            except Exception as exc:  # out of memory, a shape a damaged file let through, ...: name the node
                raise SnncError(
                    f"{node.where}: {node.op} failed in the spiking runtime: "
                    f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                ) from exc
            for name, value in zip(node.outputs, outs):
                env[name] = value
            if self.profile is not None:
                key = _PROFILE_GROUPS.get(node.op, "other ops")
                self.profile[key] = self.profile.get(key, 0.0) + time.perf_counter() - started
            if stop_at is not None and stop_at in node.outputs:
                break
            for name in node.inputs:  # free what no later node reads: memory stays bounded
                if self._last_use.get(name) == i and name not in keep:
                    env.pop(name, None)
        return env

    def _chunk_per_sample(self, x, steps, t0, states, statics, gen, stop_at, observe) -> dict:
        """A chunk of a fixed-batch graph: every step of every sample on its own, stacked into
        [steps, B, ...] for the observed values and the graph outputs."""
        names = set(observe) | {v.name for v in self.graph.outputs}
        parts: dict[str, list] = {}
        for step in range(steps):
            per_sample: dict[str, list] = {}
            for b in range(len(x)):
                env = self._chunk(x[b : b + 1], 1, t0 + step, states[b], statics[b], gen, stop_at, keep=names)
                for name in names & env.keys():
                    per_sample.setdefault(name, []).append(_dyn(env[name], 1))
            for name, values in per_sample.items():
                parts.setdefault(name, []).append(torch.cat(values, dim=1))
        return {name: torch.cat(values) for name, values in parts.items()}

    def compute_node(self, node: Node, env: dict, steps: int, t0: int, state: dict, static: dict):
        """Outputs of one node over ``steps`` steps from ``env``: static values are computed once
        (cached in ``static``), stateful ops (neurons, gated pools, analog islands) carry ``state``."""
        ins = [env[i] for i in node.inputs]
        if node.op != "neuron" and all(isinstance(v, _Static) for v in ins):
            if node.outputs[0] not in static:
                for o, t in zip(node.outputs, IMPLEMENTATIONS[node.op](node, *[v.t for v in ins])):
                    static[o] = _Static(t)
            return [static[o] for o in node.outputs]
        if node.op == "neuron":
            return [self._neuron(node, _dyn(ins[0], steps), state)]
        if node.op == "maxpool" and node.attrs.get("spiking") == "gated" and not node.attrs.get("global"):
            return [gated_maxpool_steps(node, _dyn(ins[0], steps), state)]
        if node.op == "maxpool" and node.attrs.get("spiking") == "rate":
            return [self._rate_maxpool(node, _dyn(ins[0], steps), state)]
        if conversion_kind(node) == "analog":
            return self._analog(node, ins, steps, state, t0)
        layer = self._event_layers.get(node.name)
        if layer is not None:  # one choice of form per chunk, on what the layer reads
            binary = isinstance(ins[0], _BinarySpikes)
            x = ins[0].bits.flatten(0, 1) if binary else _dyn(ins[0], steps).flatten(0, 1)
            form = self._event_form(node, layer, x)
            if form != "dense":
                out = layer(x, form, self._binary_spikes[node.inputs[0]] if binary else None)
                return [out.reshape((steps, -1) + tuple(out.shape[1:]))]
        unexpanded = self._constant if broadcasts_constants(node.op) else ()
        flat = [  # dense: binary spikes as their values
            v.t if name in unexpanded else _dyn(v, steps).flatten(0, 1) for name, v in zip(node.inputs, ins)
        ]
        return [t.reshape((steps, -1) + tuple(t.shape[1:])) for t in IMPLEMENTATIONS[node.op](node, *flat)]

    def _event_form(self, node: Node, layer, x: torch.Tensor) -> str:
        """The form this chunk of a spike-driven layer runs in: the cheapest at the chunk's spike
        density by the layer's cost model (kernels/exec_cost.py: measured on first use, cached),
        among the event forms the layer has under ``event``, and dense too under ``auto``."""
        from ..kernels import event, exec_cost

        candidates = exec_cost.FORMS if self.exec_mode == "auto" else event.FORMS
        forms = [f for f in candidates if f == "dense" or layer.supports(f)]
        costs = self._costs.get(node.name)
        if costs is None:
            costs = self._costs[node.name] = exec_cost.costs_for(
                layer,
                tuple(x.shape[1:]),
                lambda t: IMPLEMENTATIONS[node.op](node, t),
                binary=x.dtype == torch.uint8,
                rows=x.shape[0],
            )
        form = costs.only_choice(forms)
        if form is None:  # the choice depends on the density: count this chunk's nonzero inputs
            count = self._chunk_spikes.get(self._spike_source.get(node.name, ""))
            if count is None:
                count = event.count_nonzero(x)
            density = float(count) / max(1, x.numel())
            form = costs.best(density, forms)
        self.exec_counts[node.name][form] += 1
        return form

    def _neuron(self, node: Node, x: torch.Tensor, state: dict) -> torch.Tensor:
        from ..kernels import neuron_multistep, population_multistep

        theta = node.params["theta"]
        sample = x[0]
        th = channel_view(theta, sample)
        v = state.get(node.name)
        spec = NeuronSpec.from_attrs(node.attrs)
        gain = node.params.get("gain")
        if gain is not None:  # hard-reset compensation (passes/hard_reset.py): fire at θ/g, spikes still carry θ
            x = x * channel_view(gain, sample)
        if v is None:  # left broadcast (scalar or per channel): the C++ kernel reads it unexpanded
            v = spec.start_potential(th, sample.dim(), node.params.get("v_init"))
            if self.presim:
                v = offset_spike_start(x[: self.presim], v, th)
        decay = spec.decay
        # the C++ kernel counts spikes as it runs (a separate pass over them would cost half the
        # kernel; on the GPU the count stays on the device, so no sync per layer), and reads a
        # static input (the first layer's current) at every step without a T-fold copy
        binary = node.outputs[0] in self._binary_spikes
        if spec.population > 1:
            spikes, v, count = population_multistep(
                x, v, th, spec.population, decay=decay, reset=spec.reset, backend=self.backend, return_count=True
            )
        else:
            spikes, v, count = neuron_multistep(
                x,
                v,
                th,
                decay=decay,
                reset=spec.reset,
                backend=self.backend,
                spike_format="binary" if binary else "value",
                return_count=True,
            )
        state[node.name] = v
        if self._spike_source and spec.population == 1:  # a population's nonzero outputs ≠ its spikes
            self._chunk_spikes[node.outputs[0]] = count
        self._spikes = count if self._spikes is None else self._spikes + count
        self.neuron_steps += spikes.numel() * spec.population
        return _BinarySpikes(spikes, th) if binary else spikes

    def _analog(self, node: Node, ins: list, steps: int, state: dict, t0: int) -> list[torch.Tensor]:
        """An analog island: the op applied to its inputs' running means (the rate-decoded
        values so far), each float output emitted as increments (see below), a mask or an index
        as it is."""
        means = []
        for k, (name, v) in enumerate(zip(node.inputs, ins)):
            if name in self._constant:  # its own mean, broadcasting over steps and samples
                means.append(v.t)
                continue
            x = _dyn(v, steps)
            if not x.is_floating_point():
                # a mask (or index) from an island before: already computed from the running
                # means, so this step's value is the current estimate (its average is not a mask)
                means.append(x.reshape((-1,) + tuple(x.shape[2:])))
                continue
            key = (node.name, k)
            cum, state[key] = running_sums(x, state.get(key))  # chunking-independent, ties stay ties
            count = torch.arange(t0 + 1, t0 + steps + 1, device=x.device, dtype=torch.float32)
            means.append((cum / count.reshape((-1,) + (1,) * (x.dim() - 1))).reshape((-1,) + tuple(x.shape[2:])))
        emitted = []
        for k, out in enumerate(IMPLEMENTATIONS[node.op](node, *means)):
            out = out.reshape((steps, -1) + tuple(out.shape[1:]))
            if not out.is_floating_point():
                emitted.append(out)
                continue
            # emit increments of t·f(mean so far): the output's own running mean is then exactly f
            # of the input's running mean at every step, so the error shrinks like the input's
            # (O(1/t)) instead of averaging the early, poorly decoded steps into every later output
            count = torch.arange(t0 + 1, t0 + steps + 1, device=out.device, dtype=out.dtype)
            total = out * count.reshape((-1,) + (1,) * (out.dim() - 1))
            previous = state.get((node.name, "out", k))
            state[(node.name, "out", k)] = total[-1]
            start = torch.zeros_like(total[:1]) if previous is None else previous.unsqueeze(0)
            emitted.append(torch.diff(total, dim=0, prepend=start))
        return emitted

    def _rate_maxpool(self, node: Node, s: torch.Tensor, state: dict) -> torch.Tensor:
        """Max pooling of rates: emit the increments of the window's largest running input sum.

        The output's running sum is then exactly max_i Σ_τ≤t x_i(τ), so its rate is the max of the
        input rates so far; for spike inputs (0 or θ) each increment is itself 0 or θ, a spike.
        Fed by a neuron, the sums are spike counts (exact in float32) times its θ; otherwise the
        input values are summed in float64.
        """
        steps = s.shape[0]
        theta = self._spike_theta.get(node.name)
        if theta is not None:
            fast = _rate_maxpool_kernel(node, s, theta, state)
            if fast is not None:
                return fast
        dtype = torch.float64 if theta is None else torch.float32
        if theta is None:
            x = s.to(dtype)
        elif node.name in self._nonnegative_theta:
            x = torch.sign(s)  # spikes are 0 or θ ≥ 0: the same 0/1 counts, one pass instead of three
        else:
            x = (s != 0).to(dtype)
        sums = cumsum_steps(x, state.get(node.name))
        state[node.name] = sums[-1]
        pooled = IMPLEMENTATIONS["maxpool"](node, sums.flatten(0, 1))[0]
        pooled = pooled.reshape((steps, -1) + tuple(pooled.shape[1:]))
        previous = state.get((node.name, "max"))
        if previous is None:
            previous = torch.zeros_like(pooled[0])
        state[(node.name, "max")] = pooled[-1]
        out = torch.diff(pooled, dim=0, prepend=previous.unsqueeze(0))
        if theta is None:
            return out.to(s.dtype)
        return out.to(s.dtype) * channel_view(theta, out[0]).to(s.dtype)


def running_sums(x: torch.Tensor, carry=None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`snncompiler.kernels.event.running_sums` (float32 sums and a float64 carry),
    imported late as the kernels are."""
    from ..kernels.event import running_sums as carried_sums

    return carried_sums(x, carry)


def cumsum_steps(x: torch.Tensor, init=None) -> torch.Tensor:
    """``x.cumsum(0) + init`` over the time axis: :func:`snncompiler.kernels.event.cumsum_steps`
    (the C++ kernel for float32 CPU tensors, torch otherwise), imported late as the kernels are."""
    from ..kernels.event import cumsum_steps as running_sums

    return running_sums(x, init)


def _rate_maxpool_kernel(node: Node, s: torch.Tensor, theta: torch.Tensor, state: dict) -> torch.Tensor | None:
    """Rate max pooling of spikes s [steps, B, C, H, W] on the C++ kernel (one pass instead of
    cumsum, pooling, diff and a product: the cumsum alone was half of the digits CNN's run time),
    carrying the same state as :meth:`SpikingRunner._rate_maxpool`; None where it does not apply
    (not float32 CPU 2-D pooling of spikes, dilation, a global pool) and torch runs it."""
    from ..kernels import event

    if s.dim() != 5 or node.attrs.get("global") or set(node.attrs.get("dilation", [1, 1])) != {1}:
        return None
    nd, kernel, stride, pads = _pool_setup(node, s[0])
    ceil_mode = node.attrs.get("ceil_mode", 0)
    out_hw = [
        _pool_out_size(s.shape[3 + i], kernel[i], stride[i], pads[i], pads[nd + i], 1, ceil_mode) for i in range(nd)
    ]
    if nd != 2 or min(out_hw) < 1:
        return None
    result = event.rate_max_pool_steps(
        s, theta, kernel, stride, pads[:2], out_hw, state.get(node.name), state.get((node.name, "max"))
    )
    if result is None:
        return None
    out, state[node.name], state[(node.name, "max")] = result
    return out


def gated_maxpool_steps(node: Node, s: torch.Tensor, state: dict) -> torch.Tensor:
    """``gated`` max pooling of spikes s [steps, B, C, ...]: each window passes the spikes of the
    input with the highest running spike count (ties to the first input of the window), the
    counts carried in ``state`` across chunks. Also used by :mod:`snncompiler.runtime.module`."""
    steps, batch = s.shape[:2]
    nd = s.dim() - 3
    kernel, stride = list(node.attrs["kernel"]), list(node.attrs.get("stride", [1] * nd))
    pads, dilation = list(node.attrs.get("pads", [0] * 2 * nd)), list(node.attrs.get("dilation", [1] * nd))
    ceil_mode = node.attrs.get("ceil_mode", 0)
    # running spike counts up to and including this step choose the input a window passes;
    # counting the current spike lets an input that fires now win ties in the first steps
    plane = math.prod(s.shape[3:])
    total = float(state.get((node.name, "steps"), 0) + steps)
    # count + tie-break fraction stays ordered in float32 while count·(plane+1) < 2^23
    dtype = torch.float32 if total * (plane + 1) < 2**23 else torch.float64
    counts_so_far = cumsum_steps((s != 0).to(dtype), state.get(node.name))
    state[node.name] = counts_so_far[-1]
    state[(node.name, "steps")] = total
    flat_s = s.reshape((-1,) + tuple(s.shape[2:]))
    # Ties go to the first input of the window, explicitly: torch's max_pool breaks ties
    # differently in its vectorised paths, which made results depend on the chunk size.
    first_wins = -torch.arange(plane, dtype=dtype, device=s.device).reshape(s.shape[3:]) / (plane + 1)
    counts = counts_so_far.reshape(flat_s.shape) + first_wins
    cp = _windows(counts, nd, kernel, stride, pads, dilation, ceil_mode, float("-inf"))
    sp = _windows(flat_s, nd, kernel, stride, pads, dilation, ceil_mode, 0.0)
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
    _, idx = fn(cp, kernel, stride, 0, dilation, return_indices=True)
    picked = sp.flatten(2).gather(2, idx.flatten(2)).reshape(idx.shape)
    return picked.reshape((steps, batch) + tuple(picked.shape[1:]))


_warned: set[str] = set()


def _event_forms() -> tuple[str, ...]:
    """The event kernel's forms (kernels/event.py), imported late as the kernels are."""
    from ..kernels import event

    return event.FORMS


def _differs(want: list, got: list, what: str) -> str | None:
    """Where two lists of tensors differ by more than float32 rounding of their largest value
    could (a flipped spike moves a value by θ), as words; None where they agree."""
    for k, (a, b) in enumerate(zip(want, got)):
        if a.shape != b.shape:
            return f"{what} {k} has shape {tuple(b.shape)}, not {tuple(a.shape)}"
        if a.numel() == 0:
            continue
        diff = float((a.double() - b.double()).abs().max())
        scale = float(a.double().abs().max())
        if not diff <= 1e-5 * max(scale, 1e-30):  # also catches NaN
            return f"{what} {k} by up to {diff:.3g} (values up to {scale:.3g})"
    return None


def _first_line(exc: Exception) -> str:
    """An exception's first line (its type where it has no message), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _warn_once(message: str) -> None:
    """A RuntimeWarning the first time ``message`` comes up in this process (runners are created
    per call, the fallback is said once)."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def output_steps(timesteps: int) -> list[int]:
    """Powers of two up to ``timesteps`` (and ``timesteps`` itself): the default report points."""
    return sorted({2**k for k in range(int(math.log2(timesteps)) + 1)} | {timesteps})
