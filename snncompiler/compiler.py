"""`snnc.compile`: ANN (ONNX or IR) + calibration data → a spiking model you can save, run, evaluate."""

from __future__ import annotations

import logging

import numpy as np
import torch

from . import distributed
from .data import Dataset, validate
from .errors import SnncError
from .ir import Graph
from .ir.neuron import NeuronSpec
from .model import CompiledModel, first_output, from_artifact
from .options import CALIBRATIONS, SETTING_KEYS, CompileOptions, default_threshold
from .passes import (
    PassContext,
    bias_calibration,
    fake_quant,
    fold_bn,
    fuse_linear,
    hard_reset,
    neuronize,
    potential_calibration,
    run_pipeline,
    signed_inputs,
    signed_relu,
    stats,
    substitute,
    thresholds,
    weight_calibration,
)
from .runtime.executor import Executor, check_input
from .runtime.snn import SpikingRunner

log = logging.getLogger(__name__)

#: The calibration pipelines: which passes run after neuronize (the mse threshold comes first).
PIPELINES = {
    "none": [],
    "light": [bias_calibration],  # on the default percentile θ (departs from SNN Calibration's mse θ)
    "advanced": [weight_calibration, potential_calibration],
}
assert tuple(PIPELINES) == CALIBRATIONS  # options.py checks the name, this table runs it
#: The advanced pipeline for leaky (LIF) neurons. A charge added to the initial potential leaks
#: away within about τ steps, so potential calibration cannot shift a LIF's rate over T steps; a
#: bias is a drive at every step. Bias first removes the leak's large mean deficit, which weight
#: calibration's few small Adam steps cannot; bias again after it re-centres the layer (measured:
#: docs/benchmarks.md, "LIF neurons").
LEAKY_ADVANCED = [bias_calibration, weight_calibration, bias_calibration]


def calibration_passes(opts: dict) -> list:
    """The passes of the calibration pipeline ``opts['calibration']`` for the neurons ``opts`` asks for."""
    if opts["calibration"] == "advanced" and NeuronSpec.from_attrs(opts).leaks:
        return LEAKY_ADVANCED
    return PIPELINES[opts["calibration"]]


def resolve_options(options: dict) -> dict:
    """Defaults filled in and every option checked (:class:`~snncompiler.options.CompileOptions`), as a dict."""
    return CompileOptions.from_mapping(options).as_dict()


def conversion_passes(opts: dict) -> list:
    """The passes from the ANN to the uncalibrated SNN: statistics, thresholds, neuronize, and for
    hard reset the compensation of the charge it discards (passes/hard_reset.py)."""
    return [stats, thresholds, neuronize] + ([hard_reset] if opts.get("reset") == "hard" else [])


def _as_dataset(data, label="calibration data", limit: int | None = None) -> Dataset:
    """Calibration data as a checked Dataset: a Dataset, an .npz path, an array or tensor, an
    (x[, y]) tuple, or an iterable of x or (x, y) batches such as a torch DataLoader (read up
    to ``limit`` samples)."""
    from .data import from_batches, is_batch_iterable

    if isinstance(data, Dataset):
        return data
    if is_batch_iterable(data):
        return from_batches(data, label=label, limit=limit)
    if isinstance(data, (str,)) or hasattr(data, "__fspath__"):
        from .data import load

        return load(data, arg="--calib")
    if isinstance(data, tuple):
        return validate(*[d.detach().cpu().numpy() if isinstance(d, torch.Tensor) else d for d in data], label=label)
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    return validate(data, label=label)


def module_graph(module: torch.nn.Module, example_input=None, calib: Dataset | None = None) -> Graph:
    """A torch ``nn.Module`` read into the IR: exported with torch's ONNX exporter
    (:func:`~snncompiler.formats.onnx.from_torch.export_onnx_bytes`, opset 17, dynamic batch, eval
    mode) and loaded like any ONNX file. ``example_input`` (a tensor or array [B, ...], or the
    sample shape as a tuple of ints) gives the input shape; without it the shape of one
    calibration sample does."""
    from .formats.onnx import load_graph
    from .formats.onnx.from_torch import export_onnx_bytes

    if example_input is not None:
        if isinstance(example_input, (tuple, list)) and all(isinstance(d, int) for d in example_input):
            shape = tuple(example_input)
        else:
            shape = tuple(
                np.shape(example_input.detach().cpu() if isinstance(example_input, torch.Tensor) else example_input)
            )[1:]
            if not shape:
                raise SnncError(
                    "example_input: expected a batch [B, ...] or a sample shape tuple, got a tensor of rank ≤ 1"
                )
    elif calib is not None:
        shape = tuple(calib.x.shape[1:])
    else:
        raise SnncError("example_input: needed to export a torch module without calibration data")
    graph = load_graph(export_onnx_bytes(module, shape))
    graph.metadata["source_file"] = type(module).__name__
    return graph


def compile(model, calib_data, **options) -> CompiledModel:
    """Convert an ANN (ONNX path/bytes/ModelProto, IR Graph or torch ``nn.Module``) into a spiking model.

    A torch module is exported with torch's ONNX exporter into the same IR (see
    :func:`module_graph`; ``example_input=`` a batch or sample shape, else one calibration sample
    gives the input shape). ``calib_data``: an array or tensor [N, ...], an (x[, y]) tuple, a
    Dataset, an .npz path, or any iterable of x or (x, y) batches such as a torch DataLoader.

    Passes: fold BN → activation statistics on ``calib_data`` → thresholds → neuronize
    (→ the calibration pipeline). Options (see :class:`~snncompiler.options.CompileOptions`, checked
    before any work): threshold (max | pNN.N | mse),
    channelwise, timesteps (the compile T), neuron (if | lif), tau, reset (soft | hard), v0
    (half | zero), population (B neurons per ReLU; :class:`~snncompiler.ir.neuron.NeuronSpec`), maxpool (rate | gated | input | output), strict, encoding (direct | rate; "sequence" only for trained networks),
    calib_samples, calibration (none | light | advanced; default none, light for LIF), iterations, seed.

    A calibration pipeline is kept only if, on the calibration samples at the compile T, its
    output agrees with the ANN at least as well as the uncalibrated conversion does (see
    :func:`_better_than_uncalibrated`); otherwise the uncalibrated model is returned and the
    report says so.

    Under an initialised torch.distributed process group (``torchrun``) the calibration samples
    are sharded across the ranks and every statistic and reduction of the calibration passes is
    all-reduced (:mod:`snncompiler.distributed`): every rank returns the same model, the one a
    single process computes up to float rounding, and the report records ``world_size``.
    """
    example_input = options.pop("example_input", None)
    checked = CompileOptions.from_mapping(options)
    opts = checked.as_dict()
    if isinstance(model, torch.nn.Module):
        calib = _as_dataset(calib_data, limit=int(opts["calib_samples"]))
        graph = module_graph(model, example_input, calib)
    else:
        if example_input is not None:
            raise SnncError("example_input: only for a torch.nn.Module (an ONNX model declares its input shape)")
        graph = model if isinstance(model, Graph) else load_ann(model)
        calib = _as_dataset(calib_data, limit=int(opts["calib_samples"]))
    if len(graph.inputs) != 1:
        names = ", ".join(v.name for v in graph.inputs)
        raise SnncError(
            f"{graph.metadata.get('source_file', 'model')}: has {len(graph.inputs)} inputs ({names}); "
            "snnc compiles models with one input"
        )
    check_input(graph.inputs[0], torch.from_numpy(calib.x[:1]), label="calibration input")
    graph = _pin_fixed_batch(graph, calib, opts)
    torch.manual_seed(int(opts["seed"]))
    ctx = PassContext(options=opts, calib=calib)
    ann = run_pipeline(graph, ctx, [fake_quant, substitute, fold_bn, signed_relu, signed_inputs])
    for line in ctx.report.get(substitute.NAME, []):
        log.warning("%s: %s", graph.metadata.get("source_file", "model"), line)
    ctx.report["ann_graph"] = ann
    if opts["calibration"] != "none":
        _check_calibration_memory(ann, ctx, opts)
    snn = run_pipeline(ann, ctx, conversion_passes(opts) + calibration_passes(opts))
    if opts["calibration"] != "none":
        plain_opts = {
            **opts,
            "calibration": "none",
            "threshold": options.get("threshold") or default_threshold(reset=checked.reset),
        }
        plain_ctx = PassContext(options=plain_opts, calib=calib)
        plain = run_pipeline(ann, plain_ctx, conversion_passes(plain_opts))
        if not _better_than_uncalibrated(ann, snn, plain, calib, opts, ctx):
            snn = plain
    unfused_macs = None
    if opts["fuse_linear"]:  # exact at every step: after calibration, which sees the network it knows
        from .analysis.summary import spiking_share

        unfused_macs = spiking_share(snn)["macs"]
        snn = run_pipeline(snn, ctx, [fuse_linear])
    report = {k: v for k, v in ctx.report.items() if k not in ("histograms", "ann_graph")}
    if distributed.is_distributed():  # absent means one process (and keeps those artifacts as they were)
        report["world_size"] = distributed.world_size()
    report["spiking"] = _check_spiking_share(snn, opts, graph.metadata.get("source_file", "model"))
    if unfused_macs is not None:  # composing weights raises the MACs: both counts, per sample
        report["fuse_linear_macs"] = {"before": unfused_macs, "after": report["spiking"]["macs"]}
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
    check_calibration_bytes(
        calibration_memory(ann, samples, T, int(opts.get("population", 1))),
        f"--calibration {opts['calibration']} on {samples} samples at T={T}",
    )


def _check_spiking_share(graph: Graph, opts: dict, label: str) -> dict:
    """How much of the compiled network spikes (see :func:`snncompiler.analysis.summary.spiking_share`);
    a network with no neuron or mostly analog MACs is warned about once, refused with ``strict``;
    ``strict`` also refuses any analog island but a readout (a final Softmax, ArgMax, ... that no
    neuron or MAC layer reads: decoding, not computation)."""
    from collections import Counter

    from .analysis.summary import analog_heavy_warning, spiking_share

    share = spiking_share(graph)
    warning = analog_heavy_warning(share, graph, label)
    inside = Counter(share["islands_by_activation"]) - Counter(share["readout_by_activation"])
    if opts["strict"] and (warning or inside):
        ops = ", ".join(f"{op} ×{k}" for op, k in inside.most_common())
        islands = f"{label}: {inside.total()} analog islands inside the network, which cannot spike ({ops})"
        raise SnncError(f"--strict: {warning or islands}")
    if warning:
        log.warning("%s", warning)
    share["warning"] = warning
    return share


def _pin_fixed_batch(graph: Graph, calib: Dataset, opts: dict) -> Graph:
    """A graph that does not treat axis 0 as a batch (exported with a fixed batch of 1: traced
    constants, reshapes that move the batch into another axis) is marked to run one sample at
    a time, said once; the marked copy is returned (the caller's graph is left alone)."""
    from .ir.graph import BOUND_KEY, DECLARED_KEY, FIXED_BATCH_KEY
    from .runtime.executor import batch_independent, fixed_batch

    where = graph.metadata.get("source_file", "model")
    declared, bound = graph.metadata.get(DECLARED_KEY, "dynamic"), graph.metadata.get(BOUND_KEY)
    if bound and declared not in ("dynamic", "1"):  # runs at its declared batch only: no sample alone
        raise SnncError(
            f"{where}: {bound}; it runs only at its declared batch of {declared}, and snnc compile needs "
            "a batch axis it can split (re-export the model with a dynamic batch axis, or at batch 1)"
        )
    marked = fixed_batch(graph)  # the loader may have found an op along axis 0 of a batch-1 model
    if not marked and batch_independent(graph, torch.from_numpy(calib.x[:2]).float()):
        return graph
    if opts["calibration"] != "none":
        raise SnncError(
            f"--calibration {opts['calibration']}: {where} runs only at batch 1 (its batch axis is "
            "fixed in the graph), and layer-wise calibration needs batches; use --calibration none "
            "or re-export the model with a dynamic batch axis"
        )
    if marked:
        return graph
    graph = graph.copy()
    graph.metadata[FIXED_BATCH_KEY] = "1"
    why = f"{bound}, so the graph runs at batch 1 only" if bound else "the graph fixes its batch axis at 1"
    log.warning(
        "%s: %s (samples of a batch would mix or fail); calibrating and running it one sample at a time, "
        "each sample getting its batch-1 answer, which is slower (re-export with a dynamic batch axis to "
        "avoid this)",
        where,
        why,
    )
    return graph


def _better_than_uncalibrated(
    ann: Graph, calibrated: Graph, plain: Graph, calib: Dataset, opts: dict, ctx: PassContext
) -> bool:
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
    from .passes.layerwise import calibration_batch, calibration_size

    fitted, n_fitted = calibration_batch(ctx), calibration_size(ctx)
    limit = min(len(ctx.calib), int(opts.get("calib_samples") or len(ctx.calib)))
    held_out = ctx.calib.x[n_fitted : min(limit, 2 * n_fitted)]
    held = len(held_out) >= 32
    x = torch.from_numpy(distributed.shard(held_out)).float() if held else fitted
    samples = len(held_out) if held else n_fitted  # over every rank: each scores its shard
    T = int(opts["timesteps"])
    with torch.no_grad():
        target = Executor(ann).run({ann.inputs[0].name: x})[ann.outputs[0].name]

    def score(graph):
        out = first_output(SpikingRunner(graph, backend=opts["backend"]).run(x, T, chunk=opts["chunk"])[T])
        if not out.is_floating_point():  # a class index or a mask (ArgMax, Greater): compared as it is
            return float(distributed.mean((out == target).float())), 0.0
        classes = 1 if out.dim() > 1 else -1  # [N, C, ...]: per-pixel classes of a dense output too
        agree = float(distributed.mean((out.argmax(classes) == target.argmax(classes)).float()))
        return agree, -float(distributed.mean((out - target) ** 2))

    kept, baseline = score(calibrated), score(plain)
    better = kept >= baseline
    ctx.report["calibration_check"] = {
        "calibrated_agreement": kept[0],
        "uncalibrated_agreement": baseline[0],
        "samples": int(samples),
        "held_out": held,
        "kept": "calibrated" if better else "uncalibrated",
    }
    ctx.note(
        "compile",
        f"calibration check at T={T} on {samples} {'held-out' if held else 'fitted'} samples: "
        f"agreement with the ANN {kept[0]:.4f} calibrated vs {baseline[0]:.4f} uncalibrated "
        f"-> kept {'calibrated' if better else 'uncalibrated'}",
    )
    return better


def calibrate(
    model_or_path,
    data,
    *,
    timesteps: int | None = None,
    pipeline: str = "advanced",
    iterations: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    **options,
) -> CompiledModel:
    """Calibrate a spiking model layer by layer at ``timesteps`` (the compile T by default).

    ``model_or_path``: an ANN (ONNX path, Graph or torch ``nn.Module`` with ``example_input=``
    as in :func:`compile`) — compiled with the pipeline — or a
    CompiledModel / artifact path, recalibrated from its own ANN (the model it was compiled
    from when known, else its neurons read as ReLUs). ``batch_size`` is the minibatch of
    weight calibration; ``iterations`` its Adam steps.
    """
    extra = {
        "calibration": pipeline,
        "seed": seed,
        "iterations": iterations,
        "calib_batch": batch_size,
        "timesteps": timesteps,
    }
    example_input = options.pop("example_input", None)
    if not isinstance(data, Dataset) and not isinstance(data, str) and not hasattr(data, "__fspath__"):
        # read once: an iterable of batches (a generator, a DataLoader) is consumed here
        data = _as_dataset(data, limit=int(options.get("calib_samples") or CompileOptions().calib_samples))
    if isinstance(model_or_path, torch.nn.Module):
        graph = module_graph(model_or_path, example_input, data if isinstance(data, Dataset) else _as_dataset(data))
        return compile(graph, data, **options, **extra)
    if example_input is not None:
        raise SnncError("example_input: only for a torch.nn.Module (an ONNX model declares its input shape)")
    if isinstance(model_or_path, CompiledModel):
        compiled = model_or_path
    else:
        graph = model_or_path if isinstance(model_or_path, Graph) else None
        if graph is None:
            from .formats.onnx import load_graph

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


def load_ann(model) -> Graph:
    """An ANN (ONNX path, bytes or ModelProto) read into the IR; a compiled artifact is refused."""
    from .formats.artifact import VERSION_KEY
    from .formats.onnx import load_graph

    graph = load_graph(model)
    if graph.find("neuron") or VERSION_KEY in graph.metadata:
        raise SnncError(f"{graph.metadata.get('source_file', 'model')}: already a compiled spiking model")
    return graph
