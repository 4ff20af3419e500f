"""Quantized ONNX models in: an int8 model (QDQ format) compiles like its float original.

    python -m benchmarks.quantized                       # digits CNN and ResNet, ≈3 min on 2 cores
    python -m benchmarks.quantized --workloads digits_cnn --timesteps 4,16,64

Each workload of examples.workloads.BENCH_WORKLOADS is trained, exported to ONNX (float) and
quantized by onnxruntime's static quantizer (``quantize_static``: QDQ format, uint8 activations,
int8 weights per channel, MinMax ranges from the calibration batch): the model a user gets from
the standard int8 tooling, whose ReLUs the quantizer removed (a uint8 grid from 0 clips them);
the same quantization in QOperator format ("int8 QOp": QLinearConv and onnxruntime's
com.microsoft QLinearAdd, QLinearGlobalAveragePool, QGemm, with MaxPool and Flatten on the
integers); and once more with 4-bit activations (QUInt4, on the model converted to opset 21:
"uint4 QDQ").
onnxruntime scores the ANNs ("ANN"; "snnc ANN" is the network snnc converts, the model's fake
quantization rewritten by passes/fake_quant.py); ``snnc.compile`` converts each with the same
calibration batch and default options, and the SNNs are scored at every T from one run.
Writes benchmarks/results/quantized.json and prints a table per workload.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import onnx
import onnx.version_converter

import snncompiler as snnc
from benchmarks.kernels import machine
from examples.workloads import BENCH_WORKLOADS, export_onnx
from snncompiler.fileio import atomic_write
from snncompiler.formats.onnx.ort import OrtModel

DEFAULT_WORKLOADS = ("digits_cnn", "digits_resnet")
DEFAULT_T = (1, 2, 4, 8, 16, 32, 64, 128)


def ort_quantize(
    float_path: str,
    out_path: str,
    calib: np.ndarray,
    input_name: str = "x",
    *,
    quant_format: str = "QDQ",
    per_channel: bool = True,
    op_types: list[str] | None = None,
    batch: int = 64,
    activation_type: str = "QUInt8",
) -> str:
    """onnxruntime's static quantization of ``float_path`` (``quant_format`` QDQ or QOperator;
    ``activation_type`` activations (QUInt8; QUInt4 needs an opset-21 model), int8 weights, per
    channel or per tensor, MinMax ranges over ``calib``)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calib[i : i + batch] for i in range(0, len(calib), batch))

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {input_name: np.ascontiguousarray(x, np.float32)}

    quantize_static(
        float_path,
        out_path,
        Batches(),
        quant_format=getattr(QuantFormat, quant_format),
        activation_type=getattr(QuantType, activation_type),
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        op_types_to_quantize=op_types,
    )
    return out_path


def ann_accuracy(path: str, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy (%) of an ONNX file under onnxruntime."""
    return 100.0 * float((OrtModel(path)(x).argmax(1) == y).mean())


def run_workload(name: str, timesteps: list[int], seed: int) -> dict:
    """Train, export, quantize, compile both and score: one result row per model."""
    wl = BENCH_WORKLOADS[name](seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        float_path, qdq_path = str(Path(tmp) / "float.onnx"), str(Path(tmp) / "int8.onnx")
        export_onnx(wl.model, wl.input_shape, float_path)
        input_name = onnx.load(float_path).graph.input[0].name
        ort_quantize(float_path, qdq_path, wl.calib.x, input_name)
        ops = sorted({n.op_type for n in onnx.load(qdq_path).graph.node})
        # the same quantization written as QOperator layers (QLinearConv, com.microsoft QLinearAdd ...)
        qop_path = str(Path(tmp) / "int8_qoperator.onnx")
        ort_quantize(float_path, qop_path, wl.calib.x, input_name, quant_format="QOperator")
        qop_ops = sorted(
            {f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in onnx.load(qop_path).graph.node}
        )
        # 4-bit activations: onnxruntime writes standard uint4 QDQ only at opset 21
        opset21, q4_path = str(Path(tmp) / "float21.onnx"), str(Path(tmp) / "uint4.onnx")
        onnx.save(onnx.version_converter.convert_version(onnx.load(float_path), 21), opset21)
        ort_quantize(opset21, q4_path, wl.calib.x, input_name, activation_type="QUInt4")
        rows = {}
        models = (("float", float_path), ("int8 QDQ", qdq_path), ("int8 QOp", qop_path), ("uint4 QDQ", q4_path))
        for label, path in models:
            t0 = time.perf_counter()
            model = snnc.compile(path, wl.calib, seed=seed)
            compile_s = time.perf_counter() - t0
            res = model.evaluate(wl.test.x, wl.test.y, timesteps)
            rows[label] = {
                "ann_onnxruntime": ann_accuracy(path, wl.test.x, wl.test.y),
                "ann_snnc": 100.0 * res["ann_accuracy"],  # the network snnc converts (int8 pairs rewritten)
                "snn": {str(t): 100.0 * res["snn_accuracy"][str(t)] for t in timesteps},
                "neurons": sum(1 for n in model.graph.nodes if n.op == "neuron"),
                "fake_quant_pairs": model.report.get("fake_quant_pairs"),
                "compile_s": round(compile_s, 2),
            }
    return {
        "note": wl.note,
        "test_samples": int(len(wl.test.x)),
        "int8_ops": ops,
        "qoperator_ops": qop_ops,
        "rows": rows,
    }


def print_table(name: str, result: dict, timesteps: list[int]) -> None:
    """One workload's accuracies: ANN (onnxruntime) and SNN per T, float vs int8."""
    print(f"\n{name} ({result['test_samples']} test samples): {result['note']}")
    head = f"{'model':<10} {'ANN':>7} {'snnc ANN':>8} " + " ".join(f"{'T=' + str(t):>7}" for t in timesteps)
    print(head)
    print("-" * len(head))
    for label, row in result["rows"].items():
        cells = " ".join(f"{row['snn'][str(t)]:7.2f}" for t in timesteps)
        print(f"{label:<10} {row['ann_onnxruntime']:7.2f} {row['ann_snnc']:8.2f} {cells}")


def workload_benchmark(argv, *, description: str, workloads, default_workloads, default_t, run, show, json_name) -> int:
    """The command line both accuracy benchmarks share: ``--workloads`` (names in ``workloads``),
    ``--timesteps``, ``--seed``, ``--threads`` and ``--out``; ``run(name, timesteps, seed)`` gives
    one workload's result, ``show(name, result, timesteps)`` prints it, and every result goes to
    ``out/json_name`` (or to ``--out`` itself where it names a .json file) with the command that
    made it and the machine it ran on: training, and so every figure, changes with the CPU. An
    unknown workload exits with 2."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--workloads", default=",".join(default_workloads), help="comma list of " + ", ".join(workloads))
    p.add_argument("--timesteps", default=",".join(map(str, default_t)), help="comma list of T")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder or .json file")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    timesteps = sorted({int(t) for t in args.timesteps.split(",")})
    names = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in names if w not in workloads]
    if unknown:
        print(f"unknown workload(s): {', '.join(unknown)}; choose from {', '.join(workloads)}", file=sys.stderr)
        return 2
    results = {}
    for name in names:
        results[name] = run(name, timesteps, args.seed)
        show(name, results[name], timesteps)
    path = Path(args.out) if args.out.endswith(".json") else Path(args.out) / json_name
    path.parent.mkdir(parents=True, exist_ok=True)
    module = Path(sys.modules[run.__module__].__file__).stem
    command = f"python -m benchmarks.{module} " + " ".join(argv if argv is not None else sys.argv[1:])
    payload = {"command": command.strip(), "machine": machine(), "timesteps": timesteps, "workloads": results}
    with atomic_write(path, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"\nwrote {path}")
    return 0


def main(argv=None) -> int:
    return workload_benchmark(
        argv,
        description=__doc__.split("\n")[0],
        workloads=BENCH_WORKLOADS,
        default_workloads=DEFAULT_WORKLOADS,
        default_t=DEFAULT_T,
        run=run_workload,
        show=print_table,
        json_name="quantized.json",
    )


if __name__ == "__main__":
    sys.exit(main())
