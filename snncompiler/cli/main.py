"""``snnc``: the command-line entry point.

Every user error is one line on stderr and exit status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import logging.handlers
import math
import os
import sys
import time
import traceback
import warnings

from .. import distributed
from .. import options as defaults
from .._version import __version__
from ..errors import OptionError, SnncError
from ..fileio import atomic_write, resolve_output


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and still exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_at_least(low: int):
    """argparse type: an integer ≥ ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be ≥ {low}, got {value}")
        return value

    return parse


_positive_int, _nonnegative_int = _int_at_least(1), _int_at_least(0)


def _seed(text: str) -> int:
    """argparse type: a seed, an integer in [0, 2**63 - 1] (:func:`snncompiler.options.check_seed`)."""
    value = _nonnegative_int(text)
    if value > defaults.MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be at most 2**63 - 1, got {value}")
    return value


def _float_where(accept, requirement: str):
    """argparse type: a number for which ``accept(value)`` holds, else the error ``{requirement}, got TEXT``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{requirement}, got {text}")
        return value

    return parse


# learning rates and time steps; penalty weights; mixing weights (--distill, --lam)
_positive_float = _float_where(lambda v: math.isfinite(v) and v > 0, "must be a finite number > 0")
_nonnegative_float = _float_where(lambda v: math.isfinite(v) and v >= 0, "must be a finite number ≥ 0")
_unit_float = _float_where(lambda v: 0.0 <= v <= 1.0, "must lie in [0, 1]")


def _add_distill(p, needs: str = "") -> None:
    """--distill W: knowledge distillation from the ANN while fine-tuning (snncompiler.train.fit's teacher)."""
    p.add_argument(
        "--distill",
        type=_unit_float,
        default=None,
        metavar="W",
        help="distil the ANN into the SNN while fine-tuning: loss = (1-W)·label loss + W·τ²·KL to the ANN's "
        f"softened outputs (τ = {defaults.DISTILL_TEMPERATURE:g}; the ANN the model was compiled from, or the "
        f"artifact's ANN mode) (default: off){needs}",
    )


def _add_common(p: argparse.ArgumentParser, top: bool = False) -> None:
    # a subcommand's --debug must not reset `snnc --debug COMMAND` to False: only the top level
    # has a default, so the flag works before or after the command
    p.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="show tracebacks and debug logging",
    )


def _add_quiet(p: argparse.ArgumentParser, what: str) -> None:
    """``--quiet``: no progress bar (they are shown only on a terminal anyway, see snncompiler/progress.py)."""
    # None when absent, like every flag that is also a library option (compile's quiet): the library's
    # default then applies
    p.add_argument(
        "--quiet", action="store_true", default=None, help=f"no progress bar ({what}) on stderr, even on a terminal"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for all subcommands."""
    parser = _Parser(prog="snnc", description="snncompiler: compile trained ANNs (ONNX) into spiking neural networks.")
    _add_common(parser, top=True)
    parser.add_argument("--version", action="version", version=f"snnc {__version__}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("compile", help="convert a trained ANN (ONNX) into a spiking model")
    p.add_argument("model", metavar="MODEL.onnx", help="the trained ANN (ONNX)")
    p.add_argument(
        "--calib", required=True, metavar="CALIB.npz", help="calibration inputs 'x' (labels 'y' only with --finetune)"
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT.snn.onnx", help="where to write the spiking artifact")
    # every default is None: the library fills it in (snncompiler/options.py), the help reads it from there
    d = argparse.Namespace(**defaults.DEFAULTS)
    p.add_argument(
        "--timesteps", type=_positive_int, default=None, help=f"the T the model is compiled for (default {d.timesteps})"
    )
    p.add_argument(
        "--threshold",
        default=None,
        help=f"max | pNN.N (percentile, e.g. p99.9) | mse (default: {defaults.DEFAULT_THRESHOLD}; "
        f"{defaults.HARD_RESET_THRESHOLD} with --reset hard; {defaults.ADVANCED_THRESHOLD} with "
        "--calibration advanced)",
    )
    p.add_argument(
        "--channelwise",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one threshold per output channel (--no-channelwise: one per layer; default: per layer, and with "
        "--finetune the pipeline converts both ways and keeps the better on held-out data)",
    )
    p.add_argument(
        "--neuron",
        choices=list(defaults.NEURONS),
        default=None,
        help=f"neuron model: integrate-and-fire or leaky (default {d.neuron})",
    )
    p.add_argument(
        "--tau",
        type=float,
        default=None,
        help=f"LIF time constant (decay = 1 - 1/tau; default {defaults.DEFAULT_LIF_TAU:g}); needs --neuron lif",
    )
    p.add_argument(
        "--reset",
        choices=list(defaults.RESETS),
        default=None,
        help=f"after a spike: subtract θ (soft) or set the membrane to 0 (hard) (default {d.reset})",
    )
    p.add_argument(
        "--v0",
        choices=list(defaults.V0S),
        default=None,
        help=f"initial membrane: θ/2 (half) or 0 (zero) (default {d.v0})",
    )
    _add_population_option(p)
    p.add_argument(
        "--maxpool",
        choices=list(defaults.MAXPOOL_STRATEGIES),
        default=None,
        help=f"spiking max pooling strategy (default {d.maxpool}; see README)",
    )
    p.add_argument(
        "--encoding",
        choices=["direct", "rate"],
        default=None,
        help=f"input coding: the analog input at every step (direct) or Bernoulli spikes (rate) (default {d.encoding})",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="refuse analog islands (a readout that no neuron or layer reads, such as a final Softmax or "
        "ArgMax, excepted), and a network with no neuron (an error, exit 2, instead of a warning)",
    )
    p.add_argument(
        "--substitute",
        choices=list(defaults.SUBSTITUTES),
        default=None,
        help="replace HardSwish, GELU and SiLU/Swish by clipped ReLU neurons so they spike (changes the "
        "function: recover accuracy with snnc finetune)",
    )
    p.add_argument(
        "--signed-spikes",
        action="store_true",
        default=None,
        help="layers that read an analog value (a linear bottleneck, a residual sum without ReLU, an "
        "island's output) read it as spikes of two neurons, ReLU(x) - ReLU(-x): exact in the ANN, every "
        "MAC after the input layer spike-driven",
    )
    p.add_argument(
        "--fuse-linear",
        action="store_true",
        default=None,
        help="1x1 conv and linear layers that read a linear function of spikes (a linear bottleneck and "
        "the residual sums of such) read the spikes through composed weights: exact, more MACs",
    )
    p.add_argument(
        "--calib-samples",
        type=_positive_int,
        default=None,
        help=f"at most this many calibration samples (default {d.calib_samples})",
    )
    p.add_argument(
        "--calibration",
        choices=list(defaults.CALIBRATIONS),
        default=None,
        help="layer-wise calibration at the compile T: light = bias, advanced = mse θ + weights + "
        "potential (bias + weights + bias for LIF); kept only if it beats no calibration on held-out "
        f"calibration samples (default {d.calibration}; {defaults.LIF_CALIBRATION} for --neuron lif)",
    )
    p.add_argument(
        "--iterations",
        type=_nonnegative_int,
        default=None,
        help=f"weight-calibration Adam steps per layer (default {d.iterations})",
    )
    p.add_argument("--seed", type=_seed, default=None, help=f"makes calibration deterministic (default {d.seed})")
    p.add_argument(
        "--finetune",
        type=_positive_int,
        default=None,
        metavar="EPOCHS",
        help="then fine-tune at --timesteps for EPOCHS epochs on the labelled --calib data: conversion, "
        "calibration and fine-tuning each kept only if they raise accuracy on a held-out 20 %% "
        "(default: no fine-tuning)",
    )
    p.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help=f"Adam learning rate of the --finetune stage, cosine schedule (default {defaults.FINETUNE_LR:g}, "
        "as snnc finetune; needs --finetune)",
    )
    _add_distill(p, "; needs --finetune")
    _add_quiet(p, "calibration layers, fine-tuning epochs")
    _add_common(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("inspect", help="per-node table: shapes, parameters, MACs, how each node converts")
    p.add_argument("model", metavar="FILE", help="an .onnx model, a compiled .snn.onnx artifact or a .nir file")
    p.add_argument("--json", action="store_true", help="print the table and totals as JSON")
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit 2 when the network would barely spike (no neuron, or under half its MACs after the "
        "input layer driven by spikes)",
    )
    _add_dt_option(p)
    _add_common(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("run", help="run a model on an .npz input and save its output")
    p.add_argument("model", metavar="MODEL", help="an .onnx model, a compiled .snn.onnx artifact or a .nir file")
    p.add_argument("--input", required=True, metavar="X.npz", help="input array under the key 'x'")
    p.add_argument("-o", "--output", required=True, metavar="Y.npz", help="where to write the output (key 'y')")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=defaults.DEFAULT_BATCH_SIZE,
        help="samples run at once (default %(default)s)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    p.add_argument(
        "--timesteps",
        type=_positive_int,
        default=None,
        help="spiking models: steps to simulate (default: compile T; a sequence model: the input's length)",
    )
    p.add_argument(
        "--backend",
        default="auto",
        help="spiking models: neuron kernel (auto, cpu, reference, triton, cuda; default %(default)s)",
    )
    p.add_argument("--ann-mode", action="store_true", help="spiking models: run the artifact's own ANN instead")
    _add_exec_option(p)
    _add_cuda_graphs_option(p)
    _add_presim_option(p)
    _add_dt_option(p)
    _add_event_options(p)
    _add_common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("eval", help="top-1 accuracy of a model on labelled .npz data")
    p.add_argument("model", metavar="MODEL", help="an .onnx model, a compiled .snn.onnx artifact or a .nir file")
    p.add_argument("--data", required=True, metavar="TEST.npz", help="inputs 'x' and int64 labels 'y'")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (the same keys for an ANN and a spiking model; see README)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=defaults.DEFAULT_BATCH_SIZE,
        help="samples run at once (default %(default)s)",
    )
    p.add_argument(
        "--engine",
        choices=["onnxruntime", "torch"],
        default="onnxruntime",
        help="for plain ONNX models: onnxruntime (default, the reference) or snnc's torch runtime",
    )
    p.add_argument(
        "--device", default="cpu", help="cpu or cuda (spiking models and the torch engine; default %(default)s)"
    )
    p.add_argument(
        "--timesteps",
        default=None,
        help="spiking models: comma-separated T values, all from one max(T) run "
        "(default 1,2,4,...,256; a sequence model: powers of two up to the input's length)",
    )
    p.add_argument(
        "--chunk",
        type=_positive_int,
        default=None,
        help="steps simulated at once (default: on CPU the most of 8, 16 or 32 whose activations fit the "
        "last-level cache, 8 on a GPU; memory does not grow with T)",
    )
    p.add_argument(
        "--backend", default="auto", help="neuron kernel: auto, cpu, reference, triton, cuda (default %(default)s)"
    )
    _add_exec_option(p)
    _add_cuda_graphs_option(p)
    _add_presim_option(p)
    p.add_argument("--plot", metavar="FILE.png", help="spiking models: draw accuracy against T")
    p.add_argument(
        "--layers",
        action="store_true",
        help="spiking models: per-layer clipping and flooring error, firing rate and cosine "
        "similarity between ANN activation and SNN rate (at the largest --timesteps)",
    )
    p.add_argument(
        "--reference",
        metavar="ANN.onnx",
        help="with --layers: the ANN the model was compiled from (default: the artifact's neurons as ReLUs)",
    )
    p.add_argument(
        "--layer-samples",
        type=_positive_int,
        default=None,
        help=f"with --layers: samples used for the per-layer errors (default {defaults.DEFAULT_LAYER_SAMPLES})",
    )
    _add_dt_option(p)
    _add_event_options(p)
    p.add_argument(
        "--sops",
        action="store_true",
        help="spiking models: synaptic operations per layer and an energy estimate against the "
        "ANN's MACs (at the largest --timesteps, on all --data samples)",
    )
    _add_common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "finetune", help="train a compiled spiking model at a few timesteps (surrogate gradients, TET loss)"
    )
    p.add_argument("model", metavar="MODEL.snn.onnx", help="a compiled artifact (or a NIR file)")
    p.add_argument("--data", required=True, metavar="TRAIN.npz", help="labelled training data 'x', 'y'")
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT.snn.onnx", help="where to write the fine-tuned artifact"
    )
    p.add_argument(
        "--val",
        metavar="VAL.npz",
        help="held-out data the result is judged on (default: a random 20%% of --data, not trained on)",
    )
    p.add_argument(
        "--timesteps",
        type=_positive_int,
        default=None,
        help=f"T to train and judge at (default {defaults.FINETUNE_TIMESTEPS})",
    )
    p.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help=f"passes over the training data (default {defaults.FINETUNE_EPOCHS})",
    )
    p.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help=f"Adam learning rate, cosine schedule (default {defaults.FINETUNE_LR:g})",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help=f"samples per training step (default {defaults.TRAIN_BATCH_SIZE})",
    )
    p.add_argument("--no-learn-theta", action="store_true", help="keep the thresholds; train weights and biases only")
    p.add_argument(
        "--keep-always",
        action="store_true",
        help="write the fine-tuned model even when it is not more accurate on the held-out data",
    )
    p.add_argument(
        "--rate-penalty",
        type=_nonnegative_float,
        default=0.0,
        metavar="λ",
        help="add λ × the firing rate (spikes per neuron per step) to the loss: fewer spikes, less energy "
        "(default %(default)g)",
    )
    _add_distill(p)
    p.add_argument("--seed", type=_seed, default=None, help="data split and order (default 0)")
    p.add_argument(
        "--device", default="cpu", help="cpu or cuda (under torchrun: rank r on GPU r) (default %(default)s)"
    )
    _add_dt_option(p)
    _add_quiet(p, "epochs with their loss")
    _add_common(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("train", help="train an ONNX architecture directly as a spiking network (surrogate gradients)")
    p.add_argument("model", metavar="MODEL.onnx", help="a ReLU network; its ReLUs become IF/LIF neurons")
    p.add_argument("--data", required=True, metavar="TRAIN.npz", help="labelled training data 'x', 'y'")
    p.add_argument("-o", "--output", required=True, metavar="OUT.snn.onnx", help="where to write the trained artifact")
    p.add_argument("--val", metavar="VAL.npz", help="labelled data scored after every epoch (not trained on)")
    p.add_argument(
        "--timesteps",
        default="4",
        help="T to train at, or a schedule such as 1,4: train at the first T, continue at the next "
        "(temporal inheritance); the artifact runs at the last (default 4)",
    )
    p.add_argument(
        "--epochs",
        default="15",
        help="total epochs, shared evenly by the --timesteps stages (earlier stages take the "
        "remainder), or one count per stage such as 10,5 (default 15)",
    )
    p.add_argument(
        "--init",
        choices=["ann", "random"],
        default="random",
        help="random: Kaiming weights from --seed, trained with BatchNorm folded in afterwards; "
        "ann: the ONNX weights and their conversion thresholds (default random)",
    )
    p.add_argument(
        "--loss",
        choices=["tet", "sdt"],
        default="tet",
        help="tet: cross-entropy at every step (+ λ·MSE); sdt: cross-entropy of the time-mean (default %(default)s)",
    )
    p.add_argument("--lam", type=_unit_float, default=1e-3, help="TET's λ, in [0, 1] (default 1e-3)")
    p.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help="Adam learning rate, cosine schedule per stage (default 1e-2 with --init random, 1e-3 with ann)",
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=64, help="samples per training step (default %(default)s)"
    )
    p.add_argument("--neuron", choices=["if", "lif"], default="if", help="neuron model (default %(default)s)")
    p.add_argument(
        "--tau", type=float, default=0.0, help="LIF time constant (decay = 1 - 1/tau; default 2); needs --neuron lif"
    )
    _add_population_option(p)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    p.add_argument(
        "--rate-penalty",
        type=_nonnegative_float,
        default=0.0,
        metavar="λ",
        help="add λ × the firing rate (spikes per neuron per step) to the loss: fewer spikes, less energy "
        "(default %(default)g)",
    )
    p.add_argument("--seed", type=_seed, default=0, help="weights (--init random), data order (default %(default)s)")
    _add_common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="write a compiled spiking model in another format (NIR, standard ONNX)")
    p.add_argument("model", metavar="MODEL.snn.onnx", help="a compiled artifact")
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT.nir|OUT.onnx", help="where to write the exported model"
    )
    p.add_argument(
        "--format",
        choices=["nir", "onnx"],
        default="nir",
        help="nir (default): the Neuromorphic Intermediate Representation (HDF5); tested to run as in snnc "
        "(hard reset, v0 zero) in SpikingJelly (IF, LIF), snnTorch (LIF only, with --nir-flatten torch) and "
        "Norse (IF only, with --nir-flatten torch --nir-avgpool sum); onnx: the SNN at a fixed T in standard ONNX operators "
        "(neurons as a Scan over the steps, output the mean over T as `snnc run` gives it; "
        "a mask or an index: its value at step T), "
        "which onnxruntime runs",
    )
    p.add_argument(
        "--timesteps",
        type=_positive_int,
        default=None,
        help="--format onnx: the number of steps the exported graph simulates (default: the compile T)",
    )
    p.add_argument(
        "--nir-flatten",
        choices=["nir", "torch"],
        default=None,
        help="--format nir: Flatten as NIR defines it (nir, default: one sample, start_dim 0) or as "
        "snnTorch's and Norse's importers run it (torch: start_dim 1 on a batch)",
    )
    p.add_argument(
        "--nir-avgpool",
        choices=["avg", "sum"],
        default=None,
        help="--format nir: average pooling as AvgPool2d (avg, default) or as SumPool2d with 1/k² folded "
        "into the next layer (sum: for Norse, which reads no AvgPool2d)",
    )
    _add_common(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("env", help="versions, neuron kernel backends and their settings (for bug reports)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_common(p)
    p.set_defaults(func=cmd_env)
    _add_report_command(sub)
    return parser


def _add_report_command(sub) -> None:
    """``snnc report``: its parser."""
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page: accuracy, firing rates, spike raster, "
        "per-layer errors and energy against T",
    )
    p.add_argument("model", metavar="MODEL.snn.onnx", help="a compiled artifact (or a NIR file)")
    p.add_argument("--data", required=True, metavar="TEST.npz", help="labelled data: inputs 'x' and int64 labels 'y'")
    p.add_argument("-o", "--output", required=True, metavar="REPORT.html", help="where to write the page")
    p.add_argument(
        "--timesteps", default=None, help="comma-separated T values, all from one max(T) run (default 1,2,4,...,256)"
    )
    p.add_argument(
        "--samples",
        type=_positive_int,
        default=None,
        help="use the first N samples of --data (default: all for accuracy; firing rates, per-layer "
        f"errors and energy use at most {defaults.DEFAULT_LAYER_SAMPLES})",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=defaults.DEFAULT_BATCH_SIZE,
        help="samples run at once (default %(default)s)",
    )
    p.add_argument(
        "--backend", default="auto", help="neuron kernel: auto, cpu, reference, triton, cuda (default %(default)s)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default %(default)s)")
    _add_dt_option(p)
    _add_quiet(p, "the report's stages and its simulation")
    _add_common(p)
    p.set_defaults(func=cmd_report)


def _model_files(model, output, suffix: str | None = None) -> list:
    """A model path and the external-data files it reads: all inputs that ``-o`` may not replace.
    The model file is parsed for them only when the output (``suffix`` appended where the
    writer appends it) already exists: a new file cannot be one of them."""
    from ..formats.onnx.reader import external_data_files

    given = os.fspath(output) if output else ""
    targets = [given] + ([given + suffix] if suffix and given and not given.endswith(suffix) else [])
    if not model or not any(t and os.path.exists(t) for t in targets):
        return [model]
    return [model, *external_data_files(model)]


def cmd_report(args) -> int:
    """snnc report MODEL.snn.onnx --data TEST.npz -o report.html"""
    from .. import load
    from ..analysis.report import build_report, check_plotting
    from ..data import load_npz
    from ..model import CompiledModel

    output = resolve_output(args.output, "-o", (*_model_files(args.model, args.output), args.data))
    ts = _parse_timesteps(args.timesteps)
    check_plotting()
    data = load_npz(args.data, require_labels=True)
    model = load(args.model, device=args.device, dt=args.dt)
    if not isinstance(model, CompiledModel):
        raise SnncError(f"{args.model}: a plain ONNX ANN; compile it with `snnc compile` before `snnc report`")
    x, y = (data.x, data.y) if args.samples is None else (data.x[: args.samples], data.y[: args.samples])
    t0 = time.perf_counter()
    page = build_report(
        model,
        x,
        y,
        ts,
        title=f"snnc report: {os.path.basename(args.model)}",
        analysis_samples=min(len(x), defaults.DEFAULT_LAYER_SAMPLES),
        batch_size=args.batch_size,
        progress=not args.quiet,
        backend=args.backend,
        device=args.device,
    )
    with atomic_write(output, "w", "-o") as handle:
        handle.write(page)
    print(
        f"wrote {output}: accuracy at T={','.join(str(t) for t in (ts or defaults.DEFAULT_EVAL_STEPS))} on {len(x)} "
        f"samples, firing rates, spike raster, per-layer errors and energy ({len(page) // 1024} KiB, "
        f"{time.perf_counter() - t0:.1f} s)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the command, map errors to exit codes."""
    # θ, λ, →: on an ASCII console (PYTHONIOENCODING=ascii) escaped, not a crash
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    if not debug:
        warnings.filterwarnings("ignore")
    with _held_log(debug) as held:
        code = _run_command(args, debug)
        if code == 0 and distributed.launched_rank() == 0:  # under torchrun, rank 0 alone warns
            held.flush()
    return code


@contextlib.contextmanager
def _held_log(debug: bool):
    """Log records (warnings) of a command are printed when it succeeds, and dropped when it fails:
    a failing command prints one line, its error (a version-conversion warning ahead of it said
    nothing the error does not). ``--debug`` prints everything as it happens."""
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("snnc: %(levelname)s: %(message)s"))
    held = (
        stream
        if debug
        else logging.handlers.MemoryHandler(
            capacity=10_000, flushLevel=logging.CRITICAL + 1, target=stream, flushOnClose=False
        )
    )
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    root.addHandler(held)
    try:
        yield held
    finally:
        root.removeHandler(held)
        root.setLevel(level)


#: the commands that run sharded under torchrun (see :mod:`snncompiler.distributed`)
DISTRIBUTED_COMMANDS = ("compile", "eval", "finetune", "train")


@contextlib.contextmanager
def _process_group(args):
    """Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set, world over 1), for the commands that
    shard their work: join the process group (gloo on CPU; NCCL with ``--device cuda``, rank r on
    GPU r of its node) for the command's duration; ranks other than 0 print nothing on stdout."""
    if args.command not in DISTRIBUTED_COMMANDS or not distributed.launched_by_torchrun():
        yield
        return
    device = distributed.init_from_env(getattr(args, "device", "cpu"))
    if hasattr(args, "device"):
        args.device = device
    try:
        with (
            open(os.devnull, "w") as sink,
            contextlib.redirect_stdout(sink) if not distributed.is_main() else contextlib.nullcontext(),
        ):
            yield
    finally:
        distributed.shutdown()


def _write_on_rank0(write) -> None:
    """Call ``write`` (an atomic file write) on rank 0 only and make the other ranks wait for it
    (just ``write()`` without a process group)."""
    if distributed.is_main():
        write()
    distributed.barrier()


def _run_command(args, debug: bool) -> int:
    """Run the chosen command; every failure becomes its exit status and one stderr line."""
    try:
        with _process_group(args):
            return int(args.func(args) or 0)
    except SnncError as exc:
        if debug:
            traceback.print_exc()
        # the library names an option as its argument (calib_samples: ...), the command line as its flag
        message = f"{exc.flag}: {exc.detail}" if isinstance(exc, OptionError) else str(exc)
        print(f"snnc: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("snnc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error of ours
        # stop Python from failing again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug in snnc, not bad input: still one line unless --debug
        if debug:
            raise
        msg = " ".join(str(exc).split())[:300]
        print(
            f"snnc: internal error: {type(exc).__name__}: {msg} (rerun with --debug for the traceback)", file=sys.stderr
        )
        return 1


# ---- commands -----------------------------------------------------------------------
def cmd_env(args) -> int:
    from ..environment import collect, format_text

    info = collect()
    print(json.dumps(info, indent=1) if args.json else format_text(info))
    return 0


def cmd_finetune(args) -> int:
    """snnc finetune MODEL.snn.onnx --data TRAIN.npz -o OUT.snn.onnx"""
    from .. import load
    from ..data import load_npz
    from ..model import CompiledModel
    from ..train.finetune import finetune

    output = resolve_output(args.output, "-o", (*_model_files(args.model, args.output), args.data, args.val))
    data = load_npz(args.data, require_labels=True)
    val = load_npz(args.val, require_labels=True, arg="--val") if args.val else None
    model = load(args.model, dt=args.dt)
    if not isinstance(model, CompiledModel):
        raise SnncError(f"{args.model}: a plain ONNX ANN; compile it with `snnc compile` before fine-tuning")
    t0 = time.perf_counter()
    given = {k: getattr(args, k) for k in ("timesteps", "epochs", "lr", "batch_size", "seed", "distill")}
    result = finetune(
        model,
        data,
        val=val,
        learn_theta=not args.no_learn_theta,
        keep_if_better=not args.keep_always,
        rate_penalty=args.rate_penalty,
        device=args.device,
        progress=not args.quiet,
        **{k: v for k, v in given.items() if v is not None},
    )
    note = result.report["finetune"]
    _write_on_rank0(lambda: result.save(output))
    verdict = "kept" if note["kept"] else "not better: wrote the model unchanged (--keep-always overrides)"
    print(
        f"held-out accuracy at T={note['timesteps']} on {note['val_samples']} samples: "
        f"{100 * note['val_accuracy_before']:.2f}% -> {100 * note['val_accuracy_after']:.2f}%, {verdict}; "
        f"wrote {output} ({time.perf_counter() - t0:.1f} s)"
    )
    return 0


def cmd_train(args) -> int:
    """snnc train MODEL.onnx --data TRAIN.npz -o OUT.snn.onnx"""
    from ..data import load_npz
    from ..train.direct import parse_schedule, train_onnx

    output = resolve_output(args.output, "-o", (*_model_files(args.model, args.output), args.data, args.val))
    stages = parse_schedule(args.timesteps, args.epochs)  # bad values fail before any data is read
    data = load_npz(args.data, require_labels=True)
    val = load_npz(args.val, require_labels=True, arg="--val") if args.val else None
    t0 = time.perf_counter()
    model = train_onnx(
        args.model,
        data,
        timesteps=[t for t, _ in stages],
        epochs=[e for _, e in stages],
        init=args.init,
        seed=args.seed,
        val=val,
        loss=args.loss,
        lamb=args.lam,
        lr=args.lr,
        batch_size=args.batch_size,
        device=args.device,
        neuron=args.neuron,
        tau=args.tau,
        population=args.population or defaults.DEFAULTS["population"],
        rate_penalty=args.rate_penalty,
        progress=True,
    )
    _write_on_rank0(lambda: model.save(output))
    note = model.report["train"]
    schedule = " -> ".join(f"T={t} x{e}" for t, e in stages)
    scored = (
        f"validation accuracy at T={stages[-1][0]} on {note['val_samples']} samples {100 * note['val_accuracy']:.2f}%; "
        if val is not None
        else ""
    )
    print(
        f"trained {args.model} ({args.init} init, {schedule} epochs, {args.loss}): {scored}wrote {output} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    return 0


def cmd_export(args) -> int:
    """snnc export MODEL.snn.onnx [--nir-flatten torch] [--nir-avgpool sum] -o OUT.nir | --format onnx
    [--timesteps T] -o OUT.onnx"""
    from .. import load
    from ..model import CompiledModel

    if args.format != "onnx" and args.timesteps is not None:
        raise SnncError("--timesteps: only with --format onnx (a NIR file has no fixed number of steps)")
    for flag, value in (("--nir-flatten", args.nir_flatten), ("--nir-avgpool", args.nir_avgpool)):
        if args.format != "nir" and value is not None:
            raise SnncError(f"{flag}: only with --format nir")
    suffix = os.path.splitext(str(args.output))[1].lower()
    if args.format == "nir" and suffix == ".onnx":
        raise SnncError(f"-o {args.output}: NIR (HDF5) under an .onnx name; name it .nir, or pass --format onnx")
    if args.format == "onnx" and suffix in (".nir", ".h5", ".hdf5"):
        raise SnncError(f"-o {args.output}: standard ONNX under a {suffix} name; name it .onnx, or pass --format nir")
    output = resolve_output(args.output, "-o", (*_model_files(args.model, args.output),))
    model = load(args.model)
    if not isinstance(model, CompiledModel):
        raise SnncError(
            f"{args.model}: a plain ONNX ANN; compile it with `snnc compile` before exporting "
            f"to {'standard ONNX' if args.format == 'onnx' else 'NIR'}"
        )
    if args.format == "onnx":
        T = args.timesteps or int(model.options["timesteps"])
        model.save_onnx(output, T)
        print(
            f"wrote {output}: standard ONNX, {len(model.graph.find('neuron'))} neuron layers as Scan over "
            f"T={T} steps, output the mean over T"
            + (
                ""
                if all(model.graph.is_float(v.name) for v in model.graph.outputs)
                else " (a mask or index: at step T)"
            )
        )
        return 0
    with _unlogged("snncompiler.formats.nir.writer"):  # printed here, once, not again by the held log
        warnings = model.save_nir(output, flatten=args.nir_flatten or "nir", avgpool=args.nir_avgpool or "avg")
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(
        f"wrote {output}: NIR graph of {len(model.graph.find('neuron'))} neuron layers "
        f"({'lossy: ' + str(len(warnings)) + ' warning(s) above' if warnings else 'no loss'})"
    )
    return 0


@contextlib.contextmanager
def _unlogged(name: str):
    """Drop the log records of logger ``name`` (and its children) while the block runs: for
    warnings a command prints itself, which the held log would otherwise print a second time."""

    class _Drop(logging.Filter):
        def filter(self, record):
            return not (record.name == name or record.name.startswith(name + "."))

    drop = _Drop()
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(drop)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(drop)


def cmd_inspect(args) -> int:
    """snnc inspect FILE"""
    from ..analysis.summary import (
        analog_heavy_warning,
        format_table,
        human,
        node_rows,
        share_line,
        spiking_share,
        summary,
    )
    from ..formats.onnx import load_graph

    if _is_nir(args):
        from .. import load

        graph = load(args.model, dt=args.dt).graph
    else:
        graph = load_graph(args.model, lenient=True)
    quantized = {}
    if not graph.find("unsupported"):
        # shown as compile converts it: fake quantization rewritten (passes/fake_quant.py)
        from ..passes import PassContext, fake_quant, run_pipeline

        ctx = PassContext()
        graph = run_pipeline(graph, ctx, [fake_quant])
        quantized = {k: ctx.report[k] for k in ("fake_quant_pairs", "quantized_activations") if k in ctx.report}
    rows = node_rows(graph)
    totals = summary(graph, rows)
    totals.update(quantized)
    warning = None
    if "unsupported" not in totals["conversion_counts"]:
        totals["spiking"] = spiking_share(graph, rows)
        warning = analog_heavy_warning(totals["spiking"], graph, args.model)
        totals["spiking"]["warning"] = warning
    if warning and args.strict:
        raise SnncError(f"--strict: {warning}")
    if args.json:
        print(json.dumps({"model": args.model, "nodes": rows, "totals": totals}, indent=1))
        return 0
    print(
        format_table(
            rows,
            [
                ("name", "name"),
                ("op", "op"),
                ("core_op", "core op"),
                ("output_shape", "output"),
                ("params", "params"),
                ("macs", "MACs"),
                ("conversion", "converts as"),
                ("detail", ""),
            ],
        )
    )
    counts = ", ".join(f"{v} {k}" for k, v in sorted(totals["conversion_counts"].items()))
    print(
        f"\n{args.model}: {totals['nodes']} nodes ({counts}); parameters {totals['parameters']:,} "
        f"({human(totals['parameters'])}); MACs per sample {totals['macs_per_sample']:,} "
        f"({human(totals['macs_per_sample'])})"
    )
    if "spiking" in totals:
        print(f"spiking: {share_line(totals['spiking'])}")
    if quantized:
        from ..passes.fake_quant import summary_lines

        print("\n".join(summary_lines(quantized)))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if "unsupported" in totals["conversion_counts"]:
        print("unsupported operators: the model cannot be run or compiled until they are replaced", file=sys.stderr)
    return 0


def _add_exec_option(p) -> None:
    p.add_argument(
        "--exec",
        choices=defaults.EXEC_MODES,
        default=None,
        help="spiking models: how conv/linear layers fed by spikes run (CPU): dense (default), event "
        "(from the nonzero inputs only, C++ kernel: gather form for dense weights, scatter and pruned forms "
        "for pruned ones) or auto (per layer and chunk, the cheapest of dense and those at the chunk's spike "
        "density by a cost model measured on first use and cached in $SNNC_CACHE_DIR); results equal dense "
        "within float32 summation order",
    )


def _add_population_option(p) -> None:
    p.add_argument(
        "--population",
        type=_positive_int,
        default=None,
        metavar="B",
        help=f"B neurons per ReLU, started θ/B apart, their spikes averaged: the rate resolution of B·T steps "
        f"at T steps' latency, for B-fold neuron updates and up to B-fold spikes (default "
        f"{defaults.DEFAULTS['population']}; at most {defaults.MAX_POPULATION})",
    )


def _add_presim_option(p) -> None:
    p.add_argument(
        "--presim",
        type=_nonnegative_int,
        default=None,
        metavar="RHO",
        help="spiking models: offset-spike correction (COS): each spiking layer first runs RHO steps of its "
        "input, then restarts every neuron that fired one spike too many (or too few) one threshold lower "
        "(higher) and runs the T steps; costs RHO membrane updates per neuron and RHO steps of latency "
        "per layer (IF neurons with soft reset; default 0: off)",
    )


def _add_cuda_graphs_option(p) -> None:
    p.add_argument(
        "--cuda-graphs",
        choices=defaults.CUDA_GRAPH_MODES,
        default="auto",
        help="spiking models on a GPU: replay each chunk of steps as one captured CUDA graph instead of "
        "launching its kernels one by one from Python; auto (default: where the model allows it, saying "
        "once where it does not), on (an error where it cannot), off",
    )


def _refuse_spiking_flags(args, flags: tuple[str, ...]) -> None:
    """Flags that only mean something for a spiking artifact, given with a plain ANN: an error
    rather than silently ignored (an ANN "evaluated at --timesteps 4" was not)."""
    given = [f for f in flags if getattr(args, f.lstrip("-").replace("-", "_"), None) not in (None, False, "auto")]
    if given:
        raise SnncError(
            f"{', '.join(given)}: only for spiking models; {args.model} is a plain ONNX ANN "
            "(compile it with `snnc compile` first)"
        )


def cmd_run(args) -> int:
    """snnc run MODEL --input X.npz -o Y.npz"""
    import numpy as np

    from .. import load
    from ..model import CompiledModel

    # numpy's savez appends .npz to a name without it: check (and report) the file really written
    output = resolve_output(
        args.output, "-o", (*_model_files(args.model, args.output, ".npz"), args.input), suffix=".npz"
    )
    data = _load_data(args, args.input, "--input", require_labels=False)
    model = load(args.model, device=args.device, dt=args.dt)
    if isinstance(model, CompiledModel):
        run = (
            model.ann
            if args.ann_mode
            else (
                lambda x: model.run(
                    x,
                    args.timesteps,
                    backend=args.backend,
                    device=args.device,
                    exec=args.exec,
                    cuda_graphs=args.cuda_graphs,
                    presim=args.presim,
                )
            )
        )
    else:
        _refuse_spiking_flags(args, ("--timesteps", "--backend", "--ann-mode", "--exec", "--cuda-graphs", "--presim"))
        run = model
    with _progress(len(data), "run", "sample") as bar:
        batches = []
        for x, _ in data.batches(args.batch_size):
            batches.append(run(x))
            bar.update(len(x))
    if isinstance(batches[0], (list, tuple)):  # an ANN with several outputs: every one is saved
        arrays = {
            ("y" if k == 0 else f"y{k}"): np.concatenate([b[k] for b in batches], axis=0)
            for k in range(len(batches[0]))
        }
    else:
        arrays = {"y": np.concatenate(batches, axis=0)}
    with atomic_write(output, "wb", "-o") as handle:
        np.savez(handle, **arrays)
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items())
    print(f"wrote {output}: {shapes} from {len(data)} samples")
    return 0


def cmd_compile(args) -> int:
    """snnc compile MODEL.onnx --calib CALIB.npz -o OUT.snn.onnx"""
    from .. import compile as snn_compile
    from ..analysis.summary import format_table, human, node_rows, share_line
    from ..data import load_npz

    if args.lr is not None and args.finetune is None:  # it would change nothing: say so instead
        raise SnncError("--lr: is the learning rate of the --finetune stage; pass --finetune EPOCHS too")
    if args.distill is not None and args.finetune is None:
        raise SnncError("--distill: distils the ANN during the --finetune stage; pass --finetune EPOCHS too")
    if args.iterations is not None and (args.calibration or defaults.CompileOptions.calibration) != "advanced":
        raise SnncError("--iterations: the weight-calibration steps of --calibration advanced; pass that too")
    output = resolve_output(args.output, "-o", (*_model_files(args.model, args.output), args.calib))
    calib = load_npz(args.calib, arg="--calib")
    t0 = time.perf_counter()
    model = snn_compile(
        args.model,
        calib,
        timesteps=args.timesteps,
        threshold=args.threshold,
        channelwise=args.channelwise,
        neuron=args.neuron,
        tau=args.tau,
        reset=args.reset,
        v0=args.v0,
        population=args.population,
        maxpool=args.maxpool,
        encoding=args.encoding,
        strict=args.strict,
        calib_samples=args.calib_samples,
        calibration=args.calibration,
        iterations=args.iterations,
        seed=args.seed,
        substitute=args.substitute,
        signed_spikes=args.signed_spikes,
        fuse_linear=args.fuse_linear,
        finetune=args.finetune,
        finetune_lr=args.lr,
        **({"distill": args.distill} if args.distill is not None else {}),
        # quiet: the calibration passes' per-layer bars (shown on a terminal only, like every bar)
        **({"quiet": True} if args.quiet else {}),
        **({"progress": not args.quiet} if args.finetune else {}),
    )
    o = model.options
    rows = [r for r in node_rows(model.graph) if r["core_op"] != "-"]
    for r in rows:
        node = model.graph.node(r["name"])
        r["threshold_from"] = (
            node.attrs.get("theta_source", "")
            if node.op == "neuron"
            else (f"max pooling: {node.attrs['spiking']}" if node.op == "maxpool" and "spiking" in node.attrs else "")
        )
    print(
        format_table(
            rows,
            [
                ("name", "name"),
                ("op", "op"),
                ("core_op", "becomes"),
                ("conversion", "converts as"),
                ("detail", "θ"),
                ("threshold_from", "from"),
            ],
        )
    )
    islands = model.report.get("analog_islands", [])
    if islands:
        print(f"analog islands (computed on rate-decoded inputs): {', '.join(islands)}")
    _write_on_rank0(lambda: model.save(output))
    neurons = len(model.graph.find("neuron"))
    population = f"population {o['population']}, " if o["population"] > 1 else ""
    print(
        f"wrote {output}: {neurons} neurons, T={o['timesteps']}, threshold {o['threshold']}"
        f"{' per channel' if o['channelwise'] else ''}, {o['neuron'].upper()} {o['reset']} reset, v0={o['v0']}, "
        f"{population}calibration {o['calibration']} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    print(f"spiking: {share_line(model.report['spiking'])}")
    for line in model.report.get("signed_inputs", []) + model.report.get("fuse_linear", []):
        print(f"  {line}")
    from ..passes.fake_quant import summary_lines

    for line in summary_lines(model.report):
        print(line)
    fused = model.report.get("fuse_linear_macs")
    if fused:
        print(f"  --fuse-linear: {human(fused['before'])} → {human(fused['after'])} MACs per sample, all layers")
    pipeline = model.report.get("pipeline")
    if pipeline:
        print(
            f"pipeline at T={pipeline['timesteps']} (held-out accuracy and cross-entropy on "
            f"{pipeline['heldout_samples']} labelled --calib samples no stage fitted):"
        )
        for stage in pipeline["stages"]:
            if "failed" in stage:
                print(f"  {stage['stage']:<28} failed, dropped: {stage['failed']}")
                continue
            print(
                f"  {stage['stage']:<28} {100 * stage['heldout_accuracy']:6.2f} %  loss {stage['heldout_loss']:.4f}  "
                f"{'kept' if stage['kept'] else 'dropped'}"
            )
    return 0


def _parse_timesteps(text: str | None) -> list[int] | None:
    if text is None:
        return None  # the model's default: powers of two to 256, or to a sequence input's length
    try:
        ts = sorted({int(t) for t in text.split(",")})  # an empty item (1,,2 or 4,) is a typo, not skipped
    except ValueError:
        raise SnncError(f"--timesteps: expected comma-separated integers, got '{text}'") from None
    if not ts or ts[0] < 1:
        raise SnncError(f"--timesteps: values must be ≥ 1, got '{text}'")
    return ts


def _eval_snn(args, model, data) -> int:
    ts = _parse_timesteps(args.timesteps)
    for flag, value in (("--reference", args.reference), ("--layer-samples", args.layer_samples)):
        if value is not None and not args.layers:
            raise SnncError(f"{flag}: only with --layers (per-layer errors)")
    layer_samples = args.layer_samples or defaults.DEFAULT_LAYER_SAMPLES
    if args.layers and model.sequence:
        raise SnncError("--layers: per-layer conversion errors need static inputs; this model takes sequences")
    t0 = time.perf_counter()
    result = model.evaluate(
        data.x,
        data.y,
        ts,
        batch_size=args.batch_size,
        backend=args.backend,
        device=args.device,
        exec=args.exec,
        cuda_graphs=args.cuda_graphs,
        presim=args.presim,
        progress=True,
        **({"chunk": args.chunk} if args.chunk else {}),
    )
    seconds = time.perf_counter() - t0
    ts = [int(t) for t in result["snn_accuracy"]]
    if args.plot:
        _write_on_rank0(lambda: _plot(args.plot, result, args.model))
        if args.json and distributed.is_main():  # stdout stays one JSON object
            print(f"wrote {args.plot}: accuracy against T", file=sys.stderr)
    if args.layers:
        from ..analysis.diagnostics import layer_errors

        reference = None
        if args.reference:
            from ..formats.onnx import load_graph

            reference = load_graph(args.reference)
        result["layers"] = layer_errors(model, data.x[:layer_samples], ts[-1], reference=reference)
    if args.sops:
        result["synaptic_ops"] = model.synaptic_operations(
            data.x,
            ts[-1],
            batch_size=args.batch_size,
            backend=args.backend,
            device=args.device,
            exec=args.exec,
            presim=args.presim,
            **({"chunk": args.chunk} if args.chunk else {}),
        )
    if args.json:
        print(json.dumps(eval_record(result, model=args.model, kind="snn", engine="torch", seconds=seconds)))
        return 0
    print(
        f"{args.model}: {result['samples']} samples, ANN mode {100 * result['ann_accuracy']:.2f}%, "
        f"firing rate {result['firing_rate']:.4f} spikes/neuron/step ({seconds:.1f} s for T={ts[-1]})"
    )
    print("   T  SNN accuracy")
    for t, acc in result["snn_accuracy"].items():
        print(f"{int(t):>4}  {100 * acc:6.2f}%")
    if args.layers:
        from ..analysis.summary import format_table

        print(
            f"\nper-layer errors at T={ts[-1]} on {min(len(data), layer_samples)} samples "
            "(mean squared; flooring includes every other SNN-vs-clipped-ANN mismatch):"
        )
        print(
            format_table(
                result["layers"],
                [
                    ("layer", "layer"),
                    ("theta", "θ (mean)"),
                    ("clipping_error", "clipping"),
                    ("flooring_error", "flooring"),
                    ("firing_rate", "firing rate"),
                    ("cosine", "cosine(a, s̄)"),
                ],
            )
        )
    if args.sops:
        from ..analysis.metrics import format_synaptic_operations

        print("\n" + format_synaptic_operations(result["synaptic_ops"]))
    if args.plot:
        print(f"wrote {args.plot}: accuracy against T")
    return 0


def _plot_format(path: str) -> str:
    """The image format ``--plot`` will write, from the name's extension, checked before any work
    (an unknown one used to fail only after the whole evaluation)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError as exc:
        raise SnncError("--plot needs matplotlib (pip install 'snncompiler[plot]')") from exc
    known = FigureCanvasBase.get_supported_filetypes()
    extension = os.path.splitext(path)[1].lstrip(".").lower()
    if extension not in known:
        raise SnncError(
            f"--plot {path}: the image format comes from the extension; use one of "
            f"{', '.join('.' + k for k in sorted(known))}"
        )
    return extension


def _plot(path, result, title) -> None:
    import matplotlib.pyplot as plt

    ts = [int(t) for t in result["snn_accuracy"]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ts, [100 * a for a in result["snn_accuracy"].values()], "o-", label="SNN")
    ax.axhline(100 * result["ann_accuracy"], color="gray", ls="--", label="ANN")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("timesteps T")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(str(title), fontsize=8)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path, "wb", "--plot") as handle:
        fig.savefig(handle, format=_plot_format(path), dpi=120)
    plt.close(fig)


def _load_data(args, path: str, flag: str, require_labels: bool):
    """An .npz file, or with ``--frames`` a folder of event recordings binned into frame sequences."""
    from ..data import load_npz

    if os.path.isdir(path):
        if args.frames is None:
            raise SnncError(
                f"{flag} {path}: a directory is read as event recordings (root/<class>/<file>); "
                "give --frames T to bin them into T frames"
            )
        from ..data.events import load_event_folder

        return load_event_folder(
            path, args.frames, sensor_size=args.sensor, split_by=args.split_by or "number", progress=sys.stderr.isatty()
        )
    if args.frames is not None or args.sensor is not None or args.split_by is not None:
        raise SnncError(f"--frames/--sensor/--split-by: only for a directory of event recordings; {path} is a file")
    return load_npz(path, require_labels=require_labels, arg=flag)


def _sensor(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W (e.g. 34,34), got '{text}'") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"sensor height and width must be ≥ 1, got '{text}'")
    return h, w


def _add_dt_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dt",
        type=_positive_float,
        default=None,
        help="NIR files that do not record their time step: dt in seconds (1e-4 for SpikingJelly and "
        "snnTorch exports, 1 for Sinabs)",
    )


def _is_nir(args) -> bool:
    """Whether MODEL is a NIR file; ``--dt`` with an ONNX model is an error, not ignored."""
    from ..formats.nir.reader import is_nir_file

    if is_nir_file(args.model):
        return True
    if args.dt is not None:
        raise SnncError(f"--dt: only for NIR files; {args.model} is ONNX")
    return False


def _add_event_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--frames",
        type=_positive_int,
        default=None,
        help="read a directory root/<class>/<event file> (.bin N-MNIST/ATIS, .aedat AEDAT 3.1, .npz t,x,y,p) "
        "as sequences of this many frames [N, T, 2, H, W]",
    )
    p.add_argument(
        "--split-by",
        choices=["number", "time"],
        default=None,
        help="with --frames: equal event counts (number, the default) or equal time spans per frame",
    )
    p.add_argument(
        "--sensor",
        type=_sensor,
        default=None,
        help="with --frames: sensor H,W (default: the largest coordinates found + 1)",
    )


#: The keys of ``snnc eval --json``, the same for a plain ANN and a spiking model (README, "eval --json"):
#: what does not apply to the model (an ANN's ``snn_accuracy``, say) or was not asked for
#: (``layers`` without --layers, ``synaptic_ops`` without --sops) is null.
EVAL_JSON_KEYS = (
    "model",
    "kind",
    "samples",
    "engine",
    "seconds",
    "ann_accuracy",
    "snn_accuracy",
    "firing_rate",
    "layers",
    "synaptic_ops",
)


def eval_record(result: dict, **extra) -> dict:
    """``snnc eval --json``'s object: every key of :data:`EVAL_JSON_KEYS` (null where it does not
    apply), in that order, then anything else ``result`` holds."""
    merged = {**extra, **result}
    if merged.get("seconds") is not None:
        merged["seconds"] = round(float(merged["seconds"]), 3)
    return {**{k: merged.get(k) for k in EVAL_JSON_KEYS}, **merged}


def _progress(total: int, desc: str, unit: str):
    """A progress bar on stderr for a command's loop (shown on a terminal only; TQDM_DISABLE=1 hides it)."""
    from ..progress import progress_bar

    return progress_bar(total, desc, unit)


def cmd_eval(args) -> int:
    """snnc eval MODEL --data TEST.npz [--json]"""
    from ..analysis.metrics import correct
    from ..formats.onnx.reader import is_artifact, read_model

    if args.plot:
        _plot_format(args.plot)
        resolve_output(args.plot, "--plot", (*_model_files(args.model, args.plot), args.data, args.reference))
    data = _load_data(args, args.data, "--data", require_labels=True)
    if _is_nir(args) or is_artifact(read_model(args.model)[0]):
        from .. import load

        return _eval_snn(args, load(args.model, dt=args.dt), data)
    _refuse_spiking_flags(
        args,
        (
            "--timesteps",
            "--chunk",
            "--backend",
            "--exec",
            "--cuda-graphs",
            "--presim",
            "--plot",
            "--layers",
            "--reference",
            "--layer-samples",
            "--sops",
        ),
    )
    if args.engine == "onnxruntime" and args.device != "cpu":
        raise SnncError(f"--device {args.device}: onnxruntime runs a plain ANN on the CPU here; add --engine torch")
    t0 = time.perf_counter()
    if args.engine == "onnxruntime":
        from ..formats.onnx.ort import OrtModel

        model = OrtModel(args.model)
    else:
        from .. import load

        model = load(args.model, device=args.device)
    if distributed.is_distributed():  # each rank scores its shard; the counts are added up
        start, end = distributed.shard_range(len(data))
        right = sum(
            correct(model(data.x[s : min(s + args.batch_size, end)]), data.y[s : min(s + args.batch_size, end)])
            for s in range(start, end, args.batch_size)
        )
        right = int(distributed.sum_numbers(right)[0])
    else:
        with _progress(len(data), "eval", "sample") as bar:
            right = 0
            for x, y in data.batches(args.batch_size):
                right += correct(model(x), y)
                bar.update(len(x))
    acc = right / len(data)
    result = {
        "model": args.model,
        "samples": len(data),
        "ann_accuracy": acc,
        "engine": args.engine,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if args.json:
        print(json.dumps(eval_record(result, kind="ann")))
    else:
        print(
            f"{args.model}: top-1 accuracy {100 * acc:.2f}% on {len(data)} samples "
            f"({args.engine}, {result['seconds']:.2f} s)"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
