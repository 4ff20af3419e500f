"""CompiledModel: a spiking model (neuronized IR + settings) to run, evaluate, save; and
:func:`load`, the one place a model object is built from what a reader returns."""

from __future__ import annotations

import os

import numpy as np
import torch

from . import distributed
from .errors import OptionError, SnncError
from .ir import Graph
from .limits import timestep_count
from .options import DEFAULT_BATCH_SIZE, DEFAULT_EVAL_STEPS, DEFAULTS, SETTING_KEYS
from .progress import progress_bar
from .runtime.executor import Executor, check_input
from .runtime.snn import SpikingRunner, _single, output_steps

#: What ``run``, ``evaluate``, ``synaptic_operations`` and ``runner`` take as overrides of a
#: model's own settings.
RUN_OPTIONS = ("backend", "device", "exec", "chunk", "encoding", "seed", "cuda_graphs", "presim")


def first_output(value):
    """The first of a model's outputs (the one accuracy is scored on), whether it has one or several."""
    return value[0] if isinstance(value, tuple) else value


def _joined(batches: list[list[np.ndarray]]):
    """Per-batch output lists joined along the batch axis: one array, or a tuple for several outputs."""
    return _single([np.concatenate([b[k] for b in batches]) for k in range(len(batches[0]))])


class CompiledModel:
    """A spiking model: the neuronized IR plus its settings.

    ``run`` simulates it, ``ann`` runs its own ANN mode (neurons as clip(x, 0, θ)),
    ``evaluate`` measures accuracy at several T from one run, ``save`` writes the artifact.
    """

    def __init__(self, graph: Graph, options: dict, report: dict | None = None):
        self.graph = graph
        self.options = {**DEFAULTS, **options}
        self.report = report or {}
        self.ann_graph: Graph | None = None  # the ANN it was compiled from, when known (not saved)

    # ---- execution ----------------------------------------------------------------------
    @property
    def sequence(self) -> bool:
        """Whether inputs carry their own time axis, [N, T, ...] (the "sequence" encoding)."""
        return self.options.get("encoding") == "sequence"

    def _input(self, x) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
        check_input(self.graph.inputs[0], t, sequence=self.sequence)
        if len(t) == 0:
            raise SnncError("input 'x': has no samples")
        if not bool(torch.isfinite(t).all()):  # spikes from NaN currents would be silent garbage
            raise SnncError("input 'x': contains NaN or Inf values")
        return t.float()

    def runner(self, **overrides) -> SpikingRunner:
        """A fresh :class:`SpikingRunner` with this model's settings (overridable, one of
        :data:`RUN_OPTIONS`; ``device="cuda"`` runs it on a GPU, ``exec="event"`` or ``"auto"``
        runs spike-driven conv/linear layers on the event-driven kernel, see
        :mod:`snncompiler.kernels.event`; ``cuda_graphs="auto"|"on"|"off"`` replays each chunk of
        steps on a GPU as one captured CUDA graph, see :mod:`snncompiler.runtime.cuda_graphs`;
        ``presim=ρ`` pre-simulates ρ steps of each spiking layer to correct its offset spikes, see
        :mod:`snncompiler.runtime.offset_spikes`). An unknown name is an error, not silently ignored:
        ``run(x, exce="event")`` would otherwise run dense."""
        unknown = sorted(set(overrides) - set(RUN_OPTIONS))
        if unknown:
            raise SnncError(f"run: unknown option(s) {', '.join(unknown)}; expected one of {', '.join(RUN_OPTIONS)}")
        o = {**self.options, **overrides}
        return SpikingRunner(
            self.graph,
            backend=o["backend"],
            encoding=o["encoding"],
            seed=o.get("seed", 0),
            device=o.get("device", "cpu"),
            exec_mode=o.get("exec") or "dense",
            cuda_graphs=o.get("cuda_graphs") or "auto",
            presim=o.get("presim") or 0,
        )

    def run(
        self,
        x,
        timesteps: int | None = None,
        *,
        checkpoints=None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool = False,
        **overrides,
    ):
        """Mean output over ``timesteps`` steps (numpy [N, ...]); with ``checkpoints`` a dict {t: output}.

        Under the "sequence" encoding x is [N, T_in, ...] and ``timesteps`` defaults to T_in.
        ``progress``: a bar of simulated sample-steps on stderr (only on a terminal, see
        :mod:`snncompiler.progress`)."""
        xt = self._input(x)
        if timesteps is None:
            timesteps = xt.shape[1] if self.sequence else self.options["timesteps"]
        timesteps = timestep_count(timesteps)
        if batch_size < 1:
            raise OptionError("batch_size", f"must be ≥ 1, got {batch_size}")
        runner = self.runner(**overrides)
        chunk = overrides.get("chunk", self.options["chunk"])  # None: the runtime's auto_chunk
        parts: dict[int, list] = {}
        with progress_bar(
            len(xt) * timesteps, f"T={timesteps}", "sample-step", enabled=None if progress else False
        ) as bar:
            runner.on_chunk = lambda samples, steps: bar.update(samples * steps)
            for start in range(0, len(xt), batch_size):
                res = runner.run(xt[start : start + batch_size], timesteps, checkpoints=checkpoints, chunk=chunk)
                for t, y in res.items():
                    parts.setdefault(t, []).append([o.cpu().numpy() for o in (y if isinstance(y, tuple) else (y,))])
        runner.on_chunk = None
        self.last_runner = runner
        out = {t: _joined(batches) for t, batches in parts.items()}
        return out if checkpoints else out[timesteps]

    def __call__(self, x, timesteps: int | None = None, **overrides):
        """Mean output over the compile T (or ``timesteps``) steps: the model as a function."""
        return self.run(x, timesteps, **overrides)

    def ann(self, x, batch_size: int = 1024) -> np.ndarray:
        """The artifact's own ANN: every neuron as clip(x, 0, θ) (on the time-mean of a sequence input)."""
        ex = Executor(self.graph)
        xt = self._input(x)
        if self.sequence:
            xt = xt.mean(1)
        names = [v.name for v in self.graph.outputs]
        with torch.no_grad():
            batches = []
            for s in range(0, len(xt), batch_size):
                env = ex.run({self.graph.inputs[0].name: xt[s : s + batch_size]})
                batches.append([env[name].cpu().numpy() for name in names])
        return _joined(batches)

    def evaluate(
        self, x, y=None, timesteps=None, *, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False, **overrides
    ) -> dict:
        """Accuracy at every T in ``timesteps`` from one max(T) run, plus ANN-mode accuracy and firing rate
        (``progress``: a bar on stderr, as in :meth:`run`).

        ``x, y``: arrays or tensors, or ``x`` alone as a labelled :class:`snncompiler.data.Dataset`,
        a data file (.npz with x and y, MNIST idx, a CIFAR-10 batch: :func:`snncompiler.data.load`),
        a torch DataLoader or any iterable of (x, y) batches (collected first). ``timesteps``
        defaults to the powers of two up to 256, or up to the sequence length T_in (and T_in
        itself) for sequence inputs. Under a
        torch.distributed process group the samples are sharded across the ranks and the counts
        summed: every rank returns the same figures."""
        from .analysis.metrics import accuracy
        from .data import Dataset, from_batches, is_batch_iterable, load

        if y is None:
            if isinstance(x, (str, os.PathLike)):
                x = load(x, require_labels=True, arg="evaluate's data")
            if isinstance(x, Dataset):
                if x.y is None:
                    raise SnncError("evaluate: the dataset has no labels y")
            elif not is_batch_iterable(x):
                raise SnncError(
                    "evaluate: labels y are required (or pass a labelled Dataset, a data file or (x, y) batches)"
                )
            data = x if isinstance(x, Dataset) else from_batches(x, label="data", require_labels=True)
            x, y = data.x, data.y
        if isinstance(y, torch.Tensor):
            y = y.detach().cpu().numpy()

        if timesteps is None:
            timesteps = output_steps(int(np.shape(x)[1])) if self.sequence else DEFAULT_EVAL_STEPS
        ts = sorted({timestep_count(t) for t in ([timesteps] if np.isscalar(timesteps) else timesteps)})
        if not ts:
            raise OptionError("timesteps", "is empty; give at least one T to evaluate at")
        if distributed.is_distributed():
            return self._evaluate_sharded(x, y, ts, batch_size, overrides)
        outs = self.run(x, ts[-1], checkpoints=ts, batch_size=batch_size, progress=progress, **overrides)
        return {
            "samples": int(len(x)),
            "snn_accuracy": {str(t): accuracy(first_output(outs[t]), y) for t in ts},
            "ann_accuracy": accuracy(first_output(self.ann(x)), y),
            "firing_rate": self.last_runner.firing_rate,
        }

    def _evaluate_sharded(self, x, y, ts: list[int], batch_size: int, overrides: dict) -> dict:
        """:meth:`evaluate` under a process group: each rank runs its shard of the samples and the
        counts (correct predictions per T, spikes, neuron-steps) are summed over the ranks, so the
        figures are those of one process over every sample."""
        from .analysis.metrics import correct

        xs, ys = distributed.shard(x), distributed.shard(np.asarray(y))
        counts = [0.0] * (len(ts) + 1)
        spikes = steps = 0.0
        if len(xs):
            outs = self.run(xs, ts[-1], checkpoints=ts, batch_size=batch_size, **overrides)
            counts = [correct(first_output(outs[t]), ys) for t in ts] + [correct(first_output(self.ann(xs)), ys)]
            spikes, steps = self.last_runner.spike_count, self.last_runner.neuron_steps
        *counts, spikes, steps = distributed.sum_numbers(*counts, spikes, steps)
        n = len(x)
        return {
            "samples": int(n),
            "snn_accuracy": {str(t): int(c) / n if n else float("nan") for t, c in zip(ts, counts)},
            "ann_accuracy": int(counts[-1]) / n if n else float("nan"),
            "firing_rate": spikes / steps if steps else 0.0,
        }

    def synaptic_operations(
        self, x, timesteps: int | None = None, *, batch_size: int = DEFAULT_BATCH_SIZE, **overrides
    ) -> dict:
        """Synaptic operations and energy per sample against the ANN's MACs, measured on ``x``
        over ``timesteps`` steps (see :func:`snncompiler.analysis.metrics.synaptic_operations`)."""
        from .analysis.metrics import synaptic_operations

        if batch_size < 1:
            raise OptionError("batch_size", f"must be ≥ 1, got {batch_size}")
        return synaptic_operations(
            self, x, int(timesteps or self.options["timesteps"]), batch_size=batch_size, **overrides
        )

    def to_torch(self, *, backend: str = "auto", surrogate: str = "triangle", alpha: float | None = None):
        """This model as a standalone, trainable ``torch.nn.Module``: ``module(x, timesteps=T)``
        returns what ``run(x, timesteps=T)`` returns (the mean output over T steps), as a tensor.
        Neurons run on the kernel op (``backend="auto"``) or on the plain-PyTorch loop
        (``backend="torch"``, for ``torch.compile``); weights, biases and θ are parameters
        (see :class:`~snncompiler.runtime.module.SpikingModule`)."""
        from .runtime.module import SpikingModule

        return SpikingModule(self.graph, self.options, backend=backend, surrogate=surrogate, alpha=alpha)

    # ---- persistence --------------------------------------------------------------------
    def _target(self, path, what: str) -> str:
        """``path`` checked as the CLI checks ``-o`` (a regular file or a new name in a writable
        folder, not the model this one was compiled from); a one-line SnncError naming ``what``."""
        from .fileio import resolve_output

        return resolve_output(path, what, inputs=[self.graph.metadata.get("source_file")])

    def save(self, path) -> None:
        """Write the artifact: ONNX with neuron nodes in the `snncompiler` domain."""
        from .formats.onnx.writer import save_artifact

        save_artifact(self, self._target(path, "save"))

    def to_nir(self, *, flatten: str = "nir", avgpool: str = "avg"):
        """This model as a ``nir.NIRGraph`` plus the list of what NIR cannot represent
        (see :mod:`snncompiler.formats.nir.writer`). ``flatten="torch"`` (snnTorch, Norse) and
        ``avgpool="sum"`` (Norse) write the conventions those readers need."""
        from .formats.nir.writer import to_nir

        return to_nir(self, flatten=flatten, avgpool=avgpool)

    def save_nir(self, path, *, flatten: str = "nir", avgpool: str = "avg") -> list[str]:
        """Write this model as a NIR file; returns the lossy-export warnings (also logged).
        ``flatten`` and ``avgpool`` as in :meth:`to_nir`."""
        from .formats.nir.writer import save_nir

        return save_nir(self, self._target(path, "save_nir"), flatten=flatten, avgpool=avgpool)

    def to_onnx(self, timesteps: int | None = None):
        """This SNN as a standard ``onnx.ModelProto`` (no custom operators) that simulates
        ``timesteps`` steps (default: the compile T) and returns the mean output over them, as
        ``run`` does (see :mod:`snncompiler.formats.onnx.standard`)."""
        from .formats.onnx.standard import to_standard_onnx

        return to_standard_onnx(self, timesteps)

    def save_onnx(self, path, timesteps: int | None = None) -> None:
        """Write :meth:`to_onnx` to ``path``: an SNN that onnxruntime runs."""
        from .formats.onnx.standard import save_standard_onnx

        save_standard_onnx(self, self._target(path, "save_onnx"), timesteps)

    def settings(self) -> dict:
        """The settings recorded in the artifact."""
        return {k: self.options[k] for k in SETTING_KEYS}


def from_artifact(graph: Graph) -> CompiledModel:
    """A CompiledModel from an artifact's IR (its metadata checked by :func:`~.formats.artifact.read_artifact`)."""
    from .formats.artifact import read_artifact

    settings, report = read_artifact(graph)
    return CompiledModel(graph, settings, report)


def load(path, *, device: str = "cpu", dt: float | None = None):
    """Load a model: a compiled artifact or a NIR file gives a :class:`CompiledModel`, a plain
    ONNX ANN an :class:`~.runtime.executor.Executor` (a callable over numpy arrays or tensors of
    any batch size, returning the same kind). ``dt`` is the time step of a NIR file that does not
    record one (see :mod:`snncompiler.formats.nir.reader`)."""
    from .formats.nir.reader import is_nir_file, read_nir
    from .formats.onnx import load_graph

    if isinstance(path, (str, os.PathLike)) and is_nir_file(path):
        graph, options, report = read_nir(path, dt=dt)
        return CompiledModel(graph, options, report)
    if dt is not None:
        raise OptionError("dt", f"only for NIR files; {path} is not one")
    from .formats.artifact import VERSION_KEY

    graph = load_graph(path)
    # an artifact by its metadata: a compiled network may have no neuron (all analog islands)
    if graph.find("neuron") or VERSION_KEY in graph.metadata:
        return from_artifact(graph)
    return Executor(graph, device)
