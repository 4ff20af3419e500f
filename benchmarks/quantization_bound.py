"""How much agreement the levels a rate code can express leave on the ResNet-18 agreement workload.

    python -m benchmarks.quantization_bound                  # 512 test images, T = 16 … 256
    python -m benchmarks.quantization_bound --samples 64 --timesteps 32   # quick

An IF neuron with soft reset run for T steps emits between 0 and T spikes, so the time mean of
its output takes one of T + 1 values k·θ/T. This script asks what that alone costs: the ANN
(examples/workloads.py, ``resnet18_agreement_bench``: a random-init torchvision ResNet-18 whose
labels are its own argmax) is run with every ReLU's output rounded to the nearest of those
T + 1 levels, θ per layer or per channel (the max or a percentile of the activation over the
512 calibration images), with no temporal error at all, and scored by argmax agreement with the
plain ANN. It is a reference, not a proof of a bound: calibration may choose other levels than
the nearest (as weight calibration does) and do somewhat better, but a spiking network at T
that only reproduced each layer's rates as well as rounding does could not exceed it.
Writes benchmarks/results/quantization_bound.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from examples.workloads import resnet18_agreement_bench
from snncompiler.fileio import write_text
from snncompiler.kernels.cpu import cpu_model

RESULTS = Path(__file__).resolve().parent / "results"
THRESHOLDS = ("max", "p99.99", "p99.9")


class RoundedReLU(nn.Module):
    """ReLU whose output is rounded to the nearest of T + 1 levels k·θ/T (clipped at θ), with θ
    set per call site of the module (torchvision's BasicBlock calls one ReLU twice) from the
    activations recorded in ``record`` mode."""

    def __init__(self):
        super().__init__()
        self.mode, self.calls, self.steps, self.per_channel = "record", 0, 32, False
        self.seen: dict[int, list[torch.Tensor]] = {}
        self.theta: dict[int, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        site = self.calls
        self.calls += 1
        a = torch.relu(x)
        if self.mode == "record":
            self.seen.setdefault(site, []).append(a.transpose(0, 1).reshape(a.shape[1], -1))
            return a
        if self.mode == "ann":
            return a
        theta = self.theta[site].clamp_min(1e-12)
        if self.per_channel:
            theta = theta.reshape((1, -1) + (1,) * (a.dim() - 2))
        return theta / self.steps * torch.clamp(torch.floor(a * self.steps / theta + 0.5), 0, self.steps)

    def set_thresholds(self, how: str, per_channel: bool, generator: torch.Generator) -> None:
        """θ per call site: the max or a percentile (of a random 10^6-value subsample: quantile's
        input limit) of the recorded activations, over the layer or per channel."""
        self.per_channel = per_channel
        for site, parts in self.seen.items():
            rows = torch.cat(parts, dim=1)  # [C, samples·positions]
            values = rows if per_channel else rows.reshape(1, -1)
            if how == "max":
                theta = values.amax(dim=1)
            else:
                keep = max(1, min(values.shape[1], 1_000_000 // values.shape[0]))
                pick = torch.randperm(values.shape[1], generator=generator)[:keep]
                theta = torch.quantile(values[:, pick], float(how[1:]) / 100, dim=1)
            self.theta[site] = theta if per_channel else theta.reshape(())


def _swap_relus(module: nn.Module) -> list[RoundedReLU]:
    swapped = []
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            rounded = RoundedReLU()
            setattr(module, name, rounded)
            swapped.append(rounded)
        else:
            swapped += _swap_relus(child)
    return swapped


def measure(samples: int, steps: list[int], seed: int = 0) -> dict:
    """Agreement with the ANN at each T for every θ rule, per layer and per channel."""
    work = resnet18_agreement_bench(seed=seed, test_samples=samples)
    model = work.model
    relus = _swap_relus(model)

    def forward(x) -> torch.Tensor:
        for r in relus:
            r.calls = 0
        with torch.no_grad():
            return model(torch.from_numpy(x))

    forward(work.calib.x)  # record
    for r in relus:
        r.mode = "ann"
    labels = forward(work.test.x).argmax(1)
    assert bool((labels.numpy() == work.test.y).all())  # the workload's labels are the ANN's argmax
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for per_channel in (False, True):
        for how in THRESHOLDS:
            for r in relus:
                r.set_thresholds(how, per_channel, generator)
                r.mode = "round"
            agreement = {}
            for t in steps:
                for r in relus:
                    r.steps = t
                agreement[str(t)] = float((forward(work.test.x).argmax(1) == labels).float().mean())
            rows.append({"theta": how, "per_channel": per_channel, "agreement": agreement})
    return {"relu_sites": sum(len(r.seen) for r in relus), "test_samples": samples, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table and (full runs) write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=512, help="test images (the agreement workload's 512)")
    parser.add_argument("--timesteps", default="16,32,64,128,256")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "quantization_bound.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = [int(t) for t in args.timesteps.split(",")]
    t0 = time.perf_counter()
    result = measure(args.samples, steps)
    print(f"ResNet-18 agreement with every ReLU rounded to T + 1 levels ({result['relu_sites']} ReLU sites)")
    print(f"{'θ':<10}{'granularity':<13}" + "".join(f"{'T=' + str(t):>8}" for t in steps))
    for row in result["rows"]:
        print(
            f"{row['theta']:<10}{'channel' if row['per_channel'] else 'layer':<13}"
            + "".join(f"{100 * row['agreement'][str(t)]:7.1f}%" for t in steps)
        )
    result.update({"cpu": cpu_model(), "torch": torch.__version__, "seconds": round(time.perf_counter() - t0, 1)})
    if args.samples == 512:
        write_text(args.out, json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
