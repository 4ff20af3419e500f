"""`snnc train` on digits: temporal inheritance (train at T=1, continue at T=4) against training
at T=4 throughout, in time to accuracy.

    python -m benchmarks.train                    # 3 schedules, seed 0 (several minutes on 2 cores)
    python -m benchmarks.train --seeds 0 1 2      # mean ± spread over seeds
    python -m benchmarks.train --quick            # smoke run (4 epochs, width 8)

The architecture is the benchmarks' DigitsCNN (3 conv, 2 MaxPool, linear; BN folded away by the
ONNX export), exported untrained and trained by :func:`snncompiler.train.train_onnx` from random
init with its defaults (TET loss, IF neurons, BN during training, Adam + cosine per stage). Every
schedule gets the same number of epochs; what differs is how many of them run at T=1, where an
epoch costs about a quarter as much. Per epoch the held-out (test) split is scored at the stage's
T; "seconds to X" is the training time (scoring excluded) until the score at the final T first
reaches X, and the same in T·epochs (Σ T over the epochs run: the work done, since an epoch's
cost grows about linearly with T), which the machine's load does not change. The final accuracy is the saved artifact's on the spiking runtime, at T = 1, 2, 4, 8.

Timings are wall-clock on whatever else the machine is doing: the load average is recorded, and
schedules are interleaved per seed so that a busy spell does not fall on one schedule only.
Writes benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

from examples.workloads import DigitsCNN, digits, export_onnx
from snncompiler.train.direct import parse_schedule, train_onnx

from .kernels import write_result

RESULTS = Path(__file__).resolve().parent / "results"
SCHEDULES = [("4", "15"), ("1,4", "15"), ("1,4", "12,3")]
TARGETS = (0.95, 0.97)
T_EVAL = [1, 2, 4, 8]


def run(onnx_path, train, test, timesteps: str, epochs: str, seed: int) -> dict:
    """One training run: per-epoch curve, seconds to each target, final artifact accuracy."""
    model = train_onnx(
        str(onnx_path), train, timesteps=timesteps, epochs=epochs, init="random", seed=seed, val=test, progress=False
    )
    final_t = model.options["timesteps"]
    curve, elapsed, cost = [], 0.0, 0
    for stage in model.train_history:
        for row in stage["epochs"]:
            elapsed += row["seconds"]
            cost += stage["timesteps"]
            curve.append(
                {
                    "timesteps": stage["timesteps"],
                    "seconds": round(elapsed, 2),
                    "t_epochs": cost,
                    "val_accuracy": row["val_accuracy"],
                    "loss": row["loss"],
                }
            )
    reached, reached_cost = {}, {}
    for target in TARGETS:
        hit = next((r for r in curve if r["timesteps"] == final_t and r["val_accuracy"] >= target), None)
        reached[f"{target:.2f}"] = hit and hit["seconds"]
        reached_cost[f"{target:.2f}"] = hit and hit["t_epochs"]
    scored = model.evaluate(test.x, test.y, T_EVAL)["snn_accuracy"]
    return {
        "timesteps": timesteps,
        "epochs": epochs,
        "seed": seed,
        "train_seconds": round(elapsed, 2),
        "t_epochs": cost,
        "seconds_to": reached,
        "t_epochs_to": reached_cost,
        "accuracy": scored,
        "curve": curve,
    }


def main(argv=None) -> int:
    """Run the schedules, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 epochs, width 8 (smoke run)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "train.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    schedules = [("4", "4"), ("1,4", "4")] if args.quick else SCHEDULES
    for ts, ep in schedules:
        parse_schedule(ts, ep)
    train, test = digits()
    load_before = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        path = export_onnx(DigitsCNN(width=8 if args.quick else 16), (1, 8, 8), Path(tmp) / "digits_cnn.onnx")
        for seed in args.seeds:
            for ts, ep in schedules:
                print(f"[train] T={ts} epochs={ep} seed={seed} ...", file=sys.stderr, flush=True)
                runs.append(run(path, train, test, ts, ep, seed))
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "threads": args.threads,
        "torch": torch.__version__,
        "quick": args.quick,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "train_samples": len(train),
        "test_samples": len(test),
        "runs": runs,
    }
    print(
        f"\n## digits, DigitsCNN from random init ({len(args.seeds)} seed(s); {len(test)} test samples; "
        f"load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    )
    print(
        "| schedule (T × epochs) | train s | T·epochs | to 95 %: s (T·ep) | to 97 %: s (T·ep) | "
        + " | ".join(f"T={t}" for t in T_EVAL)
        + " |"
    )
    print("|---|---|---|---|---|" + "---|" * len(T_EVAL))
    for ts, ep in schedules:
        rows = [r for r in runs if r["timesteps"] == ts and r["epochs"] == ep]
        stages = " → ".join(f"{t}×{e}" for t, e in parse_schedule(ts, ep))

        def fmt(values, digits=1, scale=1.0):
            values = [v for v in values if v is not None]
            if not values:
                return "—"
            mean = statistics.mean(values) * scale
            spread = f" ± {statistics.pstdev(values) * scale:.{digits}f}" if len(values) > 1 else ""
            return f"{mean:.{digits}f}{spread}"

        missed = {k: sum(r["seconds_to"][k] is None for r in rows) for k in ("0.95", "0.97")}
        to = {
            k: fmt([r["seconds_to"][k] for r in rows])
            + f" ({fmt([r['t_epochs_to'][k] for r in rows])})"
            + (f", {missed[k]} missed" if missed[k] else "")
            for k in missed
        }
        print(
            f"| {stages} | {fmt([r['train_seconds'] for r in rows])} | {rows[0]['t_epochs']} | {to['0.95']} | "
            f"{to['0.97']} | " + " | ".join(fmt([r["accuracy"][str(t)] for r in rows], 2, 100) for t in T_EVAL) + " |"
        )
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
