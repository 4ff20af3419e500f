"""Benchmark the spiking runtime's CPU max pooling against torch's max_pool in both layouts.

    python benchmarks/maxpool.py [--rounds K] [--threads N] [--out PATH]

Inputs are spike tensors (0 or θ) shaped like the pools of the benchmark workloads at a chunk
of 8 steps × batch 64 (512 samples): the digits CNN and VGG 2×2 pools, and ResNet-18's 3×3
stride-2 pool. Implementations, all exact (the same maxima):
  nchw      F.max_pool2d on the NCHW tensor
  nhwc      F.max_pool2d on a channels-last copy, converted back (the runtime's overlapping path)
  snnc      snncompiler.runtime.ops.maxpool, as the runtime calls it (strided elementwise maxima
            for non-overlapping windows, channels-last otherwise)
Median time per call over interleaved rounds; ratios are medians of per-round ratios.
Results go to benchmarks/results/maxpool.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from snncompiler.fileio import write_text
from snncompiler.ir import Node
from snncompiler.runtime.ops import IMPLEMENTATIONS

CASES = [  # (name, shape, kernel, stride, pad)
    ("digits pool 1", (512, 32, 8, 8), 2, 2, 0),
    ("digits pool 2", (512, 32, 4, 4), 2, 2, 0),
    ("vgg 2x2 (32 px)", (512, 16, 32, 32), 2, 2, 0),
    ("vgg 2x2 (16 px)", (512, 64, 16, 16), 2, 2, 0),
    ("resnet18 3x3/2 (32 px input)", (512, 64, 16, 16), 3, 2, 1),
]
OUT = Path(__file__).resolve().parent / "results" / "maxpool.json"


def implementations(shape, k, s, p):
    """(name -> zero-arg callable) for one case, and the input tensor."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(shape, generator=g) < 0.2).float() * 2.5
    node = Node(
        op="maxpool", name="pool", inputs=["x"], outputs=["y"], attrs=dict(kernel=[k, k], stride=[s, s], pads=[p] * 4)
    )
    pool = IMPLEMENTATIONS["maxpool"]
    return {
        "nchw": lambda: F.max_pool2d(x, k, s, p),
        "nhwc": lambda: F.max_pool2d(x.contiguous(memory_format=torch.channels_last), k, s, p).contiguous(),
        "snnc": lambda: pool(node, x)[0],
    }


def main(argv=None) -> int:
    """Time every case and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'case':30} {'shape':>20}  {'nchw ms':>8} {'nhwc ms':>8} {'snnc ms':>8}  snnc vs nchw / nhwc")
    for name, shape, k, s, p in CASES:
        impls = implementations(shape, k, s, p)
        reference = impls["nchw"]()
        for impl, fn in impls.items():
            if not torch.equal(fn(), reference):
                raise SystemExit(f"{name}: {impl} differs from F.max_pool2d")
        times = {n: [] for n in impls}
        for r in range(args.rounds):
            order = list(impls)[r % len(impls) :] + list(impls)[: r % len(impls)]
            for n in order:
                t0 = time.perf_counter()
                impls[n]()
                times[n].append(time.perf_counter() - t0)
        med = {n: statistics.median(v) for n, v in times.items()}
        ratio = {b: statistics.median(bt / st for bt, st in zip(times[b], times["snnc"])) for b in ("nchw", "nhwc")}
        rows.append(
            dict(
                case=name,
                shape=list(shape),
                kernel=k,
                stride=s,
                pad=p,
                median_s=med,
                snnc_speedup=ratio,
                times_s={n: [round(t, 6) for t in v] for n, v in times.items()},
            )
        )
        print(
            f"{name:30} {str(shape):>20}  {med['nchw'] * 1e3:8.2f} {med['nhwc'] * 1e3:8.2f} {med['snnc'] * 1e3:8.2f}"
            f"  {ratio['nchw']:.2f}x / {ratio['nhwc']:.2f}x"
        )
    result = dict(
        benchmark="spiking runtime max pooling (CPU)",
        threads=args.threads,
        torch=torch.__version__,
        rows=rows,
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
