"""Run time of populations (``--population B``): the fused population kernel against the
composition it replaced, and whole models at B = 1, 2, 4.

    python -m benchmarks.population_speed            # op on three layer shapes, digits CNN and ResNet-18 at T=32
    python -m benchmarks.population_speed --quick    # smoke run: one small layer shape, the digits CNN
    python -m benchmarks.population_speed --device cuda --out benchmarks/results/population_speed_gpu.json

Op section: for each layer shape [T, batch, C, H, W] and B, the median time of
``population_multistep`` on the default backend (one fused kernel, C++ on the CPU and Triton on a
GPU: a unit's B membranes together, its output k·(θ·float32(1/B)) written directly), of the
composition used before it (the B neurons
through ``neuron_multistep`` on a [T, B, ...] copy of x, value spikes, then their mean over B),
and of one plain neuron layer (B = 1), timed side by side in rotating order. Model section: the
spiking runtime's time per batch (64 samples, T = 32, dense execution) of the digits CNN and the
random-init ResNet-18 compiled at B = 1, 2, 4 (``examples/workloads.py``). Writes
benchmarks/results/population_speed.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

import snncompiler as snnc
from examples.workloads import BENCH_WORKLOADS
from snncompiler.ir.neuron import NeuronSpec
from snncompiler.kernels import neuron_multistep, population_mean, population_multistep
from snncompiler.kernels.cpu import cpu_model, isa
from snncompiler.runtime.memory import retain_freed_memory

from .kernels import write_result

RESULTS = Path(__file__).resolve().parent / "results"
#: [T, batch, C, H, W]: the larger neuron layers of the benchmarks' ResNet-18 and the digits CNN at T=32
SHAPES = ((32, 64, 64, 16, 16), (32, 64, 128, 8, 8), (32, 64, 16, 8, 8))
QUICK_SHAPES = ((8, 16, 16, 8, 8),)
#: the training section's layers: T = 4 (fine-tuning's and snnc train's default), batch 64
TRAIN_SHAPES = ((4, 64, 64, 16, 16), (4, 64, 128, 8, 8), (4, 64, 16, 8, 8))


def _sync(device: str) -> None:
    if device != "cpu":
        torch.cuda.synchronize()


def _median_ms(fns: dict, repeats: int, device: str = "cpu") -> dict:
    """Median milliseconds of each callable over ``repeats`` rounds in rotating order, after a
    warm-up round (on a GPU, each call timed to its completion)."""
    names, times = list(fns), {k: [] for k in fns}
    for r in range(repeats + 1):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _sync(device)
            t0 = time.perf_counter()
            fns[name]()
            _sync(device)
            if r:
                times[name].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def _composed(x, v0, theta, b):
    """The population as it ran before the fused kernel: B neurons on a [T, B, ...] copy of x."""
    xb = x.unsqueeze(1).expand((x.shape[0], b) + tuple(x.shape[1:]))
    spikes, v = neuron_multistep(xb, v0, theta)
    return spikes.sum(1) / b, v


def _op_row(shape, population: int, ms: dict, plain_ms: float) -> dict:
    """One row of the op or training table (fused and composed medians against the plain layer's), printed."""
    row = {
        "shape": list(shape),
        "population": population,
        "fused_ms": ms["fused"],
        "composed_ms": ms["composed"],
        "plain_ms": plain_ms,
        "fused_speedup": ms["composed"] / ms["fused"],
        "fused_over_plain": ms["fused"] / plain_ms,
    }
    print(
        f"| {'×'.join(map(str, shape))} | {population} | {plain_ms:.2f} | {ms['composed']:.2f} | "
        f"{ms['fused']:.2f} | {row['fused_speedup']:.1f}× | {row['fused_over_plain']:.2f}× |",
        flush=True,
    )
    return row


def op_rows(shapes, populations, repeats: int, device: str = "cpu") -> list[dict]:
    """The op section: one row per shape and B."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for shape in shapes:
        x = (torch.rand(shape, generator=gen) * 0.5).to(device)
        theta = (torch.rand((1, shape[2], 1, 1), generator=gen) + 0.5).to(device)
        half = theta * 0.5
        plain = _median_ms({"plain": lambda: neuron_multistep(x, half, theta)}, repeats, device)["plain"]
        for b in populations:
            v0 = NeuronSpec(population=b).start_potential(theta, len(shape) - 1)
            fns = {
                "fused": lambda v0=v0, b=b: population_multistep(x, v0, theta, b),
                "composed": lambda v0=v0, b=b: _composed(x, v0, theta, b),
            }
            rows.append(_op_row(shape, b, _median_ms(fns, repeats, device), plain))
    return rows


def _composed_training(x, v0, theta, b):
    """The population with gradients as it ran before the fused backward: B neurons on a
    [T, B, ...] view of x through the op's autograd, their value spikes averaged."""
    xb = x.unsqueeze(1).expand((x.shape[0], b) + tuple(x.shape[1:]))
    spikes, _ = neuron_multistep(xb, v0, theta)
    return population_mean(spikes, theta, b)


def train_rows(shapes, populations, repeats: int, device: str = "cpu") -> list[dict]:
    """The training section: forward + backward of one population layer (x and a per-channel θ
    learned), fused against the composition, and a plain layer's, per shape and B."""
    rows = []
    gen = torch.Generator().manual_seed(1)
    for shape in shapes:
        x = (torch.rand(shape, generator=gen) * 0.5).to(device).requires_grad_(True)
        theta = (torch.rand((1, shape[2], 1, 1), generator=gen) + 0.5).to(device).requires_grad_(True)
        grad = torch.randn(shape, generator=gen).to(device)

        def step(run):
            x.grad = theta.grad = None
            run().backward(grad)

        plain = _median_ms({"plain": lambda: step(lambda: neuron_multistep(x, theta * 0.5, theta)[0])}, repeats, device)
        for b in populations:
            v0 = NeuronSpec(population=b).start_potential(theta.detach(), len(shape) - 1)
            fns = {
                "fused": lambda v0=v0, b=b: step(lambda: population_multistep(x, v0, theta, b)[0]),
                "composed": lambda v0=v0, b=b: step(lambda: _composed_training(x, v0, theta, b)),
            }
            rows.append(_op_row(shape, b, _median_ms(fns, repeats, device), plain["plain"]))
    return rows


def model_rows(workloads, populations, repeats: int, timesteps: int, batch: int, device: str = "cpu") -> list[dict]:
    """The model section: one row per workload and B (the runtime's seconds per batch)."""
    rows = []
    for name in workloads:
        # the digits CNN briefly trained: run time does not depend on its accuracy
        workload = BENCH_WORKLOADS[name](0, **({"epochs": 2} if name == "digits_cnn" else {}))
        x = torch.from_numpy(workload.test.x[:batch])
        runners = {}
        for b in populations:
            model = snnc.compile(
                workload.model,
                workload.calib.x,
                timesteps=timesteps,
                population=b,
                quiet=True,
                example_input=workload.calib.x[:1],
            )
            runners[b] = model.runner(device=device)
        ms = _median_ms({b: (lambda r=r: r.run(x, timesteps)) for b, r in runners.items()}, repeats, device)
        for b in populations:
            rows.append(
                {"workload": name, "population": b, "ms_per_batch": ms[b], "over_b1": ms[b] / ms[populations[0]]}
            )
            print(f"| {name} | {b} | {ms[b]:.1f} | {ms[b] / ms[populations[0]]:.2f}× |", flush=True)
    return rows


def main(argv=None) -> dict:
    """Run both sections, print their tables and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--populations", default="1,2,4", help="B values of the model section (default 1,2,4)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one small layer shape, the digits CNN, 3 repeats")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda: where the op and the models run")
    ap.add_argument("--out", default=str(RESULTS / "population_speed.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    retain_freed_memory()  # as the spiking runtime runs: freed tensors are not page-faulted afresh
    repeats = 3 if args.quick else args.repeats
    populations = tuple(int(b) for b in args.populations.split(","))
    t0 = time.perf_counter()
    print(f"population op, ms (median of {repeats}; plain = one neuron per unit)")
    print("| shape [T, batch, C, H, W] | B | plain | composed | fused | fused vs composed | fused / plain |")
    print("|---|---|---|---|---|---|---|")
    ops = op_rows(QUICK_SHAPES if args.quick else SHAPES, (2, 4) if args.quick else (2, 4, 8), repeats, args.device)
    print(f"\npopulation op with gradients (forward + backward), ms (median of {repeats})")
    print("| shape [T, batch, C, H, W] | B | plain | composed | fused | fused vs composed | fused / plain |")
    print("|---|---|---|---|---|---|---|")
    train_shapes = QUICK_SHAPES if args.quick else TRAIN_SHAPES
    trains = train_rows(train_shapes, (2, 4) if args.quick else (2, 4, 8), repeats, args.device)
    timesteps, batch = (8, 16) if args.quick else (32, 64)
    print(f"\nspiking runtime, ms per batch of {batch} at T={timesteps} (dense execution)")
    print(f"| workload | B | ms | vs B = {populations[0]} |")
    print("|---|---|---|---|")
    workloads = ("digits_cnn",) if args.quick else ("digits_cnn", "resnet18_agreement")
    models = model_rows(workloads, populations, repeats, timesteps, batch, args.device)
    result = {
        "device": torch.cuda.get_device_name() if args.device != "cpu" else "cpu",
        "cpu": cpu_model(),
        "isa": isa(),
        "threads": args.threads,
        "torch": torch.__version__,
        "repeats": repeats,
        "op": ops,
        "train": trains,
        "models": models,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_result(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
