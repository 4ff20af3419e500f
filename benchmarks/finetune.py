"""Conversion alone against conversion + fine-tuning (`snnc finetune`) at few timesteps.

    python -m benchmarks.finetune            # digits CNN, digits ResNet, breast-cancer MLP (≈1 min on 2 cores)
    python -m benchmarks.finetune --quick    # smoke run

Each workload's ANN is trained, exported and compiled with the defaults (p99.9, IF, soft reset,
rate max pooling); then, for each T in 1, 2, 4, the compiled model is fine-tuned at that T on the
training split (20 % of it held out to judge the result, which is kept only if better there) and
scored on the test split, which neither step saw. Writes benchmarks/results/finetune.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import snncompiler as snnc
from examples.workloads import BENCH_WORKLOADS, export_onnx
from snncompiler.fileio import write_text
from snncompiler.train.finetune import finetune

WORKLOADS = ("digits_cnn", "digits_resnet", "breast_cancer_mlp")
STEPS = (1, 2, 4)


def run(name: str, quick: bool) -> dict:
    """Compile one workload, fine-tune it at each T and score both on the test split."""
    work = BENCH_WORKLOADS[name](**({"epochs": 5} if quick else {}))
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(work.model, work.input_shape, Path(tmp) / f"{name}.onnx")
        model = snnc.compile(str(path), work.calib.x, quiet=True)
    test = work.test
    base = model.evaluate(test.x, test.y, list(STEPS))
    rows = {}
    for t in STEPS:
        t0 = time.perf_counter()
        tuned = finetune(model, work.train, timesteps=t, epochs=3 if quick else 10, progress=False)
        note = tuned.report["finetune"]
        rows[str(t)] = {
            "converted": base["snn_accuracy"][str(t)],
            "finetuned": tuned.evaluate(test.x, test.y, [t])["snn_accuracy"][str(t)],
            "kept": note["kept"],
            "val_before": note["val_accuracy_before"],
            "val_after": note["val_accuracy_after"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return {
        "workload": name,
        "note": work.note,
        "test_samples": len(test),
        "ann_mode": base["ann_accuracy"],
        "steps": rows,
    }


def main(argv=None) -> None:
    """Run the benchmark, print a table per workload and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/finetune.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    results = []
    for name in WORKLOADS:
        res = run(name, args.quick)
        results.append(res)
        print(f"\n{name} ({res['note']}; {res['test_samples']} test samples; ANN mode {100 * res['ann_mode']:.2f}%)")
        print("   T  converted  fine-tuned  kept  (held-out before → after)")
        for t, r in res["steps"].items():
            print(
                f"{int(t):>4}  {100 * r['converted']:8.2f}%  {100 * r['finetuned']:9.2f}%  {'yes' if r['kept'] else 'no ':>4}"
                f"  ({100 * r['val_before']:.2f}% → {100 * r['val_after']:.2f}%, {r['seconds']} s)"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, json.dumps({"quick": args.quick, "torch_threads": 2, "results": results}, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
