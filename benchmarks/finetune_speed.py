"""Fine-tuning step time: `snnc finetune`'s training step against SpikingJelly's on the same converted network.

    python -m benchmarks.finetune_speed                    # digits CNN and ResNet-18, T = 4, CPU
    python -m benchmarks.finetune_speed --quick            # smoke run: the digits CNN, 3 rounds
    python -m benchmarks.finetune_speed --device cuda --out benchmarks/results/finetune_speed_gpu.json

Both tools convert the same ANN on the same calibration batch (``examples.workloads`` as
``benchmarks/end_to_end.py`` builds them: the digits CNN trained briefly, a random-init
torchvision ResNet-18 on 3×32×32), and then one training step is timed on the same batch of 64:

- snnc: the compiled model as ``snnc finetune`` trains it (``GraphNet`` over the time-flattened
  batch, the fused neuron op with its surrogate backward, θ learned), T steps, TET loss, Adam;
- SpikingJelly: its converted model (``ann2snn.Converter``, rate coding, max mode; IF neurons with
  their default surrogate) run T single steps as SpikingJelly's converted models run, the outputs
  stacked, the same TET loss, backward through time, Adam.

The two networks differ only in how their neurons and time loop run (snnc's θ per layer vs
SpikingJelly's voltage scalers around unit-threshold neurons are equivalent conversions). Rounds
interleave the two; medians and their ratio are printed and written as JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

import snncompiler as snnc
from snncompiler.train import run_steps, tet_loss
from snncompiler.train.finetune import GraphNet

from .kernels import measure, write_result

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 64


def _workload(name: str, tmp: Path):
    """(ANN, ONNX path, calibration batch, input shape) as benchmarks/end_to_end.py builds them."""
    from benchmarks.end_to_end import WORKLOADS

    ann, path, calib, _ = WORKLOADS[name](tmp)
    return ann.eval(), path, calib


def _snnc_step(model, x, y, timesteps: int):
    net = GraphNet(model.graph).to(x.device).train()
    opt = torch.optim.Adam(net.parameters(), 1e-4)

    def step():
        loss = tet_loss(run_steps(net, x, timesteps), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _spikingjelly_step(snn, x, y, timesteps: int):
    from spikingjelly.activation_based import functional

    snn = snn.to(x.device).train()
    opt = torch.optim.Adam(snn.parameters(), 1e-4)

    def step():
        functional.reset_net(snn)
        loss = tet_loss(torch.stack([snn(x) for _ in range(timesteps)]), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def speed_rows(name: str, timesteps: int, rounds: int, device: str) -> dict:
    """Median seconds per training step of both tools on workload ``name``."""
    from benchmarks.end_to_end import spikingjelly_model

    with tempfile.TemporaryDirectory() as tmp:
        ann, path, calib = _workload(name, Path(tmp))
        model = snnc.compile(str(path), calib, quiet=True)
    gen = torch.Generator().manual_seed(0)
    x = torch.from_numpy(calib[:BATCH]).to(device)
    y = torch.randint(0, 10, (BATCH,), generator=gen).to(device)
    impls = {"snnc finetune": _snnc_step(model, x, y, timesteps)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            impls["SpikingJelly (converted)"] = _spikingjelly_step(spikingjelly_model(ann, calib), x, y, timesteps)
    except ImportError:
        print("spikingjelly is not installed: its row is skipped", file=sys.stderr)
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    times = measure(impls, rounds, 2.0, sync, grad=True)
    med = {label: statistics.median(v) for label, v in times.items()}
    rows = {label: {"median_s": m, "samples": len(times[label])} for label, m in med.items()}
    sj = med.get("SpikingJelly (converted)")
    return {"timesteps": timesteps, "batch": BATCH, "rows": rows, "speedup": sj / med["snnc finetune"] if sj else None}


def main(argv=None) -> dict:
    """Time both tools' fine-tuning step on each workload, print the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the digits CNN only, 3 rounds (smoke run)")
    ap.add_argument("--timesteps", type=int, default=4, help="T of the training step (default 4, as snnc finetune)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--out", default=str(RESULTS / "finetune_speed.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    workloads = ("digits_cnn",) if args.quick else ("digits_cnn", "resnet18")
    rounds = 3 if args.quick else args.rounds
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "device": torch.cuda.get_device_name() if args.device != "cpu" else "cpu",
        "threads": args.threads,
        "torch": torch.__version__,
        "workloads": {},
    }
    print(f"fine-tuning step, batch {BATCH}, T={args.timesteps}, {result['device']}, medians of ≥ {rounds}")
    print("| workload | snnc finetune s | SpikingJelly s | SpikingJelly / snnc |")
    print("|---|---|---|---|")
    for name in workloads:
        res = speed_rows(name, args.timesteps, rounds, args.device)
        result["workloads"][name] = res
        sj = res["rows"].get("SpikingJelly (converted)", {}).get("median_s")
        sj_cells = "— | —" if sj is None else f"{sj:.4f} | {res['speedup']:.2f}×"
        print(f"| {name} | {res['rows']['snnc finetune']['median_s']:.4f} | {sj_cells} |", flush=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    write_result(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
