"""End-to-end spiking inference speed: snnc vs SpikingJelly's converted model, same batch, same threads.

Workloads: the digits CNN (trained in seconds) and a random-init torchvision ResNet-18 on
3×32×32 inputs. Both are converted by each tool from the same ANN and calibration batch and
run for T steps on the same batch. Reported: median wall time per batch over repeats, the
ratio, and where snnc's time goes (neurons vs conv/linear vs other ops vs overhead, from the
runtime's profile; SpikingJelly's neuron time from forward hooks on its IF nodes).

    python benchmarks/end_to_end.py [--timesteps 32] [--batch 64] [--repeats 5] [--threads 2] [--device cuda]
    python benchmarks/end_to_end.py --only event     # only the event vs dense section (CPU)
    python benchmarks/end_to_end.py --only e2e       # only snnc vs SpikingJelly
    python benchmarks/end_to_end.py --only e2e --workloads digits_cnn   # one workload (own JSON)
    ATEN_CPU_CAPABILITY=avx2 python benchmarks/end_to_end.py   # both tools as on an AVX2-only CPU

With --device cuda both models run on the GPU; wall times are synchronised, but the time
shares are host-side (the runtime does not synchronise per layer), so read them as where the
host spends its time.

Prints a table and writes benchmarks/results/end_to_end.json.

Event vs dense (``--only event`` runs just this): the SD-Conv SNN (apps/sparse_conv/sdconv, the
static variant trained as the app's full run trains it: MNIST 4,000 samples, 12 epochs,
α = 1e-2; about a minute) is run for T steps on one batch while the input of every spike-driven
layer is recorded per chunk as the runtime hands it over. Each such layer is then timed on
those recorded inputs, dense (the runtime's F.conv2d / F.linear on float32 spikes) and
event-driven (kernels/csrc/event_cpu.cpp, on the uint8 binary spikes a neuron feeding only
event-driven layers emits), interleaved, median of the repeats; then again on inputs planted
at fixed spike densities with the same shape (the break-even table), and the whole SNN under
--exec dense, event and auto. Writes
benchmarks/results/event_exec.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import snncompiler as snnc
from examples.workloads import DigitsCNN, digits, export_onnx, train_classifier
from snncompiler.data import Dataset
from snncompiler.fileio import write_text
from snncompiler.kernels.cpu import cpu_model
from snncompiler.runtime.memory import retain_freed_memory
from snncompiler.runtime.snn import auto_chunk


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


WORKLOADS = {"digits_cnn": digits_cnn, "resnet18": resnet18}


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
        m.register_forward_hook(
            lambda mod, inp, out: neuron_time.__setitem__(0, neuron_time[0] + time.perf_counter() - starts[id(mod)])
        )
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


def run_snnc_once(model, x: torch.Tensor, timesteps: int, exec_mode: str = "dense", runner=None) -> tuple[float, dict]:
    """Wall time of one T-step run of snnc's runtime, and its profile (seconds per part), on a new
    runner or on ``runner``. A profiled run launches every kernel eagerly (no CUDA graphs); a
    given GPU runner runs unprofiled, as users run it."""
    if runner is None:
        runner = model.runner(device=x.device, exec=exec_mode)
        runner.profile = {}
    _sync(x)
    t0 = time.perf_counter()
    runner.run(x, timesteps, chunk=model.options["chunk"])
    _sync(x)
    return time.perf_counter() - t0, runner.profile or {}


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
            for b in settings[r % len(settings) :] + settings[: r % len(settings)]:
                cpu.set_stream_min_bytes(b)
                elapsed, profile = run_snnc_once(model, x, timesteps)
                if r:  # the first round warms up
                    total[b].append(elapsed)
                    neurons[b].append(profile.get("neurons", 0.0))
    finally:
        cpu.set_stream_min_bytes(previous)
    return {
        f"{mb:g}": dict(total_median_s=statistics.median(total[b]), neurons_median_s=statistics.median(neurons[b]))
        for mb, b in zip(thresholds_mb, settings)
    }


# ---- event-driven vs dense execution (docs/benchmarks.md: "Event-driven execution") -----------------------
PLANTED_DENSITIES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def sdconv_snn(timesteps: int):
    """The SD-Conv static SNN (learnable-threshold masked convs, apps/sparse_conv/sdconv) and its
    MNIST test inputs; trained with one thread, as the app trains."""
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # apps/ lives beside benchmarks/
    from apps.common import torch_threads
    from apps.sparse_conv.sdconv.__main__ import COMPILED_ALPHA, THRESHOLD_LR
    from apps.sparse_conv.sdconv.task import conv_weight_counts, export_form, mnist, sdconv_net, train_sdconv

    train, test = mnist(4000, 1000, seed=0)
    torch.manual_seed(0)
    with torch_threads(1):
        model = train_sdconv(
            sdconv_net("static", widths=(16, 32, 64), first_stride=2, image=28),
            train,
            epochs=12,
            alpha=COMPILED_ALPHA,
            threshold_lr=THRESHOLD_LR,
            seed=0,
        )
    kept, total = conv_weight_counts(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(export_form(model), train.x.shape[1:], Path(tmp) / "sdconv_static.onnx")
        compiled = snnc.compile(path, Dataset(train.x[:256]), timesteps=timesteps, quiet=True)
    return compiled, test, {"conv_weights_kept": kept, "conv_weights": total, "conv_sparsity": 1 - kept / total}


def record_layer_inputs(model, x: torch.Tensor, timesteps: int) -> tuple[dict, list]:
    """One T-step run under --exec event: the input of every spike-driven layer, per chunk, as
    the runtime hands it to the layer: ``(values, bits)`` with values float32 [chunk·B, ...] (what
    dense execution reads) and bits the uint8 spikes the event kernel reads instead where the
    neuron emits them in binary form (None where it reads the values)."""
    from snncompiler.runtime.snn import _BinarySpikes, _Static

    runner = model.runner(exec="event")
    inputs: dict[str, list] = {name: [] for name in runner._event_layers}
    compute = runner.compute_node

    def recording(node, env, *rest):
        value = env[node.inputs[0]]
        if node.name in inputs and not isinstance(value, _Static):
            if isinstance(value, _BinarySpikes):
                inputs[node.name].append((value.values().flatten(0, 1), value.bits.flatten(0, 1).clone()))
            else:
                inputs[node.name].append((value.flatten(0, 1).clone(), None))
        return compute(node, env, *rest)

    runner.compute_node = recording
    runner.run(x, timesteps, chunk=model.options["chunk"])
    return inputs, runner


def run_spikingjelly_once(snn: nn.Module, x: torch.Tensor, timesteps: int) -> None:
    """One T-step run of SpikingJelly's converted (single-step) model from a reset state."""
    from spikingjelly.activation_based import functional

    with torch.no_grad():
        functional.reset_net(snn)
        acc = 0
        for _ in range(timesteps):
            acc = acc + snn(x)
        _sync(x)


def _interleaved_times(fns: dict, repeats: int) -> dict:
    """Wall seconds of each callable over ``repeats`` rounds in rotating order, after one warm-up
    round (which also measures snnc's per-layer cost models unless cached)."""
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats + 1):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[k]()
            if r:
                times[k].append(time.perf_counter() - t0)
    return times


def _interleaved(fns: dict, repeats: int, best: dict | None = None) -> dict:
    """Median wall seconds of each callable, run in rotating order every round (host noise hits
    all alike); the first round warms up. ``best`` (if given) receives the fastest run of each:
    on a shared VM the median carries the neighbours' load, the minimum less of it."""
    times = _interleaved_times(fns, repeats)
    if best is not None:
        best.update({k: min(v) for k, v in times.items()})
    return {k: statistics.median(v) for k, v in times.items()}


def _break_even(points: list[tuple[float, float]]) -> float | None:
    """The spike density where event/dense time crosses 1, interpolated in log density between the
    planted points; None when it never crosses in the range."""
    for (d0, r0), (d1, r1) in zip(points, points[1:]):
        if r0 <= 1.0 < r1:
            f = (np.log(1.0) - np.log(r0)) / (np.log(r1) - np.log(r0))
            return float(np.exp(np.log(d0) + f * (np.log(d1) - np.log(d0))))
    if points and points[0][1] > 1.0:
        return 0.0
    return None


def event_vs_dense(args, out: Path) -> dict:
    """The event-vs-dense section: per spike-driven layer of the sdconv SNN, measured densities,
    dense and event time on the recorded inputs, the break-even table; whole-SNN times."""
    from snncompiler.kernels import event
    from snncompiler.runtime.ops import IMPLEMENTATIONS

    if not event.available():
        raise SystemExit(
            "event vs dense: snncompiler.kernels._event_cpu is not built (python setup.py build_ext --inplace)"
        )
    print("[sdconv] training the static SD-Conv net and compiling it ...", flush=True)
    t0 = time.perf_counter()
    load_at_start = os.getloadavg()[0]  # the VM is shared: say how busy it was
    model, test, sparsity = sdconv_snn(args.timesteps)
    print(
        f"[sdconv] {100 * sparsity['conv_sparsity']:.1f} % of conv weights pruned ({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    x = torch.from_numpy(test.x[: args.batch])
    # one chunk size for the recorded inputs, the layer timings and the whole-SNN runs (the runtime's
    # automatic choice for this batch unless the model fixes one)
    model.options["chunk"] = model.options["chunk"] or auto_chunk(model.graph, len(x), torch.device("cpu"))
    inputs, runner = record_layer_inputs(model, x, args.timesteps)
    repeats = 4 * args.repeats + 1  # a layer takes milliseconds: more repeats, an odd count for the median
    rows = []
    for name, recorded in inputs.items():
        node, layer = model.graph.node(name), runner._event_layers[name]
        chunks = [values for values, _ in recorded]
        # the event forms read what the runtime hands them: binary spikes with θ per channel
        # where the neuron emits them so (bit for bit the same result), else the values
        scale = runner._binary_spikes.get(node.inputs[0])
        event_inputs = [(bits, scale) if bits is not None else (values, None) for values, bits in recorded]
        spike_density = sum(int(torch.count_nonzero(c)) for c in chunks) / sum(c.numel() for c in chunks)
        forms = [f for f in event.FORMS if layer.supports(f)]
        fns = {"dense": lambda: [IMPLEMENTATIONS[node.op](node, c) for c in chunks]}
        for form in forms:
            fns[form] = lambda form=form: [layer(c, form, s) for c, s in event_inputs]
        fastest: dict = {}
        med = _interleaved(fns, repeats, fastest)
        # the event form --exec event runs here: the cost model's pick at the measured density
        costs = runner._costs[name]
        chosen = costs.best(spike_density, forms)
        error = max(
            float((layer(c, form, s) - IMPLEMENTATIONS[node.op](node, v)[0]).abs().max())
            for (c, s), v in zip(event_inputs, chunks)
            for form in forms
        )
        value = float(chunks[0][chunks[0] != 0].abs().mean()) if bool((chunks[0] != 0).any()) else 1.0
        planted = []
        shape = chunks[0].shape
        gen = torch.Generator().manual_seed(0)
        for d in PLANTED_DENSITIES:
            fire = torch.rand(shape, generator=gen) < d
            xp = fire.float() * value
            # binary where the runtime hands this layer binary spikes (value: θ of each channel)
            xe, se = (fire.to(torch.uint8), torch.full_like(scale, value)) if scale is not None else (xp, None)
            pf = {"dense": lambda: IMPLEMENTATIONS[node.op](node, xp)}
            pf.update({form: (lambda form=form: layer(xe, form, se)) for form in forms})
            m = _interleaved(pf, repeats)
            planted.append(
                {
                    "spike_density": d,
                    "dense_s": m["dense"],
                    **{f"{form}_s": m[form] for form in forms},
                    "event_over_dense": min(m[form] for form in forms) / m["dense"],
                }
            )
        rows.append(
            {
                "layer": name,
                "op": node.op,
                "input_shape": list(shape),
                "chunks": len(chunks),
                "spike_density": spike_density,
                "weight_density": layer.weight_density,
                "dense_s": med["dense"],
                **{f"{form}_s": med[form] for form in forms},
                "event_form": chosen,
                "event_s": med[chosen],
                "speedup": med["dense"] / med[chosen],
                "dense_min_s": fastest["dense"],
                "event_min_s": fastest[chosen],
                "speedup_of_min": fastest["dense"] / fastest[chosen],
                "max_abs_difference": error,
                "cost_model": costs.to_json(),
                "cost_model_break_even": {form: costs.break_even(form) for form in costs.event},
                "planted": planted,
                "break_even_density": _break_even([(p["spike_density"], p["event_over_dense"]) for p in planted]),
                "break_even_by_form": {
                    form: _break_even([(p["spike_density"], p[f"{form}_s"] / p["dense_s"]) for p in planted])
                    for form in forms
                },
            }
        )
        print(
            f"[sdconv] {name}: spikes {spike_density:.3f}, weights {layer.weight_density:.3f}, "
            f"dense {1e3 * med['dense']:.2f} ms, "
            + ", ".join(f"{form} {1e3 * med[form]:.2f} ms" for form in forms)
            + f" (event runs {chosen})",
            flush=True,
        )
    xs = x
    whole = _interleaved(
        {
            mode: (lambda mode=mode: model.run(xs, args.timesteps, batch_size=args.batch, exec=mode))
            for mode in event.EXEC_MODES
        },
        2 * args.repeats + 1,
    )
    auto_counts = model.runner(exec="auto")
    auto_counts.run(xs, args.timesteps, chunk=model.options["chunk"])
    dense_total, event_total = sum(r["dense_s"] for r in rows), sum(r["event_s"] for r in rows)
    # what --exec auto runs at the measured densities: the cost model's cheapest form of the three
    auto_total = sum(
        r[f"{c}_s"] for r in rows for c in [runner._costs[r["layer"]].best(r["spike_density"], ("dense", *event.FORMS))]
    )
    # the floor is on the pruned conv layers (spike × weight sparsity, what the issue is about); the
    # unpruned classifier is reported beside them
    floor = all(r["speedup"] >= 2.0 for r in rows if r["op"] == "conv")
    return {
        "workload": "sdconv static SNN (MNIST, apps/sparse_conv/sdconv)",
        "batch": args.batch,
        "timesteps": args.timesteps,
        "chunk": model.options["chunk"],
        "threads": args.threads,
        "repeats": repeats,
        **sparsity,
        "layers": rows,
        "spike_driven_total": {
            "dense_s": dense_total,
            "event_s": event_total,
            "speedup": dense_total / event_total,
            "auto_s": auto_total,
            "auto_speedup": dense_total / auto_total,
        },
        "whole_snn_s": whole,
        "auto_choices": auto_counts.exec_counts,
        "load_average_at_start": load_at_start,
        "floor": "event >= 2x faster than dense on each spike-driven (pruned) conv layer",
        "floor_pass": floor,
    }


def print_event_table(res: dict, machine: str) -> None:
    """The event-vs-dense tables: measured densities and times per form, then event/dense at planted densities."""
    print(
        f"\nevent vs dense, sdconv SNN, T={res['timesteps']}, batch {res['batch']}, chunk {res['chunk']}, "
        f"median of {res['repeats']} ({machine}); conv weights pruned {100 * res['conv_sparsity']:.1f} %"
    )
    print(
        f"{'layer':<10} {'op':<6} {'spikes':>7} {'weights':>8} {'dense ms':>9} {'gather ms':>10} {'scatter ms':>11} "
        f"{'pruned ms':>10} {'event':>8} {'speedup':>8} {'(of min)':>9} {'break-even':>11}"
    )
    for r in res["layers"]:
        be = r["break_even_density"]
        gather, pruned = (f"{1e3 * r[k]:.2f}" if k in r else "-" for k in ("gather_s", "pruned_s"))
        print(
            f"{r['layer']:<10} {r['op']:<6} {r['spike_density']:>7.3f} {r['weight_density']:>8.3f} "
            f"{1e3 * r['dense_s']:>9.2f} {gather:>10} {1e3 * r['scatter_s']:>11.2f} {pruned:>10} {r['event_form']:>8} "
            f"{r['speedup']:>7.2f}x {r['speedup_of_min']:>8.2f}x {'-' if be is None else f'{be:.3f}':>11}"
        )
    t = res["spike_driven_total"]
    print(f"{'total':<10} dense {1e3 * t['dense_s']:.2f} ms, event {1e3 * t['event_s']:.2f} ms: {t['speedup']:.2f}x")
    print(
        f"{'total auto':<10} dense {1e3 * t['dense_s']:.2f} ms, auto {1e3 * t['auto_s']:.2f} ms: "
        f"{t['auto_speedup']:.2f}x   (the cost model's cheapest form per layer)"
    )
    print("\nbest event form / dense time at planted spike densities (< 1: event faster)")
    dens = [p["spike_density"] for p in res["layers"][0]["planted"]]
    print(f"{'layer':<10} " + " ".join(f"{d:>6g}" for d in dens))
    for r in res["layers"]:
        print(f"{r['layer']:<10} " + " ".join(f"{p['event_over_dense']:>6.2f}" for p in r["planted"]))
    print("break-even spike density per form (event faster below it; 'all': at every density planted, '-': at none)")
    for r in res["layers"]:
        cells = []
        for form, be in r.get("break_even_by_form", {}).items():
            always = all(p[f"{form}_s"] < p["dense_s"] for p in r["planted"])
            cells.append(f"{form} {'all' if always else '-' if be is None else f'{be:.3f}'}")
        print(f"{r['layer']:<10} " + ", ".join(cells))
    w = res["whole_snn_s"]
    print(
        f"\nwhole SNN, s/batch: dense {w['dense']:.3f}, event {w['event']:.3f}, auto {w['auto']:.3f} "
        f"(auto's chunks per form: {res['auto_choices']})"
    )
    print(f"floor ({res['floor']}): {'PASS' if res['floor_pass'] else 'FAIL'}")


def _capped_isa_name(name: str) -> str:
    """A results file name, with the ISA appended under ATEN_CPU_CAPABILITY: a capped-ISA run keeps
    its own file beside the native one."""
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    return name.replace(".json", f"_{aten}.json") if aten else name


def _match_isa() -> str:
    """Under ATEN_CPU_CAPABILITY (torch's kernels capped at an ISA), cap snnc's C++ kernels at the
    same one (SNNC_CPU_ISA, unless set), so that both tools run as on a CPU with only that ISA.
    Returns a note for the tables."""
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    mapping = {"default": "baseline", "avx2": "avx2", "avx512": "avx512"}
    if aten in mapping and "SNNC_CPU_ISA" not in os.environ:
        os.environ["SNNC_CPU_ISA"] = mapping[aten]
    from snncompiler.kernels import cpu, event

    kernels = f"snnc kernels {cpu.isa() or 'none'} / {event.load().isa() if event.available() else 'none'}"
    return f"ATEN_CPU_CAPABILITY={aten or 'native'}, {kernels}"


def main() -> None:
    """Run both workloads and print/write the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timesteps", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help="comma-separated snnc-vs-SpikingJelly workloads to run (a subset writes its own JSON file)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--maxpool", default="output", help="snnc max-pooling strategy (output = SpikingJelly's semantics)")
    ap.add_argument("--device", default="cpu", help="cpu (the floor) or cuda: both tools on the GPU")
    ap.add_argument(
        "--exec",
        default="auto",
        choices=["dense", "event", "auto"],
        help="snnc's execution mode for spike-driven layers (CPU; dense is timed beside it as the lever's baseline)",
    )
    ap.add_argument(
        "--cuda-graphs",
        choices=["auto", "on", "off"],
        default="auto",
        help="GPU: --cuda-graphs of snnc's timed runner (default auto: a failed capture falls back and the "
        "row's cuda_graph_replays says 0); the third column is always off",
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument(
        "--stream-mb",
        default="",
        help="also time snnc (CPU) under these streaming-store thresholds of the neuron kernel, "
        "interleaved, e.g. '0,8,64' (MiB; 0 = never stream; see docs/kernels.md)",
    )
    ap.add_argument(
        "--only",
        choices=["event", "e2e"],
        default=None,
        help="run only this section: event (event-driven vs dense execution on the sdconv SNN) or e2e (snnc vs "
        "SpikingJelly on the digits CNN and ResNet-18); default: every section",
    )
    args = ap.parse_args()
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown or not workloads:
        ap.error(f"--workloads: expected some of {', '.join(WORKLOADS)}, got {args.workloads!r}")
    isa_note = _match_isa()
    stream_mb = [float(v) for v in args.stream_mb.split(",") if v.strip()]
    torch.set_num_threads(args.threads)
    # snnc's runtime keeps freed heap memory for reuse (snncompiler/runtime/memory.py); set it
    # before anything runs so that SpikingJelly, in the same process, runs with the same allocator
    retained = retain_freed_memory()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.only == "event" or (args.only is None and args.device == "cpu"):
        res = event_vs_dense(args, out)
        machine = (
            f"{cpu_model()}, {args.threads} threads, torch {torch.__version__}, {isa_note}, load average at start "
            f"{res['load_average_at_start']:.1f}"
        )
        print_event_table(res, machine)
        # the default thread count writes event_exec.json; another count its own file beside it,
        # and so does a capped-ISA run
        name = _capped_isa_name("event_exec.json" if args.threads == 2 else f"event_exec_threads{args.threads}.json")
        write_text(out / name, json.dumps({"machine": machine, **res}, indent=1))
        if args.only == "event":
            return
    from snncompiler.kernels import available_backends

    load_at_start = os.getloadavg()[0]
    rows = []
    for name, build in ((w, WORKLOADS[w]) for w in workloads):
        print(f"[{name}] building and converting ...", flush=True)
        ann, onnx_path, calib, test = build(out)
        x = torch.from_numpy(test[: args.batch]).to(args.device)
        # max pooling over spikes, as in SpikingJelly's converted model: the same computation on both sides
        compiled = snnc.compile(onnx_path, Dataset(calib), threshold="max", maxpool=args.maxpool, quiet=True)
        sj = spikingjelly_model(ann, calib).to(args.device)
        exec_mode = args.exec if args.device == "cpu" else "dense"
        # the three timed side by side, in rotating order (a shared VM's load hits all alike);
        # SpikingJelly without the neuron-timing hooks, which would slow it down. On a GPU the
        # third is snnc without CUDA graphs, and both snnc runners live across runs (the graphs
        # are captured once per runner, as in `evaluate`, which runs every batch on one runner)
        timed = {
            "sj": lambda: run_spikingjelly_once(sj, x, args.timesteps),
            "snnc": lambda: run_snnc_once(compiled, x, args.timesteps, exec_mode),
            "dense": lambda: run_snnc_once(compiled, x, args.timesteps, "dense"),
        }
        if args.device != "cpu":
            graphs = compiled.runner(device=x.device, cuda_graphs=args.cuda_graphs)
            eager = compiled.runner(device=x.device, cuda_graphs="off")
            for _ in range(2):  # warm-up, then every chunk's capture
                run_snnc_once(compiled, x, args.timesteps, runner=graphs)
            timed["snnc"] = lambda: run_snnc_once(compiled, x, args.timesteps, runner=graphs)
            timed["dense"] = lambda: run_snnc_once(compiled, x, args.timesteps, runner=eager)
        times = _interleaved_times(timed, args.repeats)
        sj_times, sn_times, dense_times = times["sj"], times["snnc"], times["dense"]
        _, sj_neuron_share = time_spikingjelly(sj, x, args.timesteps, 1)  # the share, from one hooked run
        elapsed, profile = run_snnc_once(compiled, x, args.timesteps, exec_mode)
        profile = dict(profile, total=elapsed)
        sj_med, sn_med = statistics.median(sj_times), statistics.median(sn_times)
        dense_med = statistics.median(dense_times)
        # the same outputs? per layer the event forms differ from dense by float32 summation order;
        # end to end a current that lands on θ can flip a spike (as a dense run on another ISA does)
        out_exec = compiled.run(x.cpu().numpy(), args.timesteps, exec=exec_mode)
        out_dense = compiled.run(x.cpu().numpy(), args.timesteps, exec="dense")
        agreement = {
            "max_abs_difference": float(np.abs(out_exec - out_dense).max()),
            "output_scale": float(np.abs(out_dense).max()),
            "argmax_agreement": float((out_exec.argmax(1) == out_dense.argmax(1)).mean()),
        }
        if args.device != "cpu":  # the replayed graphs give what the eager chunks give
            with_graphs, without = (
                graphs.run(x, args.timesteps)[args.timesteps],
                eager.run(x, args.timesteps)[args.timesteps],
            )
            agreement["cuda_graphs_vs_eager_max_abs_difference"] = float((with_graphs - without).abs().max())
        total = profile.pop("total")
        breakdown = {k: v / total for k, v in profile.items()}
        breakdown["overhead"] = max(0.0, 1.0 - sum(breakdown.values()))
        rows.append(
            {
                "workload": name,
                "batch": args.batch,
                "timesteps": args.timesteps,
                "exec": exec_mode,
                "maxpool": args.maxpool,
                # on a GPU: snnc_median_s with --cuda-graphs (this), snnc_dense_median_s without
                "cuda_graphs": args.cuda_graphs if args.device != "cpu" else None,
                "cuda_graph_replays": graphs.graph_replays if args.device != "cpu" else None,
                # steps per chunk: the model's own, else the runtime's choice for this batch and machine
                "chunk": compiled.options["chunk"] or auto_chunk(compiled.graph, len(x), x.device),
                "snnc_median_s": sn_med,
                "snnc_dense_median_s": dense_med,
                "spikingjelly_median_s": sj_med,
                "speedup": sj_med / sn_med,
                "speedup_dense": sj_med / dense_med,
                "exec_vs_dense": agreement,
                "snnc_time_share": breakdown,
                "spikingjelly_neuron_share": sj_neuron_share,
                "snnc_times_s": sn_times,
                "snnc_dense_times_s": dense_times,
                "spikingjelly_times_s": sj_times,
            }
        )
        if stream_mb and args.device == "cpu":
            rows[-1]["stream_mb_sweep"] = sweep = stream_sweep(
                compiled, x, args.timesteps, 2 * args.repeats + 1, stream_mb
            )
            print(
                f"[{name}] snnc s/batch by neuron-kernel streaming threshold (total / neurons): "
                + ", ".join(
                    f"{k} MiB {v['total_median_s']:.4f} / {v['neurons_median_s']:.4f}" for k, v in sweep.items()
                ),
                flush=True,
            )
        for f in (onnx_path,):
            Path(f).unlink(missing_ok=True)
    machine = (
        f"{cpu_model()}, {args.threads} threads, torch {torch.__version__}, {isa_note}, "
        f"freed memory retained: {retained}, load average at start {load_at_start:.1f}"
    )
    if args.device != "cpu":
        machine += f", device {torch.cuda.get_device_name()}"
    third = "dense" if args.device == "cpu" else "eager"  # on a GPU: the same runner without CUDA graphs
    print(
        f"\nend-to-end, T={args.timesteps}, batch {args.batch}, median of {args.repeats} ({machine}; "
        f"snnc neuron backends: {', '.join(available_backends())})"
    )
    print(
        f"{'workload':<12} {'exec':<6} {'chunk':>5} {'snnc s/batch':>13} {third + ' s/batch':>14} {'SJ s/batch':>11} "
        f"{'speedup':>8} {'(' + third + ')':>8}   snnc time: neurons / conv+linear / other ops / overhead   SJ neurons"
    )
    for r in rows:
        b = r["snnc_time_share"]
        print(
            f"{r['workload']:<12} {r['exec']:<6} {r['chunk']:>5} {r['snnc_median_s']:>13.4f} {r['snnc_dense_median_s']:>14.4f} "
            f"{r['spikingjelly_median_s']:>11.4f} {r['speedup']:>7.2f}x {r['speedup_dense']:>7.2f}x"
            f"   {100 * b.get('neurons', 0):5.1f}% / {100 * b.get('conv/linear', 0):5.1f}% / {100 * b.get('other ops', 0):5.1f}%"
            f" / {100 * b['overhead']:5.1f}%            {100 * r['spikingjelly_neuron_share']:5.1f}%"
        )
    for r in rows:
        a = r["exec_vs_dense"]
        print(
            f"{r['workload']}: --exec {r['exec']} vs dense outputs: max |difference| {a['max_abs_difference']:.3g} "
            f"(outputs up to {a['output_scale']:.3g}), argmax agreement {100 * a['argmax_agreement']:.1f} %"
        )
        if "cuda_graphs_vs_eager_max_abs_difference" in a:
            print(
                f"{r['workload']}: --cuda-graphs {r['cuda_graphs']} vs eager outputs: max |difference| "
                f"{a['cuda_graphs_vs_eager_max_abs_difference']:.3g} ({r['cuda_graph_replays']} chunks replayed)"
            )
    floor = all(r["speedup"] >= 1.5 for r in rows)
    print(f"floor (snnc >= 1.5x faster on every workload): {'PASS' if floor else 'FAIL'}")
    targets = {"digits_cnn": 4.0, "resnet18": 2.5}  # issue #23 (under ATEN_CPU_CAPABILITY=avx2)
    met = all(r["speedup"] >= targets[r["workload"]] for r in rows if r["workload"] in targets)
    print(f"targets (digits CNN >= 4x, ResNet-18 >= 2.5x): {'PASS' if met else 'FAIL'} (ISA: {isa_note})")
    name = _capped_isa_name(
        "end_to_end.json" if args.device == "cpu" else f"end_to_end_{args.device.split(':')[0]}.json"
    )
    if workloads != list(WORKLOADS):  # so does a run of some of the workloads
        name = name.replace(".json", "_" + "_".join(workloads) + ".json")
    from snncompiler.kernels import cpu

    write_text(
        out / name,
        json.dumps(
            {
                "machine": machine,
                "device": args.device,
                "rows": rows,
                "floor_pass": floor,
                "targets_23_pass": met,
                "isa": isa_note,
                "snnc_cpu_isa": cpu.isa(),
                "snnc_cpu_stream_min_bytes": cpu.load().stream_min_bytes() if cpu.available() else None,
            },
            indent=1,
        ),
    )


if __name__ == "__main__":
    main()
