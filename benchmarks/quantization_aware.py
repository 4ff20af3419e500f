"""Quantization-aware ANNs (QCFS) against ReLU ANNs: SNN accuracy at few timesteps.

    python -m benchmarks.quantization_aware              # digits CNN, ResNet, MobileNet: ≈3 min on 2 cores
    python -m benchmarks.quantization_aware --workloads digits_resnet --timesteps 1,2,4

Each digits workload of examples.workloads is trained four ways from the same seed and for the
same 30 epochs: with its ReLUs (the BENCH_WORKLOADS model), and with every ReLU/ReLU6 replaced
by snnc.train.QCFS (L = 4 or 8 levels, λ from 2.0; and L = 4 from QCFS's own 8.0). Each is
exported to ONNX and compiled by ``snnc.compile`` with default options: the QCFS staircases
become neurons with θ = the trained λ (passes/fake_quant.py), the ReLU network's θ is the
calibrated p99.9. "ANN" is the torch model's test accuracy (QCFS: with its staircase), the SNNs
are scored at every T from one run. The ReLU and QCFS L=4 networks are also compiled at each T
with ``calibration="advanced"`` (weight and potential calibration fitted for that T; rows
"+ advanced"). Writes benchmarks/results/quantization_aware.json.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

import snncompiler as snnc
from benchmarks.quantized import workload_benchmark
from examples.workloads import DigitsCNN, DigitsMobileNet, DigitsResNet, digits, evaluate, export_onnx, train_classifier

MODELS = {"digits_cnn": DigitsCNN, "digits_resnet": DigitsResNet, "digits_mobilenet": DigitsMobileNet}
#: (label, levels, λ's initial value); levels None = the ReLU network.
VARIANTS = (("ReLU", None, None), ("QCFS L=4", 4, 2.0), ("QCFS L=8", 8, 2.0), ("QCFS L=4, λ0=8", 4, 8.0))
#: variant → the label of its row compiled at each T with calibration="advanced"
CALIBRATED = {"ReLU": "ReLU + advanced", "QCFS L=4": "QCFS L=4 + advanced"}
DEFAULT_T = (1, 2, 4, 8, 16, 32, 64)
EPOCHS = 30
CALIB_SAMPLES = 512


def run_workload(name: str, timesteps: list[int], seed: int) -> dict:
    """Train every variant of one workload, compile each and score the SNN at every T."""
    train, test = digits(seed=seed)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, levels, init in VARIANTS:
            t0 = time.perf_counter()
            net, path = trained_variant(name, levels, init, train, seed, tmp)
            train_s = time.perf_counter() - t0
            model = snnc.compile(str(path), train.x[:CALIB_SAMPLES], seed=seed)
            res = model.evaluate(test.x, test.y, timesteps)
            rows[label] = {
                "levels": levels,
                "init": init,
                "ann": 100.0 * evaluate(net, test),
                "ann_snnc": 100.0 * res["ann_accuracy"],  # the network snnc converts: staircases as clips
                "snn": {str(t): 100.0 * res["snn_accuracy"][str(t)] for t in timesteps},
                "quantized_activations": model.report.get("quantized_activations"),
                "train_s": round(train_s, 1),
            }
            if label in CALIBRATED:
                rows[CALIBRATED[label]] = {**rows[label], **calibrated_at_each_t(path, train, test, timesteps, seed)}
    return {"test_samples": int(len(test.x)), "epochs": EPOCHS, "rows": rows}


def trained_variant(name: str, levels: int | None, init: float | None, train, seed: int, folder):
    """One workload's network trained ``EPOCHS`` epochs from ``seed``, with ReLUs (``levels``
    None) or QCFS staircases of ``levels`` levels and λ from ``init``; (torch model, its ONNX
    file in ``folder``)."""
    torch.manual_seed(seed)  # as examples.workloads builds the ReLU model: same initial weights
    net = MODELS[name]()
    if levels:
        snnc.train.use_qcfs(net, levels, init)
    train_classifier(net, train, epochs=EPOCHS, seed=seed)
    return net, export_onnx(net, train.x.shape[1:], Path(folder) / f"{name}_{levels}_{init}.onnx")


def calibrated_at_each_t(path, train, test, timesteps: list[int], seed: int) -> dict:
    """The SNN accuracy at each T of the model compiled for that T with calibration="advanced"."""
    snn, t0 = {}, time.perf_counter()
    for t in timesteps:
        model = snnc.compile(str(path), train.x[:CALIB_SAMPLES], seed=seed, timesteps=t, calibration="advanced")
        snn[str(t)] = 100.0 * model.evaluate(test.x, test.y, [t])["snn_accuracy"][str(t)]
    return {"calibration": "advanced, compiled at each T", "snn": snn, "compile_s": round(time.perf_counter() - t0, 1)}


def print_table(name: str, result: dict, timesteps: list[int]) -> None:
    """One workload's accuracies: the torch ANN, and the SNN per T, per variant."""
    print(f"\n{name} ({result['test_samples']} test digits, {result['epochs']} epochs)")
    head = f"{'model':<20} {'ANN':>7} " + " ".join(f"{'T=' + str(t):>7}" for t in timesteps)
    print(head)
    print("-" * len(head))
    for label, row in result["rows"].items():
        cells = " ".join(f"{row['snn'][str(t)]:7.2f}" for t in timesteps)
        print(f"{label:<20} {row['ann']:7.2f} {cells}")


def main(argv=None) -> int:
    return workload_benchmark(
        argv,
        description=__doc__.split("\n")[0],
        workloads=MODELS,
        default_workloads=MODELS,
        default_t=DEFAULT_T,
        run=run_workload,
        show=print_table,
        json_name="quantization_aware.json",
    )


if __name__ == "__main__":
    sys.exit(main())
