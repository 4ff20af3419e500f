"""Direct training (TET) against conversion at few timesteps, and the speed of a training step.

    python -m benchmarks.tet_training            # full run
    python -m benchmarks.tet_training --quick    # smoke run (fewer epochs and samples)

Accuracy. Each workload has one architecture, built twice: with ReLU (an ANN, trained with Adam,
exported to ONNX and compiled by ``snnc.compile`` with default settings) and with
``snncompiler.train.LIF`` (trained directly at T_train with the TET loss, and with plain
time-averaged cross-entropy "SDT", then exported with ``snnc.train.export``). Every SNN row is
scored through its saved artifact on the spiking runtime, at every T from one T_max run.
Pooling is AvgPool everywhere (TET's choice; a spike max is not a max of rates). The
moving_dot workload takes sequences [N, T, ...] whose class lies in the order of the frames:
its ANN (and conversion) see the time-mean of the frames, which is at chance by construction.

Speed. One training step (forward at T, TET loss, backward, Adam) of the same LIF network with
the neuron on the C++ kernel, on the PyTorch reference loop, and as SpikingJelly's LIFNode
(multi-step, same decay / threshold / hard reset / triangle surrogate):
interleaved rounds, medians.

Writes benchmarks/results/tet_training.json. TET against SDT over 3 seeds, at T_train 1-6, on
MNIST, digits and shapes: ``benchmarks/tet_seeds.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch
from torch import nn

import snncompiler as snnc
from examples.workloads import digits, export_onnx, moving_dot, textured_shapes, train_classifier
from snncompiler.data import Dataset
from snncompiler.train import LIF, run_steps

from .kernels import measure, write_result

RESULTS = Path(__file__).resolve().parent / "results"
T_EVAL = [1, 2, 4, 8, 16, 32]


def digits_net(act) -> nn.Module:
    """DigitsCNN's layout with AvgPool: 3 conv-BN-act, 2 AvgPool, linear (8×8 inputs)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        act(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        act(),
        nn.AvgPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        act(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4, 10),
    )


def shapes_net(act, widths=(16, 32, 64)) -> nn.Module:
    """A VGG-style net for 3×32×32: per stage two conv-BN-act and an AvgPool, then linear."""
    layers, cin = [], 3
    for w in widths:
        for _ in range(2):
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), act()]
            cin = w
        layers.append(nn.AvgPool2d(2))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(cin * 16, 10))


def dot_net(act) -> nn.Module:
    """Two Conv1d-act layers and a linear read-out for :func:`moving_dot` frames (1×16)."""
    return nn.Sequential(
        nn.Conv1d(1, 8, 3, padding=1), act(), nn.Conv1d(8, 16, 3, padding=1), act(), nn.Flatten(), nn.Linear(16 * 16, 2)
    )


def workloads(quick: bool) -> dict:
    """name → spec: builder, data (a callable giving (train, test): generated only when the accuracy
    rows need it, not for --speed-only), input (frame) shape, ANN epochs, SNN epochs, T_train, lr of
    direct training, sequence (inputs [N, T, ...]: the ANN and conversion see the time-mean)."""

    def digits_data():
        train, test = digits()
        return train, (Dataset(test.x[:256], test.y[:256]) if quick else test)

    return {
        "digits": dict(
            build=digits_net,
            data=digits_data,
            shape=(1, 8, 8),
            ann_epochs=8 if quick else 30,
            snn_epochs=8 if quick else 30,
            t_train=4,
            lr=1e-3,
            sequence=False,
        ),
        "shapes": dict(
            build=shapes_net,
            data=lambda: (
                textured_shapes(3000 if quick else 12000, seed=1000),
                textured_shapes(128 if quick else 500, seed=2000),
            ),
            shape=(3, 32, 32),
            ann_epochs=2 if quick else 6,
            snn_epochs=2 if quick else 6,
            t_train=4,
            lr=1e-3,
            sequence=False,
        ),
        # the class is in the order of the frames: the time-mean (all the ANN sees) is at chance by construction
        "moving_dot": dict(
            build=dot_net,
            data=lambda: (moving_dot(2000, seed=0), moving_dot(500, seed=1)),
            shape=(1, 16),
            ann_epochs=8,
            snn_epochs=8,
            t_train=8,
            lr=1e-2,
            sequence=True,
        ),
    }


def accuracy_rows(name, spec: dict, seed: int, tmp: Path) -> dict:
    """ANN, snnc conversion, TET and SDT accuracies at every T of T_EVAL (≤ the length of a
    sequence task) on one workload."""
    build, shape = spec["build"], spec["shape"]
    train, test = spec["data"]()
    sequence, t_train = spec["sequence"], spec["t_train"]
    static_train = Dataset(train.x.mean(1), train.y) if sequence else train  # what an ANN can see
    static_test = Dataset(test.x.mean(1), test.y) if sequence else test
    t_eval = [t for t in T_EVAL if not sequence or t <= test.x.shape[1]]
    rows, seconds = {}, {}
    torch.manual_seed(seed)
    ann = build(nn.ReLU)
    started = time.perf_counter()
    train_classifier(ann, static_train, epochs=spec["ann_epochs"], lr=1e-3, seed=seed)
    seconds["ann_train"] = time.perf_counter() - started
    with torch.no_grad():
        rows["ANN"] = float((ann(torch.from_numpy(static_test.x)).argmax(1).numpy() == test.y).mean())
    onnx_path = export_onnx(ann, shape, tmp / f"{name}.onnx")
    started = time.perf_counter()
    compiled = snnc.compile(onnx_path, Dataset(static_train.x[:512]), quiet=True)
    seconds["convert"] = time.perf_counter() - started
    label = "snnc conversion (default" + (", on the time-mean)" if sequence else ")")
    rows[label] = compiled.evaluate(static_test.x, test.y, t_eval)["snn_accuracy"]
    for method in ("tet", "sdt"):
        torch.manual_seed(seed)
        net = build(LIF)
        started = time.perf_counter()
        history = snnc.train.fit(
            net,
            train,
            timesteps=t_train,
            epochs=spec["snn_epochs"],
            loss=method,
            lr=spec["lr"],
            sequence=sequence,
            seed=seed,
            progress=False,
        )
        seconds[f"{method}_train"] = time.perf_counter() - started
        artifact = tmp / f"{name}_{method}.snn.onnx"
        snnc.train.export(net, artifact, shape)
        label = f"{method.upper()} (T={t_train}, {spec['snn_epochs']} ep)"
        rows[label] = snnc.load(artifact).evaluate(test.x, test.y, t_eval)["snn_accuracy"]
        seconds[f"{method}_final_loss"] = history["epochs"][-1]["loss"]
        print(f"  {name}: {label} trained in {seconds[f'{method}_train']:.1f} s", file=sys.stderr, flush=True)
    return {
        "accuracy": rows,
        "seconds": seconds,
        "test_samples": len(test),
        "train_samples": len(train),
        "t_train": t_train,
        "ann_epochs": spec["ann_epochs"],
        "snn_epochs": spec["snn_epochs"],
        "lr": spec["lr"],
        "sequence": sequence,
    }


class _SpikingJellyLIF(LIF):
    """SpikingJelly's multi-step LIFNode in the place of snnc's kernel (run_steps sets T as for any LIF)."""

    def __init__(self):
        super().__init__()
        from spikingjelly.activation_based import neuron, surrogate

        self.node = neuron.LIFNode(
            tau=2.0,
            decay_input=False,
            v_threshold=1.0,
            v_reset=0.0,
            step_mode="m",
            surrogate_function=surrogate.PiecewiseQuadratic(alpha=1.0),
        )

    def forward(self, x):
        self.node.reset()
        return self.node(x.reshape((self.timesteps, -1) + tuple(x.shape[1:]))).reshape(x.shape)


def speed_rows(build, shape, batch: int, timesteps: int, rounds: int, device: str = "cpu") -> dict:
    """Median seconds per training step with each neuron implementation (same weights, same batch).

    The first row is the baseline of the ratios: the C++ kernel on the CPU; on a GPU the default
    dispatch (CUDA forward, Triton backward)."""
    torch.manual_seed(0)
    x = torch.rand((batch,) + tuple(shape), device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    nets = {}
    for backend in ("cpu", "reference") if device == "cpu" else ("auto", "triton", "reference"):
        torch.manual_seed(0)
        nets[f"snnc LIF ({backend})"] = build(lambda b=backend: LIF(backend=b))
    try:
        import spikingjelly  # noqa: F401

        torch.manual_seed(0)
        nets["SpikingJelly LIFNode"] = build(_SpikingJellyLIF)
    except ImportError:
        print("spikingjelly is not installed: its row is skipped", file=sys.stderr)

    def step(net, opt):
        def run():
            out = run_steps(net, x, timesteps)
            loss = snnc.train.tet_loss(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return run

    impls = {
        label: step(net.to(device).train(), torch.optim.Adam(net.parameters(), 1e-4)) for label, net in nets.items()
    }
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    times = measure(impls, rounds, 2.0, sync, grad=True)
    med = {label: statistics.median(v) for label, v in times.items()}
    base = next(iter(med.values()))
    key = "vs_snnc_cpu" if device == "cpu" else "vs_snnc_auto"
    return {label: {"median_s": m, key: m / base, "samples": len(times[label])} for label, m in med.items()}


def main(argv=None) -> int:
    """Run the benchmark, print the tables and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs, samples and rounds (smoke run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--speed-only", action="store_true", help="only the training-step timing")
    parser.add_argument("--device", default="cpu", help="where the training-step timing runs (cpu, cuda)")
    parser.add_argument("--out", type=Path, default=RESULTS / "tet_training.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    specs = workloads(args.quick)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "threads": args.threads,
        "torch": torch.__version__,
        "quick": args.quick,
        "t_eval": T_EVAL,
        "device": torch.cuda.get_device_name() if args.device != "cpu" else "cpu",
        "workloads": {},
        "speed": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in ({} if args.speed_only else specs).items():
            print(f"[{name}] training the ANN, converting, training TET and SDT ...", file=sys.stderr, flush=True)
            result["workloads"][name] = accuracy_rows(name, spec, args.seed, Path(tmp))
    rounds = 5 if args.quick else args.rounds
    for name, spec in specs.items():
        if spec["sequence"]:
            continue  # the speed rows time static-input training; the sequence path costs the same per step
        result["speed"][name] = {
            "batch": 64,
            "timesteps": spec["t_train"],
            "rows": speed_rows(spec["build"], spec["shape"], 64, spec["t_train"], rounds, args.device),
        }
    for name, res in result["workloads"].items():
        print(
            f"\n## {name}: top-1 accuracy vs T ({res['test_samples']} test samples; ANN {res['accuracy']['ANN']:.4f})"
        )
        print("| method | " + " | ".join(f"T={t}" for t in T_EVAL) + " |")
        print("|---|" + "---|" * len(T_EVAL))
        for label, accs in res["accuracy"].items():
            if label != "ANN":
                print(
                    f"| {label} | "
                    + " | ".join(f"{accs[str(t)]:.4f}" if str(t) in accs else "—" for t in T_EVAL)
                    + " |"
                )
    for name, res in result["speed"].items():
        print(f"\n## {name}: training step (batch {res['batch']}, T={res['timesteps']}, {args.threads} threads)")
        print("| neuron | median s/step | × first row |")
        print("|---|---|---|")
        for label, row in res["rows"].items():
            ratio = row.get("vs_snnc_cpu", row.get("vs_snnc_auto"))
            print(f"| {label} | {row['median_s']:.4f} | {ratio:.2f} |")
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
