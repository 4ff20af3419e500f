"""`snnc.compile`: ANN (ONNX or IR) + calibration data → a spiking model you can save, run, evaluate."""
from __future__ import annotations

import logging

import numpy as np
import torch

from .data import Dataset, validate
from .errors import SnncError
from .ir import Graph
from .passes import PassContext, fold_bn, neuronize, run_pipeline, stats, thresholds
from .runtime.executor import Executor, check_input
from .runtime.snn import SpikingRunner

log = logging.getLogger(__name__)

#: Defaults chosen by benchmarks/timestep_accuracy.py (see README: "Choosing the defaults").
DEFAULTS = {
    "threshold": "p99.99", "channelwise": False, "timesteps": 32, "neuron": "if", "tau": 0.0, "reset": "soft",
    "v0": "half", "maxpool": "gated", "strict": False, "encoding": "direct", "calib_samples": 1024,
    "chunk": 32, "backend": "auto",
}
SETTING_KEYS = ("threshold", "channelwise", "timesteps", "neuron", "tau", "reset", "v0", "maxpool", "encoding")


class CompiledModel:
    """A spiking model: the neuronized IR plus its settings.

    ``run`` simulates it, ``ann`` runs its own ANN mode (neurons as clip(x, 0, θ)),
    ``evaluate`` measures accuracy at several T from one run, ``save`` writes the artifact.
    """

    def __init__(self, graph: Graph, options: dict, report: dict | None = None):
        self.graph = graph
        self.options = {**DEFAULTS, **options}
        self.report = report or {}

    # ---- execution ----------------------------------------------------------------------
    def _input(self, x) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
        check_input(self.graph.inputs[0], t)
        return t.float()

    def runner(self, **overrides) -> SpikingRunner:
        """A fresh :class:`SpikingRunner` with this model's settings (overridable)."""
        o = {**self.options, **overrides}
        return SpikingRunner(self.graph, backend=o["backend"], encoding=o["encoding"], seed=o.get("seed", 0))

    def run(self, x, timesteps: int | None = None, *, checkpoints=None, batch_size: int = 256, **overrides):
        """Mean output over ``timesteps`` steps (numpy [N, ...]); with ``checkpoints`` a dict {t: output}."""
        timesteps = int(timesteps or self.options["timesteps"])
        runner = self.runner(**overrides)
        chunk = int(overrides.get("chunk", self.options["chunk"]))
        xt = self._input(x)
        parts: dict[int, list] = {}
        for start in range(0, len(xt), batch_size):
            res = runner.run(xt[start:start + batch_size], timesteps, checkpoints=checkpoints, chunk=chunk)
            for t, y in res.items():
                parts.setdefault(t, []).append(y.cpu().numpy())
        self.last_runner = runner
        out = {t: np.concatenate(v) for t, v in parts.items()}
        return out if checkpoints else out[timesteps]

    def ann(self, x, batch_size: int = 1024) -> np.ndarray:
        """The artifact's own ANN: every neuron as clip(x, 0, θ)."""
        ex = Executor(self.graph)
        xt = self._input(x)
        with torch.no_grad():
            return np.concatenate([ex.run({self.graph.inputs[0].name: xt[s:s + batch_size]})[self.graph.outputs[0].name]
                                   .cpu().numpy() for s in range(0, len(xt), batch_size)])

    def evaluate(self, x, y, timesteps=(1, 2, 4, 8, 16, 32, 64, 128, 256), *, batch_size: int = 256, **overrides) -> dict:
        """Accuracy at every T in ``timesteps`` from one max(T) run, plus ANN-mode accuracy and firing rate."""
        from .metrics import accuracy

        ts = sorted({int(t) for t in ([timesteps] if np.isscalar(timesteps) else timesteps)})
        outs = self.run(x, ts[-1], checkpoints=ts, batch_size=batch_size, **overrides)
        return {"samples": int(len(x)),
                "snn_accuracy": {str(t): accuracy(outs[t], y) for t in ts},
                "ann_accuracy": accuracy(self.ann(x), y),
                "firing_rate": self.last_runner.firing_rate}

    # ---- persistence --------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the artifact: ONNX with neuron nodes in the `snncompiler` domain."""
        from .export.onnx_export import save_artifact

        save_artifact(self, path)

    def settings(self) -> dict:
        """The settings recorded in the artifact."""
        return {k: self.options[k] for k in SETTING_KEYS}


def _as_dataset(data, label="calibration data") -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str,)) or hasattr(data, "__fspath__"):
        from .data import load

        return load(data, arg="--calib")
    if isinstance(data, tuple):
        return validate(*data, label=label)
    if isinstance(data, torch.Tensor):
        data = data.numpy()
    return validate(data, label=label)


def compile(model, calib_data, **options) -> CompiledModel:  # noqa: A001 - the public name
    """Convert an ANN (ONNX path/bytes/ModelProto or IR Graph) into a spiking model.

    Passes: fold BN → activation statistics on ``calib_data`` → thresholds → neuronize.
    Options (see DEFAULTS): threshold (max | pNN.N | mse), channelwise, timesteps (the compile
    T, used by mse), neuron (if | lif), tau, reset (soft | hard), v0 (half | zero), maxpool
    (gated | input | output), strict, encoding (direct | rate), calib_samples.
    """
    unknown = set(options) - set(DEFAULTS) - {"seed"}
    if unknown:
        raise SnncError(f"compile: unknown option(s) {', '.join(sorted(unknown))}")
    opts = {**DEFAULTS, **options}
    graph = model if isinstance(model, Graph) else _load(model)
    calib = _as_dataset(calib_data)
    check_input(graph.inputs[0], torch.from_numpy(calib.x[:1]), label="calibration input")
    ctx = PassContext(options=opts, calib=calib)
    snn = run_pipeline(graph, ctx, [fold_bn, stats, thresholds, neuronize])
    report = {k: v for k, v in ctx.report.items() if k != "histograms"}
    return CompiledModel(snn, opts, report)


def from_artifact(graph: Graph) -> CompiledModel:
    """Rebuild a CompiledModel from an artifact's IR and its metadata."""
    import json

    settings = json.loads(graph.metadata.get("snncompiler.settings", "{}"))
    report = json.loads(graph.metadata.get("snncompiler.report", "{}"))
    if settings.get("maxpool", DEFAULTS["maxpool"]) == "gated":  # standard MaxPool nodes carry no strategy
        for mp in graph.find("maxpool"):
            mp.attrs["spiking"] = "gated"
    return CompiledModel(graph, settings, report)


def _load(model) -> Graph:
    from .frontend import load_graph

    graph = load_graph(model)
    if graph.find("neuron"):
        raise SnncError(f"{graph.metadata.get('source_file', 'model')}: already a compiled spiking model")
    return graph
