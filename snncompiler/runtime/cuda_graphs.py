"""CUDA graphs for the spiking runtime: a chunk of steps captured once, then replayed as one launch.

On a GPU a chunk of a small network is dozens of short kernels, each launched from Python; the
neuron op's argument handling alone cost about 50 µs a call on an H200, more than its kernel on
layers under 2^20 neurons (benchmarks/results/kernels_gpu.json). Captured as a CUDA graph, the
whole chunk is one launch and the host is free after it. :class:`~.snn.SpikingRunner` captures,
per input shape and chunk length:

* the *first* chunk of a run (it computes the values constant over time, such as the first
  layer's current, and starts every membrane), and
* the *steady* chunk (every later chunk), whose new state (membranes, running sums) is copied
  back into its own input buffers at the end of the graph, so that replays chain.

A graph replays the recorded kernels on fixed addresses, so the runner copies a new run's input,
its static values and the state it starts from into the graph's buffers (only when they are not
those buffers already) and clones the outputs after each replay. A shape is run eagerly once
before it is captured (the warm-up creates cuBLAS/cuDNN workspaces and the op's cached scalars,
none of which may be allocated during a capture).

Host-side decisions per chunk cannot be replayed; :func:`blockers` names the graphs and settings
that have them, and the runner then runs eagerly (``--cuda-graphs auto`` says so once, ``on`` is
an error naming the reason).
"""

from __future__ import annotations

import contextlib

import torch

from ..ir import Graph
from ..ir.ops import conversion_kind
from .executor import fixed_batch

#: Captured graphs one runner keeps (per input shape, chunk length, first or steady chunk); later
#: shapes run eagerly. Each holds a chunk's activations in its own memory pool.
MAX_GRAPHS = 8


def blockers(graph: Graph, *, device: torch.device, encoding: str, exec_mode: str) -> list[str]:
    """Why a chunk of ``graph`` run with these settings cannot be replayed as a CUDA graph (each
    reason one phrase, naming the node where one is to blame); empty when it can."""
    reasons = []
    if device.type != "cuda":
        reasons.append(f"the runner is on {device}, CUDA graphs need a GPU")
    if encoding == "rate":
        reasons.append("--encoding rate draws the input spikes on the host at every chunk")
    elif encoding == "sequence":
        reasons.append("--encoding sequence reads a new slice of the input at every chunk")
    if exec_mode != "dense":
        reasons.append(f"--exec {exec_mode} picks each layer's kernel on the host at every chunk")
    if fixed_batch(graph):
        reasons.append("the graph runs one sample at a time (a fixed batch)")
    for node in graph.nodes:
        if conversion_kind(node) == "analog":
            reasons.append(f"{node.where}: the analog {node.op} divides by the step number, counted on the host")
        elif node.op == "maxpool" and node.attrs.get("spiking") == "gated" and not node.attrs.get("global"):
            reasons.append(f"{node.where}: the gated max pool counts its steps on the host")
    return reasons


class CudaChunkGraph:
    """``torch.cuda.CUDAGraph`` behind the two calls the runner makes. Tests on machines without
    a GPU swap in a stand-in with the same two calls (tests/test_cuda_graphs.py)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._graph = torch.cuda.CUDAGraph()

    def capture(self, step, written):
        """Record ``step()`` (nothing runs: a capture only records) and return what it returned:
        tensors that every :meth:`replay` overwrites in place. ``written``: the input buffers the
        step writes (its state), which a stand-in that does run the step restores."""
        with torch.cuda.graph(self._graph):
            return step()

    def replay(self) -> None:
        """Run the recorded kernels again on the captured buffers."""
        self._graph.replay()


@contextlib.contextmanager
def side_stream(device: torch.device):
    """Run the block on a fresh stream that waits for, and is waited for by, the current one:
    torch's recipe for the eager warm-up before a capture (lazy initialisation done on a stream
    other than the one that will be captured). A no-op off the GPU."""
    if device.type != "cuda":
        yield
        return
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        yield
    current.wait_stream(side)


class CapturedChunk:
    """One captured chunk and its buffers (see the module docstring)."""

    __slots__ = (
        "graph",
        "x",
        "static_in",
        "state_in",
        "static_out",
        "state_out",
        "outs",
        "count",
        "neuron_steps",
        "run",
    )

    def __init__(self, graph, x, static_in, state_in, static_out, state_out, outs, count, neuron_steps):
        self.graph, self.x = graph, x
        self.static_in, self.state_in = static_in, state_in
        self.static_out, self.state_out = static_out, state_out
        self.outs, self.count, self.neuron_steps = outs, count, neuron_steps
        self.run = None  # the run whose input and static values the buffers hold
