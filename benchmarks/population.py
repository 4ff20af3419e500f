"""Accuracy and energy against the population size B (``snnc compile --population B``).

    python -m benchmarks.population                  # ResNet-18 agreement at T=32, digits CNN T=2, ResNet T=4
    python -m benchmarks.population --quick          # smoke run: digits CNN only, 128 test samples, B = 1, 2

Each ReLU of the ANN becomes B IF neurons that see the same current and start θ/B apart; the
unit's output is their mean spike (:class:`snncompiler.ir.neuron.NeuronSpec`). At T steps the
rate then takes T·B + 1 values instead of T + 1: the resolution of B·T steps at T steps' latency,
paid for with B-fold neuron updates and up to B-fold spikes. This script measures both sides:
for every workload, T and B it compiles the ANN with ``snnc.compile`` (thresholds per channel;
calibration none and advanced, advanced kept only if it beats none on the calibration samples,
as the compiler does), scores it on test data no step saw (argmax agreement with the ANN for
the random-init ResNet-18, accuracy for the digits models) and measures synaptic operations on
the same data (``snnc eval --sops``: float32 MAC 4.6 pJ, AC 0.9 pJ; a population output k·θ/B
counts as k spikes, each reaching every synapse of the unit), as a fraction of the ANN's energy.

Workloads (examples/workloads.py): ``resnet18_agreement`` (torchvision ResNet-18, random init,
512 test images of ``textured_shapes``, labels = the ANN's argmax; 512 calibration images),
``digits_cnn`` and ``digits_resnet`` (trained 30 epochs on the digits train split, 539 test
samples, 512 calibration samples). Writes benchmarks/results/population.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

import snncompiler as snnc
from examples.workloads import BENCH_WORKLOADS
from examples.workloads import evaluate as ann_accuracy
from snncompiler.analysis.metrics import synaptic_operations
from snncompiler.kernels.cpu import cpu_model

from .kernels import write_result

RESULTS = Path(__file__).resolve().parent / "results"
#: (workload, T, test samples): the floors of issue 19 that a richer code is for.
FULL = (("resnet18_agreement", 32, 512), ("digits_cnn", 2, None), ("digits_resnet", 4, None))


def measure(workload, timesteps: int, population: int, calibration: str, seed: int) -> dict:
    """One compiled model's test accuracy (or agreement), spikes and energy at ``timesteps``."""
    t0 = time.perf_counter()
    model = snnc.compile(
        workload.model,
        workload.calib.x,
        timesteps=timesteps,
        channelwise=True,
        population=population,
        calibration=calibration,
        seed=seed,
        quiet=True,
        example_input=workload.calib.x[:1],
    )
    compile_s = time.perf_counter() - t0
    scored = model.evaluate(workload.test.x, workload.test.y, [timesteps])
    sops = synaptic_operations(model, workload.test.x, timesteps)
    return {
        "population": population,
        "calibration": calibration,
        "calibration_kept": model.report.get("calibration_check", {}).get("kept", "calibrated") == "calibrated",
        "accuracy": scored["snn_accuracy"][str(timesteps)],
        "clipped_ann_accuracy": scored["ann_accuracy"],  # the artifact's ANN mode: ReLUs clipped at θ
        "firing_rate": scored["firing_rate"],
        "energy_over_ann": sops["energy_pj"]["snn_over_ann"],
        "compile_s": round(compile_s, 1),
    }


def main(argv=None) -> dict:
    """Run the grid, print a table per workload and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--populations", default="1,2,4", help="B values (default 1,2,4)")
    ap.add_argument("--calibrations", default="none,advanced", help="calibration pipelines (default none,advanced)")
    ap.add_argument(
        "--workloads", default=None, help="comma-separated subset of resnet18_agreement,digits_cnn,digits_resnet"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--quick", action="store_true", help="digits CNN at T=2 on 128 test samples, B = 1, 2, no calibration"
    )
    ap.add_argument("--out", default=str(RESULTS / "population.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    grid = (("digits_cnn", 2, 128),) if args.quick else FULL
    if args.workloads:
        wanted = set(args.workloads.split(","))
        grid = tuple(g for g in grid if g[0] in wanted)
    populations = (1, 2) if args.quick else tuple(int(b) for b in args.populations.split(","))
    calibrations = ("none",) if args.quick else tuple(args.calibrations.split(","))
    t0 = time.perf_counter()
    result = {"workloads": {}, "seed": args.seed, "cpu": cpu_model(), "torch": torch.__version__}
    for name, timesteps, samples in grid:
        kwargs = {"test_samples": samples} if samples else {}
        if args.quick:
            kwargs["epochs"] = 5
        workload = BENCH_WORKLOADS[name](args.seed, **kwargs)
        rows, ann = [], ann_accuracy(workload.model, workload.test)
        print(f"\n{name} at T={timesteps} ({workload.note}; {len(workload.test.x)} test samples)", flush=True)
        print(f"ANN {100 * ann:.2f} %; 'clipped' is the ANN with each ReLU clipped at its θ (the artifact's ANN mode)")
        print("| B | calibration | SNN | clipped ANN | firing rate | energy / ANN (fp32) | compile s |")
        print("|---|---|---|---|---|---|---|")
        for calibration in calibrations:
            for b in populations:
                row = measure(workload, timesteps, b, calibration, args.seed)
                rows.append(row)
                print(
                    f"| {b} | {calibration}{'' if row['calibration_kept'] else ' (not kept)'} | "
                    f"{100 * row['accuracy']:.2f} % | {100 * row['clipped_ann_accuracy']:.2f} % | {row['firing_rate']:.3f} | "
                    f"{row['energy_over_ann']:.2f}× | {row['compile_s']} |",
                    flush=True,
                )
        result["workloads"][name] = {
            "timesteps": timesteps,
            "test_samples": len(workload.test.x),
            "ann_accuracy": ann,
            "rows": rows,
        }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["machine"] = platform.machine()
    write_result(Path(args.out), result)
    print(f"({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
