"""What every example app shares: command-line options, ANN-vs-SNN comparison at every T, the
printed table and the JSON record.

An app trains its own ANN in torch, exports it to ONNX with
:func:`examples.workloads.export_onnx`, then hands the file to :func:`compare`, which does
what a user would do with ``snnc``: score the ANN with onnxruntime (the ANN oracle), compile the
file with :func:`snncompiler.compile`, save the artifact, and score the spiking model at every T
from one simulation. The app supplies ``score(outputs) -> {metric: value}``, so each task keeps
its own metrics (accuracy, Dice, MCC, ...), computed the same way for the ANN and the SNN.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import snncompiler as snnc
from snncompiler.fileio import write_bytes, write_text
from snncompiler.formats.onnx.ort import OrtModel

DEFAULT_TIMESTEPS = (1, 2, 4, 8, 16, 32, 64, 128)

Score = Callable[[np.ndarray], dict]


def app_args(
    description: str,
    name: str,
    argv=None,
    *,
    timesteps=DEFAULT_TIMESTEPS,
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """The options every app takes: ``--quick`` (the small configuration the tests run),
    ``--json`` (stdout is one JSON summary, see :func:`summary`; the table goes to stderr),
    ``--out`` (where the ONNX files and the artifact go), ``--seed``, ``--timesteps`` (default
    ``timesteps``); ``configure`` adds an app's own options to the parser.

    ``name`` is the app's module under ``apps`` and may be dotted (``finance.stock_movement``):
    its folder is ``apps/finance/stock_movement``."""
    parser = argparse.ArgumentParser(prog=f"python -m apps.{name}", description=description)
    folder = Path("apps").joinpath(*name.split("."))  # "medical.lowshot_seg" lives in apps/medical/lowshot_seg
    parser.add_argument(
        "--quick", action="store_true", help="a small configuration (fewer samples and epochs) that runs in seconds"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=folder / "out",
        help="directory for the ONNX model and the artifact, and for results.json and the figure under "
        "--quick (a full run writes its record beside the app, where the README quotes it; default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for data, initialisation and batching")
    parser.add_argument(
        "--timesteps",
        type=_steps,
        default=tuple(timesteps),
        help=f"comma-separated T to report, all from one run (default: {','.join(map(str, timesteps))})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object {task, metric, ann, snn: {T: value}, seconds} on stdout (the tables go to stderr)",
    )
    if configure is not None:
        configure(parser)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    # the full run's record is committed beside the app (the README quotes it); --quick runs
    # (the tests) keep theirs in --out so they never overwrite it
    args.app_dir = Path(__file__).parent.joinpath(*name.split("."))
    args.results = args.out / "results.json" if args.quick else args.app_dir / "results.json"
    # the figure likewise: the full run's is committed under the app's results/, quick runs' in --out
    args.figures = args.out if args.quick else args.app_dir / "results"
    args.figures.mkdir(parents=True, exist_ok=True)
    args.started = time.perf_counter()
    torch.set_num_threads(min(torch.get_num_threads(), 2))  # the tables in the README use 2 threads
    return args


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block on ``n`` torch threads, restoring the count afterwards. The apps train tiny
    layers, where a second thread costs more in synchronisation than it saves (several times
    slower on the 2-vCPU VM while other jobs ran on it)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _steps(text: str) -> tuple[int, ...]:
    try:
        steps = tuple(sorted({int(t) for t in text.split(",")}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if steps[0] < 1:
        raise argparse.ArgumentTypeError("timesteps must be ≥ 1")
    return steps


def compare(
    name: str,
    onnx_path: Path,
    calib_x: np.ndarray,
    test_x: np.ndarray,
    score: Score,
    *,
    timesteps=DEFAULT_TIMESTEPS,
    out_dir: Path,
    **compile_options,
) -> dict:
    """Compile ``onnx_path`` into a spiking model and score ANN and SNN on ``test_x``.

    Returns a JSON-ready record: the ANN's metrics (onnxruntime), the artifact's own ANN mode
    (neurons as clip(x, 0, θ): separates clipping from flooring error), the SNN's metrics at
    every T, its firing rate, the compile report's analog islands and the timings.
    """
    return compare_model(
        name, onnx_path, calib_x, test_x, score, timesteps=timesteps, out_dir=out_dir, **compile_options
    )[0]


def compare_model(
    name: str,
    onnx_path: Path,
    calib_x: np.ndarray,
    test_x: np.ndarray,
    score: Score,
    *,
    timesteps=DEFAULT_TIMESTEPS,
    out_dir: Path,
    **compile_options,
):
    """:func:`compare`, returning (record, the compiled model) for apps that go on with the model
    (calibration, fine-tuning, synaptic operations)."""
    timesteps = sorted({int(t) for t in timesteps})
    ann_scores = score(OrtModel(onnx_path)(test_x))
    t0 = time.perf_counter()
    model = snnc.compile(str(onnx_path), calib_x, timesteps=timesteps[-1], **compile_options)
    compile_s = time.perf_counter() - t0
    artifact = Path(out_dir) / f"{name}.snn.onnx"
    model.save(artifact)
    t0 = time.perf_counter()
    outs = model.run(test_x, timesteps[-1], checkpoints=timesteps)
    run_s = time.perf_counter() - t0
    record = {
        "app": name,
        "samples": int(len(test_x)),
        "ann": ann_scores,
        "ann_mode": score(model.ann(test_x)),
        "snn": {str(t): score(outs[t]) for t in timesteps},
        "firing_rate": model.last_runner.firing_rate,
        "analog_islands": list(model.report.get("analog_islands", [])),
        "compile_seconds": round(compile_s, 2),
        "simulate_seconds": round(run_s, 2),
        "artifact": str(artifact),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    return record, model


def print_table(record: dict, metrics=None) -> None:
    """One row per T (the ANN and the artifact's ANN mode first), one column per metric."""
    metrics = list(metrics or record["ann"])
    rows = [("ANN (onnxruntime)", record["ann"]), ("ANN mode of artifact", record["ann_mode"])]
    rows += [(f"SNN T={t}", s) for t, s in record["snn"].items()]
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  " + "  ".join(f"{m:>10}" for m in metrics))
    for label, values in rows:
        print(f"{label:{width}}  " + "  ".join(f"{_fmt(values[m]):>10}" for m in metrics))
    print(
        f"firing rate {record['firing_rate']:.4f} spikes/neuron/step; compile {record['compile_seconds']} s, "
        f"simulate {record['simulate_seconds']} s ({record['samples']} samples)"
    )
    if record["analog_islands"]:
        print(f"analog islands (computed on rate-decoded inputs): {', '.join(record['analog_islands'])}")


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_json(record: dict, path: Path) -> Path:
    """Write ``record`` as indented JSON (floats rounded to 6 digits) and return the path."""

    path = Path(path)
    write_text(path, json.dumps(_rounded(record), indent=2) + "\n")
    print(f"wrote {path}")
    return path


def _rounded(value):
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


@contextlib.contextmanager
def human_output(args: argparse.Namespace):
    """With ``--json``, send what the block prints (tables, progress) to stderr, so that stdout
    carries the JSON summary alone."""
    if not getattr(args, "json", False):
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def summary(task: str, metric: str, ann: float, snn: dict, started: float) -> dict:
    """The one-object summary ``--json`` prints: ``{"task", "metric", "ann", "snn": {"T": value},
    "seconds"}`` (``seconds``: wall time since ``started``, a ``time.perf_counter()`` value)."""
    return {
        "task": task,
        "metric": metric,
        "ann": float(ann),
        "snn": {str(t): float(v) for t, v in snn.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }


def emit_summary(args: argparse.Namespace, record: dict) -> None:
    """Print the ``--json`` summary (``record["summary"]``) on stdout when asked for."""
    if getattr(args, "json", False):
        print(json.dumps(_rounded(record["summary"])))


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure as PNG (through :mod:`snncompiler.fileio`) and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_bytes(Path(path), buffer.getvalue())
    print(f"wrote {path}")
    return Path(path)


def synaptic_energy(record: dict, timesteps: int, x: np.ndarray) -> dict:
    """Synaptic operations and energy of the artifact ``record["artifact"]`` on ``x`` at
    ``timesteps`` (:meth:`CompiledModel.synaptic_operations`), added to ``record`` as ``energy``."""
    sops = snnc.load(record["artifact"]).synaptic_operations(x, timesteps)
    record["energy"] = sops
    return sops
