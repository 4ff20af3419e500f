"""The offset-spike correction (COS, ``--presim ρ``): SNN accuracy at few timesteps with ρ
pre-simulation steps per spiking layer.

    python -m benchmarks.offset_spikes --threads 2            # digits CNN, ResNet, MobileNet: ≈6 min on 2 cores
    python -m benchmarks.offset_spikes --workloads digits_resnet --timesteps 1,2,4

Each digits workload is trained as in benchmarks.quantization_aware (30 epochs from the seed)
with its ReLUs and with QCFS staircases (L = 4, λ from 2.0), exported to ONNX, compiled with
default options (no calibration) and scored on the test digits at every T from one run, once
per ρ (0: no correction). A row's cost per spiking layer is ρ + T membrane updates, and its
latency as a layer pipeline L·ρ + T steps (L spiking layers, ``spiking_layers`` in the JSON);
the table's T is the steps whose outputs are averaged, as in the COS paper. Writes
benchmarks/results/offset_spikes.json.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import snncompiler as snnc
from benchmarks import quantization_aware
from benchmarks.quantization_aware import CALIB_SAMPLES, MODELS, print_table, trained_variant
from benchmarks.quantized import workload_benchmark
from examples.workloads import digits, evaluate

#: (label, QCFS levels, λ's initial value): levels None is the ReLU network
VARIANTS = (("ReLU", None, None), ("QCFS L=4", 4, 2.0))
PRESIMS = (0, 2, 4, 8)
DEFAULT_T = (1, 2, 4, 8, 16, 32, 64)


def run_workload(name: str, timesteps: list[int], seed: int) -> dict:
    """Train both variants of one workload, compile each and score its SNN at every T per ρ."""
    train, test = digits(seed=seed)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, levels, init in VARIANTS:
            net, path = trained_variant(name, levels, init, train, seed, tmp)
            model = snnc.compile(str(path), train.x[:CALIB_SAMPLES], seed=seed)
            for presim in PRESIMS:
                t0 = time.perf_counter()
                res = model.evaluate(test.x, test.y, timesteps, presim=presim)
                rows[f"{label}, ρ={presim}"] = {
                    "model": label,
                    "presim": presim,
                    "ann": 100.0 * evaluate(net, test),
                    "snn": {str(t): 100.0 * res["snn_accuracy"][str(t)] for t in timesteps},
                    "run_s": round(time.perf_counter() - t0, 2),
                }
    return {
        "test_samples": int(len(test.x)),
        "epochs": quantization_aware.EPOCHS,
        "spiking_layers": len(model.graph.find("neuron")),
        "rows": rows,
    }


def main(argv=None) -> int:
    return workload_benchmark(
        argv,
        description=__doc__.split("\n")[0],
        workloads=MODELS,
        default_workloads=MODELS,
        default_t=DEFAULT_T,
        run=run_workload,
        show=print_table,
        json_name="offset_spikes.json",
    )


if __name__ == "__main__":
    sys.exit(main())
