"""`snnc.compile`: ANN (ONNX or IR) + calibration data → a spiking model you can save, run, evaluate."""
from __future__ import annotations

import logging

import numpy as np
import torch

from .data import Dataset, validate
from .errors import SnncError
from .ir import Graph, check_finite_parameters
from .ir.neuron import ENCODINGS, MAXPOOL_STRATEGIES
from .limits import check_timesteps
from .options import CALIBRATIONS, DEFAULT_EVAL_STEPS, DEFAULTS, SETTING_KEYS, CompileOptions, default_threshold
from .passes import (PassContext, bias_calibration, fold_bn, hard_reset, neuronize, potential_calibration, run_pipeline,
                     stats, substitute, thresholds, weight_calibration)
from .runtime.executor import Executor, check_input
from .runtime.snn import SpikingRunner, _single, output_steps

log = logging.getLogger(__name__)

#: The calibration pipelines: which passes run after neuronize (the mse threshold comes first).
PIPELINES = {
    "none": [],
    "light": [bias_calibration],  # on the default percentile θ (departs from SNN Calibration's mse θ)
    "advanced": [weight_calibration, potential_calibration],
}
assert tuple(PIPELINES) == CALIBRATIONS  # options.py checks the name, this table runs it


def resolve_options(options: dict) -> dict:
    """Defaults filled in and every option checked (:class:`~snncompiler.options.CompileOptions`), as a dict."""
    return CompileOptions.from_mapping(options).as_dict()


def conversion_passes(opts: dict) -> list:
    """The passes from the ANN to the uncalibrated SNN: statistics, thresholds, neuronize, and for
    hard reset the compensation of the charge it discards (passes/hard_reset.py)."""
    return [stats, thresholds, neuronize] + ([hard_reset] if opts.get("reset") == "hard" else [])


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
        if not bool(torch.isfinite(t).all()):  # spikes from NaN currents would be silent garbage
            raise SnncError("input 'x': contains NaN or Inf values")
        return t.float()

    def runner(self, **overrides) -> SpikingRunner:
        """A fresh :class:`SpikingRunner` with this model's settings (overridable; ``device="cuda"``
        runs it on a GPU, ``exec="event"`` or ``"auto"`` runs spike-driven conv/linear layers on
        the event-driven kernel, see :mod:`snncompiler.kernels.event`)."""
        o = {**self.options, **overrides}
        return SpikingRunner(self.graph, backend=o["backend"], encoding=o["encoding"], seed=o.get("seed", 0),
                             device=o.get("device", "cpu"), exec_mode=o.get("exec") or "dense")

    def run(self, x, timesteps: int | None = None, *, checkpoints=None, batch_size: int = 256, **overrides):
        """Mean output over ``timesteps`` steps (numpy [N, ...]); with ``checkpoints`` a dict {t: output}.

        Under the "sequence" encoding x is [N, T_in, ...] and ``timesteps`` defaults to T_in."""
        xt = self._input(x)
        if timesteps is None:
            timesteps = xt.shape[1] if self.sequence else self.options["timesteps"]
        timesteps = int(timesteps)  # 0 is refused by the runner, not read as "the default"
        if batch_size < 1:
            raise SnncError(f"--batch-size: must be ≥ 1, got {batch_size}")
        runner = self.runner(**overrides)
        chunk = int(overrides.get("chunk", self.options["chunk"]))
        parts: dict[int, list] = {}
        for start in range(0, len(xt), batch_size):
            res = runner.run(xt[start:start + batch_size], timesteps, checkpoints=checkpoints, chunk=chunk)
            for t, y in res.items():
                parts.setdefault(t, []).append([o.cpu().numpy() for o in (y if isinstance(y, tuple) else (y,))])
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
                env = ex.run({self.graph.inputs[0].name: xt[s:s + batch_size]})
                batches.append([env[name].cpu().numpy() for name in names])
        return _joined(batches)

    def evaluate(self, x, y, timesteps=None, *, batch_size: int = 256, **overrides) -> dict:
        """Accuracy at every T in ``timesteps`` from one max(T) run, plus ANN-mode accuracy and firing rate.

        ``timesteps`` defaults to the powers of two up to 256, or up to the sequence length T_in
        (and T_in itself) for sequence inputs."""
        from .metrics import accuracy

        if timesteps is None:
            timesteps = output_steps(int(np.shape(x)[1])) if self.sequence else DEFAULT_EVAL_STEPS
        ts = sorted({int(t) for t in ([timesteps] if np.isscalar(timesteps) else timesteps)})
        outs = self.run(x, ts[-1], checkpoints=ts, batch_size=batch_size, **overrides)
        return {"samples": int(len(x)),
                "snn_accuracy": {str(t): accuracy(first_output(outs[t]), y) for t in ts},
                "ann_accuracy": accuracy(first_output(self.ann(x)), y),
                "firing_rate": self.last_runner.firing_rate}

    def synaptic_operations(self, x, timesteps: int | None = None, *, batch_size: int = 256, **overrides) -> dict:
        """Synaptic operations and energy per sample against the ANN's MACs, measured on ``x``
        over ``timesteps`` steps (see :func:`snncompiler.metrics.synaptic_operations`)."""
        from .metrics import synaptic_operations

        if batch_size < 1:
            raise SnncError(f"--batch-size: must be ≥ 1, got {batch_size}")
        return synaptic_operations(self, x, int(timesteps or self.options["timesteps"]), batch_size=batch_size,
                                   **overrides)

    # ---- persistence --------------------------------------------------------------------
    def save(self, path) -> None:
        """Write the artifact: ONNX with neuron nodes in the `snncompiler` domain."""
        from .export.onnx_export import save_artifact

        save_artifact(self, path)

    def to_nir(self):
        """This model as a ``nir.NIRGraph`` plus the list of what NIR cannot represent
        (see :mod:`snncompiler.export.nir_export`)."""
        from .export.nir_export import to_nir

        return to_nir(self)

    def save_nir(self, path) -> list[str]:
        """Write this model as a NIR file; returns the lossy-export warnings (also logged)."""
        from .export.nir_export import save_nir

        return save_nir(self, path)

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

    Passes: fold BN → activation statistics on ``calib_data`` → thresholds → neuronize
    (→ the calibration pipeline). Options (see :class:`~snncompiler.options.CompileOptions`, checked
    before any work): threshold (max | pNN.N | mse),
    channelwise, timesteps (the compile T), neuron (if | lif), tau, reset (soft | hard), v0
    (half | zero), maxpool (rate | gated | input | output), strict, encoding (direct | rate; "sequence" only for trained networks),
    calib_samples, calibration (none | light | advanced), iterations, seed.

    A calibration pipeline is kept only if, on the calibration samples at the compile T, its
    output agrees with the ANN at least as well as the uncalibrated conversion does (see
    :func:`_better_than_uncalibrated`); otherwise the uncalibrated model is returned and the
    report says so.
    """
    checked = CompileOptions.from_mapping(options)
    opts = checked.as_dict()
    graph = model if isinstance(model, Graph) else _load(model)
    if len(graph.inputs) != 1:
        names = ", ".join(v.name for v in graph.inputs)
        raise SnncError(f"{graph.metadata.get('source_file', 'model')}: has {len(graph.inputs)} inputs ({names}); "
                        "snnc compiles models with one input")
    calib = _as_dataset(calib_data)
    check_input(graph.inputs[0], torch.from_numpy(calib.x[:1]), label="calibration input")
    graph = _pin_fixed_batch(graph, calib, opts)
    torch.manual_seed(int(opts["seed"]))
    ctx = PassContext(options=opts, calib=calib)
    ann = run_pipeline(graph, ctx, [substitute, fold_bn])
    for line in ctx.report.get(substitute.NAME, []):
        log.warning("%s: %s", graph.metadata.get("source_file", "model"), line)
    ctx.report["ann_graph"] = ann
    if opts["calibration"] != "none":
        _check_calibration_memory(ann, ctx, opts)
    snn = run_pipeline(ann, ctx, conversion_passes(opts) + PIPELINES[opts["calibration"]])
    if opts["calibration"] != "none":
        plain_opts = {**opts, "calibration": "none",
                      "threshold": options.get("threshold") or default_threshold(reset=checked.reset)}
        plain_ctx = PassContext(options=plain_opts, calib=calib)
        plain = run_pipeline(ann, plain_ctx, conversion_passes(plain_opts))
        if not _better_than_uncalibrated(ann, snn, plain, calib, opts, ctx):
            snn = plain
    report = {k: v for k, v in ctx.report.items() if k not in ("histograms", "ann_graph")}
    report["spiking"] = _check_spiking_share(snn, opts, graph.metadata.get("source_file", "model"))
    compiled = CompiledModel(snn, opts, report)
    compiled.ann_graph = ann
    return compiled


def _check_calibration_memory(ann: Graph, ctx: PassContext, opts: dict) -> None:
    """Refuse, before any pass runs, a layer-wise calibration whose estimated memory (samples × T ×
    activations, :func:`~snncompiler.passes.layerwise.calibration_memory`) is over
    ``SNNC_MAX_CALIB_BYTES``: ``--timesteps 4096`` would otherwise end in std::bad_alloc."""
    from .limits import check_calibration_bytes
    from .passes.layerwise import calibration_batch, calibration_memory

    samples = len(calibration_batch(ctx))
    T = int(opts["timesteps"])
    check_calibration_bytes(calibration_memory(ann, samples, T),
                            f"--calibration {opts['calibration']} on {samples} samples at T={T}")


def _check_spiking_share(graph: Graph, opts: dict, label: str) -> dict:
    """How much of the compiled network spikes (see :func:`snncompiler.inspect.spiking_share`);
    a network with no neuron or mostly analog MACs is warned about once, refused with ``strict``."""
    from .inspect import analog_heavy_warning, spiking_share

    share = spiking_share(graph)
    warning = analog_heavy_warning(share, graph, label)
    if opts["strict"] and (warning or share["analog_islands"]):
        ops = ", ".join(f"{op} ×{k}" for op, k in share["islands_by_activation"].items())
        islands = f"{label}: {share['analog_islands']} analog islands, which cannot spike ({ops})"
        raise SnncError(f"--strict: {warning or islands}")
    if warning:
        log.warning("%s", warning)
    share["warning"] = warning
    return share


def _pin_fixed_batch(graph: Graph, calib: Dataset, opts: dict) -> Graph:
    """A graph that does not treat axis 0 as a batch (exported with a fixed batch of 1: traced
    constants, reshapes that move the batch into another axis) is marked to run one sample at
    a time, said once; the marked copy is returned (the caller's graph is left alone)."""
    from .runtime.executor import FIXED_BATCH_KEY, batch_independent, fixed_batch

    marked = fixed_batch(graph)  # the loader may have found an op along axis 0 of a batch-1 model
    if not marked and batch_independent(graph, torch.from_numpy(calib.x[:2]).float()):
        return graph
    where = graph.metadata.get("source_file", "model")
    if opts["calibration"] != "none":
        raise SnncError(f"--calibration {opts['calibration']}: {where} runs only at batch 1 (its batch axis is "
                        "fixed in the graph), and layer-wise calibration needs batches; use --calibration none "
                        "or re-export the model with a dynamic batch axis")
    if marked:
        return graph
    graph = graph.copy()
    graph.metadata[FIXED_BATCH_KEY] = "1"
    log.warning("%s: the graph fixes its batch axis at 1 (samples of a batch would mix or fail); calibrating "
                "and running it one sample at a time, which is slower (re-export with a dynamic batch axis to "
                "avoid this)", where)
    return graph


def _better_than_uncalibrated(ann: Graph, calibrated: Graph, plain: Graph, calib: Dataset, opts: dict,
                              ctx: PassContext) -> bool:
    """Does calibration help at the compile T?

    Scores each model by top-1 agreement with the ANN over the class axis (axis 1: per pixel for
    a segmentation output [N, C, H, W]; ties: mean squared error of the output). Calibration
    repairs mean errors layer by layer; on some networks and T (e.g. T=1 on a deep VGG, where
    its MSE thresholds lose to the default percentile) the whole network ends up worse, and this
    guard catches it. It scores on calibration samples that the
    layer-wise passes did not fit (those after the first ``layer_samples``), up to as many
    again, so that a calibration that only fits its own batch is not kept; with no samples
    left over it falls back to the fitted ones.
    """
    from .passes.layerwise import calibration_batch

    fitted = calibration_batch(ctx)
    limit = min(len(ctx.calib), int(opts.get("calib_samples") or len(ctx.calib)))
    held_out = ctx.calib.x[len(fitted):min(limit, 2 * len(fitted))]
    x = torch.from_numpy(held_out).float() if len(held_out) >= 32 else fitted
    T = int(opts["timesteps"])
    with torch.no_grad():
        target = Executor(ann).run({ann.inputs[0].name: x})[ann.outputs[0].name]

    def score(graph):
        out = first_output(SpikingRunner(graph, backend=opts["backend"]).run(x, T, chunk=int(opts["chunk"]))[T])
        classes = 1 if out.dim() > 1 else -1  # [N, C, ...]: per-pixel classes of a dense output too
        agree = float((out.argmax(classes) == target.argmax(classes)).float().mean())
        return agree, -float(((out - target) ** 2).mean())

    kept, baseline = score(calibrated), score(plain)
    better = kept >= baseline
    held = x is not fitted
    ctx.report["calibration_check"] = {"calibrated_agreement": kept[0], "uncalibrated_agreement": baseline[0],
                                       "samples": int(len(x)), "held_out": held,
                                       "kept": "calibrated" if better else "uncalibrated"}
    ctx.note("compile", f"calibration check at T={T} on {len(x)} {'held-out' if held else 'fitted'} samples: "
                        f"agreement with the ANN {kept[0]:.4f} calibrated vs {baseline[0]:.4f} uncalibrated "
                        f"-> kept {'calibrated' if better else 'uncalibrated'}")
    return better


def calibrate(model_or_path, data, *, timesteps: int | None = None, pipeline: str = "advanced",
              iterations: int | None = None, batch_size: int | None = None, seed: int | None = None,
              **options) -> CompiledModel:
    """Calibrate a spiking model layer by layer at ``timesteps`` (the compile T by default).

    ``model_or_path``: an ANN (ONNX path or Graph) — compiled with the pipeline — or a
    CompiledModel / artifact path, recalibrated from its own ANN (the model it was compiled
    from when known, else its neurons read as ReLUs). ``batch_size`` is the minibatch of
    weight calibration; ``iterations`` its Adam steps.
    """
    extra = {"calibration": pipeline, "seed": seed, "iterations": iterations, "calib_batch": batch_size,
             "timesteps": timesteps}
    if isinstance(model_or_path, CompiledModel):
        compiled = model_or_path
    else:
        graph = model_or_path if isinstance(model_or_path, Graph) else None
        if graph is None:
            from .frontend import load_graph

            graph = load_graph(model_or_path)
        if not graph.find("neuron"):
            return compile(graph, data, **options, **extra)
        compiled = from_artifact(graph)
    from .passes.layerwise import neurons_as_relu

    ann = getattr(compiled, "ann_graph", None)
    if ann is None:
        ann = neurons_as_relu(compiled.graph)
    settings = {k: v for k, v in compiled.options.items() if k in SETTING_KEYS and k != "threshold"}
    return compile(ann, data, **{**settings, **options, **{k: v for k, v in extra.items() if v is not None}})


def _metadata_object(graph: Graph, key: str) -> dict:
    """Metadata ``key`` of an artifact parsed as a JSON object ({} when absent)."""
    import json

    raw = graph.metadata.get(key)
    if raw is None:
        return {}
    where = graph.metadata.get("source_file", "model")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SnncError(f"{where}: metadata '{key}' is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise SnncError(f"{where}: metadata '{key}' must be a JSON object, got {type(value).__name__}")
    return value


def _check_settings(settings: dict, where: str) -> dict:
    """The recorded settings the runtime acts on, checked: a damaged value is an error naming it."""
    unknown = sorted(set(settings) - set(SETTING_KEYS))
    if unknown:
        raise SnncError(f"{where}: metadata 'snncompiler.settings': unknown key(s) "
                        f"{', '.join(repr(k) for k in unknown)} (known: {', '.join(SETTING_KEYS)})")

    def bad(key, expected):
        return SnncError(f"{where}: metadata 'snncompiler.settings': '{key}' must be {expected}, got {settings[key]!r}")

    if "timesteps" in settings and not (isinstance(settings["timesteps"], int) and not isinstance(
            settings["timesteps"], bool) and settings["timesteps"] >= 1):
        raise bad("timesteps", "a positive integer")
    if "timesteps" in settings:
        check_timesteps(settings["timesteps"], f"{where}: metadata 'snncompiler.settings': 'timesteps'")
    if "maxpool" in settings and settings["maxpool"] not in MAXPOOL_STRATEGIES:
        raise bad("maxpool", f"one of {', '.join(MAXPOOL_STRATEGIES)}")
    if "encoding" in settings and settings["encoding"] not in ENCODINGS:
        raise bad("encoding", f"one of {', '.join(ENCODINGS)}")
    return settings


def _check_neuron_parameters(graph: Graph, where: str) -> None:
    """θ and the input gain (one value or one per channel) and v_init (broadcast onto a sample) of every neuron fit
    its input, where the file records that input's shape: otherwise the first run would fail
    inside the kernel op with a message about v0 that names neither the file nor the node."""
    for node in graph.find("neuron"):
        value = graph.values.get(node.inputs[0])
        shape = None if value is None or value.shape is None else tuple(value.shape)
        if shape is None or len(shape) < 2:
            continue
        for key in ("theta", "gain"):
            count = node.params[key].numel() if key in node.params else 1
            if count not in (1, shape[1]):
                raise SnncError(f"{where}: {node.where}: {key} has {count} values; its input "
                                f"{list(shape)} takes one, or one per channel ({shape[1]})")
        v_init = node.params.get("v_init")
        if v_init is not None:
            try:
                fits = torch.broadcast_shapes(tuple(v_init.shape), shape[1:]) == shape[1:]
            except RuntimeError:
                fits = False
            if not fits:
                raise SnncError(f"{where}: {node.where}: v_init of shape {list(v_init.shape)} does not fit "
                                f"its input's sample shape {list(shape[1:])}")


def from_artifact(graph: Graph) -> CompiledModel:
    """Rebuild a CompiledModel from an artifact's IR and its metadata (checked: an artifact of
    another format version or with damaged metadata is a one-line error naming the file)."""
    from .frontend.loader import ARTIFACT_VERSION

    where = graph.metadata.get("source_file", "model")
    version = graph.metadata.get("snncompiler.artifact")
    if version is None:
        raise SnncError(f"{where}: metadata 'snncompiler.artifact' (the format version) is missing; "
                        "not an artifact written by snnc compile")
    if version != ARTIFACT_VERSION:
        raise SnncError(f"{where}: artifact format {version!r} is not the one this snncompiler reads "
                        f"({ARTIFACT_VERSION!r}); recompile the model with this version")
    steps = graph.metadata.get("snncompiler.timesteps")  # the default T, also in the settings
    if steps is not None and not (steps.isdigit() and int(steps) >= 1):
        raise SnncError(f"{where}: metadata 'snncompiler.timesteps' must be a positive integer, got {steps!r}")
    if steps is not None:
        check_timesteps(int(steps), f"{where}: metadata 'snncompiler.timesteps'")
    settings = _check_settings(_metadata_object(graph, "snncompiler.settings"), where)
    report = _metadata_object(graph, "snncompiler.report")
    _check_neuron_parameters(graph, where)
    check_finite_parameters(graph, where)
    strategy = settings.get("maxpool", DEFAULTS["maxpool"])
    if strategy in ("gated", "rate"):  # standard MaxPool nodes carry no strategy: restore the stateful ones
        for mp in graph.find("maxpool"):
            mp.attrs["spiking"] = strategy
    return CompiledModel(graph, settings, report)


def _load(model) -> Graph:
    from .frontend import load_graph

    graph = load_graph(model)
    if graph.find("neuron"):
        raise SnncError(f"{graph.metadata.get('source_file', 'model')}: already a compiled spiking model")
    return graph
