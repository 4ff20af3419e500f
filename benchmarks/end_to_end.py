"""End-to-end spiking inference speed: snnc vs SpikingJelly's converted model, same batch, same threads.

Workloads: the digits CNN (trained in seconds) and a random-init torchvision ResNet-18 on
3×32×32 inputs. Both are converted by each tool from the same ANN and calibration batch and
run for T steps on the same batch. Reported: median wall time per batch over repeats, the
ratio, and where snnc's time goes (neurons vs conv/linear vs other ops vs overhead, from the
runtime's profile; SpikingJelly's neuron time from forward hooks on its IF nodes).

    python benchmarks/end_to_end.py [--timesteps 32] [--batch 64] [--repeats 5] [--threads 2] [--device cuda]

With --device cuda both models run on the GPU; wall times are synchronised, but the time
shares are host-side (the runtime does not synchronise per layer), so read them as where the
host spends its time.

Prints a table and writes benchmarks/results/end_to_end.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import snncompiler as snnc
from snncompiler.data import Dataset
from snncompiler.fileio import write_text
from snncompiler.runtime.memory import retain_freed_memory
from snncompiler.workloads import DigitsCNN, digits, export_onnx, train_classifier


def digits_cnn(tmp: Path):
    """Trained digits CNN, its ONNX file, calibration and benchmark inputs."""
    train, test = digits()
    torch.manual_seed(0)
    model = train_classifier(DigitsCNN(), train, epochs=10)
    return model, export_onnx(model, (1, 8, 8), tmp / "digits_cnn.onnx"), train.x[:256], test.x


def resnet18(tmp: Path):
    """Random-init torchvision ResNet-18 (10 classes) on 3×32×32 inputs."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 3, 32, 32)).astype(np.float32)
    return model, export_onnx(model, (3, 32, 32), tmp / "resnet18.onnx"), x[:256], x[256:]


def spikingjelly_model(ann: nn.Module, calib: np.ndarray):
    """SpikingJelly's rate-coding conversion (max mode) of the same ANN on the same calibration batch."""
    from spikingjelly.activation_based.ann2snn import Converter, RateCodingRecipe

    batch = torch.from_numpy(calib)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Converter(RateCodingRecipe([(batch, torch.zeros(len(batch)))], mode="Max")).convert(ann)


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize()


def time_spikingjelly(snn: nn.Module, x: torch.Tensor, timesteps: int, repeats: int) -> tuple[list[float], float]:
    """Wall times of T single-step calls (SpikingJelly's converted models are single-step), and neuron share."""
    from spikingjelly.activation_based import functional, neuron

    neuron_time = [0.0]
    starts: dict[int, float] = {}
    nodes = [m for m in snn.modules() if isinstance(m, neuron.BaseNode)]
    for m in nodes:
        m.register_forward_pre_hook(lambda mod, inp: starts.__setitem__(id(mod), time.perf_counter()))
        m.register_forward_hook(lambda mod, inp, out: neuron_time.__setitem__(0, neuron_time[0] + time.perf_counter() - starts[id(mod)]))
    times = []
    with torch.no_grad():
        for r in range(repeats + 1):
            functional.reset_net(snn)
            neuron_time[0] = 0.0
            t0 = time.perf_counter()
            acc = 0
            for _ in range(timesteps):
                acc = acc + snn(x)
            _sync(x)
            elapsed = time.perf_counter() - t0
            if r:  # the first run warms up
                times.append(elapsed)
                share = neuron_time[0] / elapsed
    return times, share


def run_snnc_once(model, x: torch.Tensor, timesteps: int) -> tuple[float, dict]:
    """Wall time of one T-step run of snnc's runtime, and its profile (seconds per part)."""
    runner = model.runner(device=x.device)
    runner.profile = {}
    _sync(x)
    t0 = time.perf_counter()
    runner.run(x, timesteps, chunk=model.options["chunk"])
    _sync(x)
    return time.perf_counter() - t0, runner.profile


def time_snnc(model, x: torch.Tensor, timesteps: int, repeats: int) -> tuple[list[float], dict]:
    """Wall times of one T-step run of snnc's runtime, and its profile of the last run."""
    times, profile = [], {}
    for r in range(repeats + 1):
        elapsed, parts = run_snnc_once(model, x, timesteps)
        if r:  # the first run warms up
            times.append(elapsed)
            profile = dict(parts, total=elapsed)
    return times, profile


def stream_sweep(model, x: torch.Tensor, timesteps: int, repeats: int, thresholds_mb: list[float]) -> dict:
    """snnc's run under each streaming-store threshold of the C++ neuron kernel, interleaved
    (rotating order) so that host noise hits every setting alike: median total and neuron
    seconds per batch. Restores the threshold."""
    from snncompiler.kernels import cpu

    settings = [int(mb * (1 << 20)) for mb in thresholds_mb]
    previous = cpu.set_stream_min_bytes(settings[0])
    total: dict[int, list[float]] = {b: [] for b in settings}
    neurons: dict[int, list[float]] = {b: [] for b in settings}
    try:
        for r in range(repeats + 1):
            for b in settings[r % len(settings):] + settings[:r % len(settings)]:
                cpu.set_stream_min_bytes(b)
                elapsed, profile = run_snnc_once(model, x, timesteps)
                if r:  # the first round warms up
                    total[b].append(elapsed)
                    neurons[b].append(profile.get("neurons", 0.0))
    finally:
        cpu.set_stream_min_bytes(previous)
    return {f"{mb:g}": dict(total_median_s=statistics.median(total[b]), neurons_median_s=statistics.median(neurons[b]))
            for mb, b in zip(thresholds_mb, settings)}


def main() -> None:
    """Run both workloads and print/write the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timesteps", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--maxpool", default="output", help="snnc max-pooling strategy (output = SpikingJelly's semantics)")
    ap.add_argument("--device", default="cpu", help="cpu (the floor) or cuda: both tools on the GPU")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--stream-mb", default="",
                    help="also time snnc (CPU) under these streaming-store thresholds of the neuron kernel, "
                         "interleaved, e.g. '0,8,64' (MiB; 0 = never stream; see docs/kernels.md)")
    args = ap.parse_args()
    stream_mb = [float(v) for v in args.stream_mb.split(",") if v.strip()]
    torch.set_num_threads(args.threads)
    # snnc's runtime keeps freed heap memory for reuse (snncompiler/runtime/memory.py); set it
    # before anything runs so that SpikingJelly, in the same process, runs with the same allocator
    retained = retain_freed_memory()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from snncompiler.kernels import available_backends

    rows = []
    for name, build in (("digits_cnn", digits_cnn), ("resnet18", resnet18)):
        print(f"[{name}] building and converting ...", flush=True)
        ann, onnx_path, calib, test = build(out)
        x = torch.from_numpy(test[:args.batch]).to(args.device)
        # max pooling over spikes, as in SpikingJelly's converted model: the same computation on both sides
        compiled = snnc.compile(onnx_path, Dataset(calib), threshold="max", maxpool=args.maxpool, quiet=True)
        sj = spikingjelly_model(ann, calib).to(args.device)
        sj_times, sj_neuron_share = time_spikingjelly(sj, x, args.timesteps, args.repeats)
        sn_times, profile = time_snnc(compiled, x, args.timesteps, args.repeats)
        sj_med, sn_med = statistics.median(sj_times), statistics.median(sn_times)
        total = profile.pop("total")
        breakdown = {k: v / total for k, v in profile.items()}
        breakdown["overhead"] = max(0.0, 1.0 - sum(breakdown.values()))
        rows.append({"workload": name, "batch": args.batch, "timesteps": args.timesteps,
                     "snnc_median_s": sn_med, "spikingjelly_median_s": sj_med, "speedup": sj_med / sn_med,
                     "snnc_time_share": breakdown, "spikingjelly_neuron_share": sj_neuron_share,
                     "snnc_times_s": sn_times, "spikingjelly_times_s": sj_times})
        if stream_mb and args.device == "cpu":
            rows[-1]["stream_mb_sweep"] = sweep = stream_sweep(compiled, x, args.timesteps, 2 * args.repeats + 1,
                                                               stream_mb)
            print(f"[{name}] snnc s/batch by neuron-kernel streaming threshold (total / neurons): "
                  + ", ".join(f"{k} MiB {v['total_median_s']:.4f} / {v['neurons_median_s']:.4f}"
                              for k, v in sweep.items()), flush=True)
        for f in (onnx_path,):
            Path(f).unlink(missing_ok=True)
    machine = (f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
               f"freed memory retained: {retained}")
    if args.device != "cpu":
        machine += f", device {torch.cuda.get_device_name()}"
    print(f"\nend-to-end, T={args.timesteps}, batch {args.batch}, median of {args.repeats} ({machine}; "
          f"snnc neuron backends: {', '.join(available_backends())})")
    print(f"{'workload':<12} {'snnc s/batch':>13} {'SJ s/batch':>11} {'speedup':>8}   snnc time: neurons / conv+linear / other ops / overhead   SJ neurons")
    for r in rows:
        b = r["snnc_time_share"]
        print(f"{r['workload']:<12} {r['snnc_median_s']:>13.4f} {r['spikingjelly_median_s']:>11.4f} {r['speedup']:>7.2f}x"
              f"   {100 * b.get('neurons', 0):5.1f}% / {100 * b.get('conv/linear', 0):5.1f}% / {100 * b.get('other ops', 0):5.1f}%"
              f" / {100 * b['overhead']:5.1f}%            {100 * r['spikingjelly_neuron_share']:5.1f}%")
    floor = all(r["speedup"] >= 1.5 for r in rows)
    print(f"floor (snnc >= 1.5x faster on every workload): {'PASS' if floor else 'FAIL'}")
    name = "end_to_end.json" if args.device == "cpu" else f"end_to_end_{args.device.split(':')[0]}.json"
    from snncompiler.kernels import cpu

    write_text(out / name, json.dumps({"machine": machine, "device": args.device, "rows": rows, "floor_pass": floor,
                                       "snnc_cpu_isa": cpu.isa(),
                                       "snnc_cpu_stream_min_bytes": cpu.load().stream_min_bytes()
                                       if cpu.available() else None}, indent=1))


if __name__ == "__main__":
    main()
