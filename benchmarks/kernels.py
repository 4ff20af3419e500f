"""Benchmark the fused neuron kernels: snnc vs the PyTorch reference, SpikingJelly and a copy.

    python benchmarks/kernels.py [--quick] [--gpu | --gpu-only] [--rounds K] [--out PATH]
    python benchmarks/kernels.py --overhead [--gpu]   # the op's fixed cost per call only

Workload: IF neuron, soft reset, theta = 1, float32 x of shape [T, N] (N neurons, T steps),
inference (no autograd). Throughput is T*N elements per second, from the median time.

Implementations (CPU, 2 threads: torch.set_num_threads(2), OMP_NUM_THREADS=2):
  copy        dst.copy_(x) into a preallocated tensor: the memory-traffic bound (reads and
              writes T*N*4 bytes each, exactly the traffic of the value-format kernel)
  clone       x.clone(): the same copy into a freshly allocated tensor, i.e. what any op that
              returns a new T*N tensor pays (with glibc's default malloc, page faults and
              zeroing of fresh pages on every call: see --allocator)
  snnc-pre    the C++ kernel writing into preallocated buffers (like copy): the kernel alone
  snnc        neuron_multistep(backend="cpu"), value-format spikes: the op as users call it
              (allocates its output; from 1 MiB up that comes from the extension's buffer
              cache, see snncompiler/kernels/cpu.py)
  snnc-bin    the same with spike_format="binary" (1 byte per spike written)
  snnc-pack   the same with spike_format="packed" (1 bit per spike written)
  reference   neuron_multistep(backend="reference"): the Python-loop PyTorch oracle
  sj          SpikingJelly 2.0.0 IFNode(v_reset=None, step_mode="m") (its CPU path is its
              torch implementation; 2.0.0 has no backend= argument)

GPU columns (--gpu / --gpu-only): copy, clone, snnc-triton / snnc-cuda (the op as called),
snnc-triton-pre / snnc-cuda-pre (the kernels launched straight into preallocated buffers) and sj;
for layers small enough for cuda.deep_unroll_max_n also snnc-cuda-pre-unroll8, the CUDA launch
with 8 instead of 16 time steps' loads in flight per thread (ratio snnc-cuda-pre/unroll8 > 1:
the deeper unroll pays).

--allocator retain (default) measures with freed host memory kept for reuse, the setting
snnc's spiking runtime makes (snncompiler/runtime/memory.py); every column runs under it.
--allocator default leaves glibc's malloc as a plain Python process has it (SpikingJelly's
setting when it runs on its own); the snnc op still reuses its own output buffers.

The implementations run interleaved (one round = each once, in rotating order) so that
background load on a shared machine hits them alike; ratios are medians of per-round ratios.
The slow baselines are skipped above --max-slow-elements (memory: several T*N temporaries).

--gpu (CUDA present) also measures copy, snnc-triton, snnc-cuda and SpikingJelly's neuron on
the GPU; --gpu-only measures the GPU alone. SpikingJelly picks its own CUDA implementation
(native CUDA if built from source, else its Triton kernel); the JSON records which. GPU times
come from CUDA events over bursts of back-to-back calls (see measure_gpu).
The fixed cost per call (T=1, N=64, a tight loop of calls) of the op and of the bare kernel
call is measured per device and stored as call_overhead_us.
Results go to benchmarks/results/kernels.json and a table on stdout.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")  # before torch starts its thread pool

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from snncompiler.fileio import write_text
from snncompiler.kernels import (
    available_backends,
    cpu,
    neuron_multistep,
)
from snncompiler.kernels import op as op_module
from snncompiler.runtime.memory import retain_freed_memory

FULL_T, FULL_N = (4, 8, 32, 128), (1 << 16, 1 << 20, 1 << 22)
QUICK_T, QUICK_N = (4, 32), (1 << 16, 1 << 20)
FLOOR = dict(T=32, N=1 << 20, over_copy=0.6, over_sj=10.0)
OUT = Path(__file__).resolve().parent / "results" / "kernels.json"


def machine() -> dict:
    """What the numbers were measured on."""
    info = dict(
        cpu=cpu.cpu_model(),
        logical_cores=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
        aten_cpu_capability=os.environ.get("ATEN_CPU_CAPABILITY"),
        torch=torch.__version__,
        python=platform.python_version(),
        gpu=None,
        snnc_cpu_isa=cpu.isa(),
        snnc_cpu_stream_min_bytes=cpu.load().stream_min_bytes() if cpu.available() else None,
    )
    try:
        from importlib.metadata import version

        info["spikingjelly"] = version("spikingjelly")
    except Exception:  # not installed
        info["spikingjelly"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def spikingjelly_node(device):
    """A SpikingJelly IF node matching the benchmark neuron, or None if it is not installed."""
    try:
        from spikingjelly.activation_based import neuron
    except Exception:  # not installed, or an optional dependency of it missing
        return None
    node = neuron.IFNode(v_threshold=1.0, v_reset=None, step_mode="m").to(device)

    def run(x):
        node.reset()
        return node(x)

    return run


def spikingjelly_cuda_implementation() -> str | None:
    """Which CUDA implementation SpikingJelly selected for IFNode ("cuda", "triton" or "torch")."""
    try:
        from spikingjelly._ops import if_

        return ",".join(sorted({getattr(sel, "name", str(sel)) for sel in if_._selection._selections.values()})) or None
    except Exception:  # private API: a later version may move it
        return None


def preallocated_cpu_kernel(x, v0):
    """The C++ forward into buffers allocated once, as the copy bound does (no allocation cost);
    the callable returns the spike buffer (tests/kernels/test_prepared_launches.py checks it)."""
    T, n = x.shape
    theta, out, vout = torch.ones(1), torch.empty_like(x), torch.empty(n)
    args = (
        x.data_ptr(),
        v0.data_ptr(),
        theta.data_ptr(),
        1,
        1,
        out.data_ptr(),
        vout.data_ptr(),
        T,
        n,
        1.0,
        False,
        0.0,
        cpu.FORMATS["value"],
        torch.get_num_threads(),
        -1,
        x.dtype == torch.bfloat16,
    )
    keep = (theta, out, vout)
    return lambda: (cpu.load().forward(*args), keep)[1][1]


def preallocated_gpu_kernels(x, v0) -> dict:
    """The CUDA and Triton forwards launched straight into buffers allocated once: the kernels
    without the op's Python argument handling (which dominates on small layers). Each callable
    returns the spike buffer. Triton also runs here on CPU tensors under TRITON_INTERPRET=1."""
    T, n = x.shape
    theta, out, vout = torch.ones(1, device=x.device), torch.empty_like(x), torch.empty(n, device=x.device)
    impls = {}
    backends = available_backends()
    if "cuda" in backends:
        from snncompiler.kernels import cuda

        lib, stream = cuda.load(), torch.cuda.current_stream().cuda_stream
        args = (
            x.data_ptr(),
            cuda.DTYPES[x.dtype],
            v0.data_ptr(),
            1,
            n,
            theta.data_ptr(),
            1,
            1,
            out.data_ptr(),
            cuda.FORMATS["value"],
            vout.data_ptr(),
            T,
            n,
            1.0,
            0,
            0.0,
            cuda.VEC4_MIN_N,
            cuda.deep_unroll_max_n(x.device.index),
            stream,
        )
        impls["snnc-cuda-pre"] = lambda: (lib.snnc_lif_forward(*args), theta, out, vout)[2]
        if n <= args[-2] and n < cuda.VEC4_MIN_N:  # the same launch with 8 steps in flight
            shallow = args[:-2] + (0, stream)
            impls["snnc-cuda-pre-unroll8"] = lambda: (lib.snnc_lif_forward(*shallow), theta, out, vout)[2]
    if "triton" in backends:
        from snncompiler.kernels import triton_kernel

        impls["snnc-triton-pre"] = lambda: (
            triton_kernel._launch(
                "fwd",
                n,
                T,
                x,
                v0,
                theta,
                out,
                vout,
                T,
                n,
                (n + 7) // 8,
                1,
                1,
                1,
                n,
                1.0,
                0.0,
                DECAY=False,
                HARD=False,
                FMT=0,
            ),
            out,
        )[1]
    return impls


def implementations(
    T: int, N: int, device: str, slow: bool, dtype: torch.dtype = torch.float32
) -> tuple[dict, dict, dict]:
    """(name -> zero-arg callable, name -> skip reason, the tensors kept alive); x in ``dtype``
    (the copy moves that dtype too)."""
    x = (torch.randn(T, N, device=device) * 0.5 + 0.3).to(dtype)
    v0 = torch.zeros(N, device=device)
    dst = torch.empty_like(x)
    impls, skipped = {"copy": lambda: dst.copy_(x), "clone": lambda: x.clone()}, {}
    backends = available_backends()
    kernel = ["cpu"] if device == "cpu" else ["triton", "cuda"]
    for b in kernel:
        name = "snnc" if b == "cpu" else f"snnc-{b}"
        if b not in backends:
            skipped[name] = f"backend {b!r} not available"
            continue
        impls[name] = lambda b=b: neuron_multistep(x, v0, 1.0, backend=b)
        if b == "cpu":
            impls["snnc-pre"] = preallocated_cpu_kernel(x, v0)
            impls["snnc-bin"] = lambda: neuron_multistep(x, v0, 1.0, backend="cpu", spike_format="binary")
            impls["snnc-pack"] = lambda: neuron_multistep(x, v0, 1.0, backend="cpu", spike_format="packed")
    if device == "cuda":
        impls.update(preallocated_gpu_kernels(x, v0))
    sj = spikingjelly_node(device)
    if not slow:
        skipped["reference"] = skipped["sj"] = "skipped above --max-slow-elements (memory, minutes per call)"
    else:
        if device == "cpu":
            impls["reference"] = lambda: neuron_multistep(x, v0, 1.0, backend="reference")
        if sj is None:
            skipped["sj"] = "spikingjelly not installed"
        else:
            impls["sj"] = lambda: sj(x)
    return impls, skipped, dict(x=x, v0=v0, dst=dst)


ISA_GRID = ((8, 1 << 15), (8, 1 << 17), (8, 1 << 20), (32, 1 << 20))  # outputs of 1, 4, 32, 128 MiB
ISA_OUT = OUT.with_name("kernels_isa.json")


def isa_sweep(rounds: int, min_seconds: float) -> list[dict]:
    """The C++ kernel alone (preallocated output, as the copy) in each instruction set this CPU
    runs, with regular and with streaming stores, against the copy; and its surrogate-gradient
    backward (atan) in each instruction set against the baseline's. Restores the defaults."""
    lib = cpu.load()
    isa0, stream0 = lib.isa(), lib.stream_min_bytes()
    rows = []
    try:
        for T, n in ISA_GRID:
            x, v0 = torch.randn(T, n), torch.zeros(n)
            dst = torch.empty_like(x)
            kernel = preallocated_cpu_kernel(x, v0)
            theta, gy, gv = torch.ones(()), torch.randn(T, n), torch.randn(n)
            gx, gv0, gth = torch.empty_like(x), torch.empty(n), torch.empty(n)
            bwd_args = (
                x.data_ptr(),
                v0.data_ptr(),
                theta.data_ptr(),
                1,
                1,
                gy.data_ptr(),
                gv.data_ptr(),
                gx.data_ptr(),
                gv0.data_ptr(),
                gth.data_ptr(),
                T,
                n,
                1,  # one neuron per unit
                0.9,
                False,
                0.0,
                1,
                2.0,
                False,
                torch.get_num_threads(),
            )

            def forward(isa, stream):
                def call():
                    lib.set_isa(isa)
                    lib.set_stream_min_bytes(1 if stream else 0)
                    kernel()

                return call

            def backward(isa):
                def call():
                    lib.set_isa(isa)
                    lib.backward_neurons(*bwd_args)

                return call

            impls = {"copy": lambda: dst.copy_(x)}
            for isa in lib.supported_isas():
                impls[f"{isa}"] = forward(isa, False)
                impls[f"{isa}+stream"] = forward(isa, True)
                impls[f"backward-{isa}"] = backward(isa)
            times = measure(impls, rounds, min_seconds, lambda: None)
            forward_ratios = {
                k: statistics.median(c / t for c, t in zip(times["copy"], v))
                for k, v in times.items()
                if k != "copy" and not k.startswith("backward")
            }
            backward_ratios = {
                k[len("backward-") :]: statistics.median(b / t for b, t in zip(times["backward-baseline"], v))
                for k, v in times.items()
                if k.startswith("backward")
            }
            rows.append(
                dict(
                    T=T,
                    N=n,
                    output_mib=T * n * 4 / (1 << 20),
                    forward_over_copy=forward_ratios,
                    backward_over_baseline=backward_ratios,
                    times_s={k: [round(t, 7) for t in v] for k, v in times.items()},
                )
            )
            print(
                f"T={T:<3} N=2^{n.bit_length() - 1:<2} ({T * n * 4 >> 20:>3} MiB) forward/copy: "
                + "  ".join(f"{k} {v:.2f}x" for k, v in forward_ratios.items())
                + "   backward/baseline: "
                + "  ".join(f"{k} {v:.2f}x" for k, v in backward_ratios.items()),
                flush=True,
            )
    finally:
        lib.set_isa(isa0)
        lib.set_stream_min_bytes(stream0)
    return rows


BACKWARD_GRID = ((8, 1 << 17), (32, 1 << 20))
BACKWARD_OUT = OUT.with_name("kernels_backward.json")
OVERHEAD_OUT = OUT.with_name("kernels_overhead.json")


def backward_bench(rounds: int, min_seconds: float, max_slow: int) -> list[dict]:
    """A training step of one layer on the CPU: forward and surrogate-gradient backward through
    autograd (LIF, decay 0.9, soft reset, theta 1, gradient of a random linear loss of the value
    spikes and v_final w.r.t. x), per surrogate, snnc's C++ kernel against autograd through the
    PyTorch reference; and the C++ backward kernel alone against a copy of x."""
    from snncompiler.kernels import neuron_multistep_reference
    from snncompiler.kernels.surrogate import resolve

    lib = cpu.load()
    rows = []
    for T, n in BACKWARD_GRID:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(T, n, generator=g).requires_grad_(True)
        w = torch.randn(T, n, generator=g)
        dst = torch.empty_like(x)
        theta, v0, gv = torch.ones(()), torch.zeros(n), torch.randn(n, generator=g)
        gx, gv0 = torch.empty_like(x), torch.empty(n)

        def step(fn, surrogate):
            def call():
                s, v = fn(x, 0.0, 1.0, decay=0.9, surrogate=surrogate)
                return torch.autograd.grad((s * w).sum() + v.sum(), x)

            return call

        def kernel_backward(surrogate):
            sid, alpha = resolve(surrogate, None)
            args = (
                x.data_ptr(),
                v0.data_ptr(),
                theta.data_ptr(),
                1,
                1,
                w.data_ptr(),
                gv.data_ptr(),
                gx.data_ptr(),
                gv0.data_ptr(),
                0,
                T,
                n,
                1,  # one neuron per unit
                0.9,
                False,
                0.0,
                sid,
                alpha,
                False,
                torch.get_num_threads(),
            )
            return lambda: lib.backward_neurons(*args)

        impls = {"copy": lambda: dst.copy_(x.detach())}
        for sg in ("triangle", "atan", "sigmoid"):
            impls[f"snnc-{sg}"] = step(lambda *a, **k: neuron_multistep(*a, backend="cpu", **k), sg)
            impls[f"kernel-bwd-{sg}"] = kernel_backward(sg)
            if T * n <= max_slow:
                impls[f"reference-{sg}"] = step(neuron_multistep_reference, sg)
        times = measure(impls, rounds, min_seconds, lambda: None, grad=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = dict(T=T, N=n, median_s=med, snnc_over_reference={}, kernel_bwd_time_over_copy={})
        for sg in ("triangle", "atan", "sigmoid"):
            if f"reference-{sg}" in times:
                row["snnc_over_reference"][sg] = statistics.median(
                    r / s for r, s in zip(times[f"reference-{sg}"], times[f"snnc-{sg}"])
                )
            row["kernel_bwd_time_over_copy"][sg] = statistics.median(
                k / c for k, c in zip(times[f"kernel-bwd-{sg}"], times["copy"])
            )
        rows.append(row)
        print(
            f"T={T:<3} N=2^{n.bit_length() - 1:<2} fwd+bwd step, snnc vs reference: "
            + "  ".join(f"{k} {v:.1f}x" for k, v in row["snnc_over_reference"].items())
            + "   backward kernel time / copy time: "
            + "  ".join(f"{k} {v:.2f}" for k, v in row["kernel_bwd_time_over_copy"].items()),
            flush=True,
        )
    return rows


def measure(impls: dict, rounds: int, min_seconds: float, sync, grad: bool = False) -> dict[str, list[float]]:
    """Interleaved timing: per round, each implementation once (rotating order); under
    inference_mode unless ``grad`` (implementations that run autograd)."""
    names = list(impls)
    times: dict[str, list[float]] = {n: [] for n in names}
    with contextlib.nullcontext() if grad else torch.inference_mode():
        for n in names:  # warm-up (lazy init, first-touch of inputs, autotuning)
            impls[n]()
        sync()
        start, r = time.perf_counter(), 0
        while r < rounds or (r < 3 * rounds and time.perf_counter() - start < min_seconds):
            for n in names[r % len(names) :] + names[: r % len(names)]:
                sync()
                t0 = time.perf_counter()
                impls[n]()
                sync()
                times[n].append(time.perf_counter() - t0)
            r += 1
    return times


def measure_gpu(impls: dict, rounds: int, min_seconds: float, burst_seconds: float = 0.005) -> dict[str, list[float]]:
    """GPU timing with CUDA events: each sample is a burst of K back-to-back calls (no sync
    between them) timed on the device and divided by K, so that a call's host-side overhead is
    hidden when the GPU is the bottleneck and shows when it is not (small layers), as in a
    model's forward pass. K is sized per implementation to ~5 ms; rounds interleave as on CPU."""
    names = list(impls)
    times: dict[str, list[float]] = {n: [] for n in names}
    burst = {}
    with torch.inference_mode():
        for n in names:  # warm-up (compilation, autotuning), then size the burst
            impls[n]()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            impls[n]()
            torch.cuda.synchronize()
            burst[n] = max(1, min(200, int(burst_seconds / max(time.perf_counter() - t0, 1e-6))))
        start, r = time.perf_counter(), 0
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        while r < rounds or (r < 3 * rounds and time.perf_counter() - start < min_seconds):
            for n in names[r % len(names) :] + names[: r % len(names)]:
                torch.cuda.synchronize()
                begin.record()
                for _ in range(burst[n]):
                    impls[n]()
                end.record()
                end.synchronize()
                times[n].append(begin.elapsed_time(end) / 1e3 / burst[n])
            r += 1
    return times


def run(
    device: str, Ts, Ns, rounds: int, min_seconds: float, max_slow: int, dtype: torch.dtype = torch.float32
) -> list[dict]:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = []
    for N in Ns:
        for T in Ts:
            impls, skipped, keep = implementations(T, N, device, T * N <= max_slow, dtype)
            # the slow baselines take seconds per call at large sizes: fewer rounds there
            n_rounds = rounds if T * N <= (1 << 25) or device != "cpu" else max(3, rounds // 3)
            if device == "cuda":
                times = measure_gpu(impls, n_rounds, min_seconds)
            else:
                times = measure(impls, n_rounds, min_seconds, sync)
            del keep
            elems = T * N
            row = dict(
                T=T,
                N=N,
                device=device,
                rounds=len(times["copy"]),
                skipped=skipped,
                impls={},
                times_s={k: [round(t, 6) for t in v] for k, v in times.items()},
            )
            for name, ts in times.items():
                med = statistics.median(ts)
                row["impls"][name] = dict(median_s=med, elements_per_s=elems / med)
            ratios = {}
            kern = "snnc" if device == "cpu" else next((k for k in ("snnc-cuda", "snnc-triton") if k in times), None)
            if kern in times:
                ratios[f"{kern}/copy"] = statistics.median(c / k for c, k in zip(times["copy"], times[kern]))
                if "snnc-pre" in times:
                    ratios["snnc-pre/copy"] = statistics.median(c / k for c, k in zip(times["copy"], times["snnc-pre"]))
                    if "sj" in times:
                        ratios["snnc-pre/sj"] = statistics.median(b / k for b, k in zip(times["sj"], times["snnc-pre"]))
                if "snnc-cuda-pre-unroll8" in times:  # > 1: the deeper unroll of small layers pays
                    ratios["snnc-cuda-pre/unroll8"] = statistics.median(
                        u / k for u, k in zip(times["snnc-cuda-pre-unroll8"], times["snnc-cuda-pre"])
                    )
                ratios[f"{kern}/clone"] = statistics.median(c / k for c, k in zip(times["clone"], times[kern]))
                for base in ("reference", "sj"):
                    if base in times:
                        ratios[f"{kern}/{base}"] = statistics.median(b / k for b, k in zip(times[base], times[kern]))
            row["ratios"] = ratios
            rows.append(row)
            print_row(row, header=len(rows) == 1)
    return rows


COLS = (
    "copy",
    "clone",
    "snnc-pre",
    "snnc",
    "snnc-bin",
    "snnc-pack",
    "snnc-triton-pre",
    "snnc-triton",
    "snnc-cuda-pre",
    "snnc-cuda-pre-unroll8",
    "snnc-cuda",
    "reference",
    "sj",
)


def print_row(row: dict, header: bool) -> None:
    cols = [c for c in COLS if c in row["impls"] or c in row["skipped"]]
    if header:
        print(f"\n[{row['device']}] throughput in 1e9 elements/s (median), ratios = median of per-round ratios")
        print(f"{'T':>4} {'N':>8} " + " ".join(f"{c:>11}" for c in cols) + "   ratios")
    cells = []
    for c in cols:
        r = row["impls"].get(c)
        cells.append(f"{r['elements_per_s'] / 1e9:11.3f}" if r else f"{'-':>11}")
    ratios = "  ".join(f"{k}={v:.2f}x" for k, v in row["ratios"].items())
    print(f"{row['T']:>4} {row['N']:>8} " + " ".join(cells) + f"   {ratios}", flush=True)


def floor_check(rows: list[dict]) -> dict | None:
    """The acceptance floor: T=32, N=2^20 on CPU, snnc >= 0.6x copy and >= 10x SpikingJelly."""
    for row in rows:
        if row["device"] == "cpu" and row["T"] == FLOOR["T"] and row["N"] == FLOOR["N"]:
            r = row["ratios"]
            oc, opc, osj, kpsj = r.get("snnc/copy"), r.get("snnc-pre/copy"), r.get("snnc/sj"), r.get("snnc-pre/sj")

            def ok(c, j):
                return c is not None and j is not None and c >= FLOOR["over_copy"] and j >= FLOOR["over_sj"]

            return dict(
                FLOOR,
                snnc_over_copy=oc,
                kernel_over_copy=opc,
                snnc_over_sj=osj,
                kernel_over_sj=kpsj,
                met_by_op=ok(oc, osj),
                met_by_kernel=ok(opc, kpsj),
            )
    return None


def call_overhead(device: str, calls: int = 2000, repeats: int = 9) -> dict:
    """Fixed cost per call on a tiny layer (T=1, N=64), back to back in a tight loop: the op as
    called against the kernel launched directly (C++ call / CUDA launch). The difference is the
    op's Python argument handling, which bounds small layers."""
    x, v0 = torch.rand(1, 64, device=device), torch.zeros(64, device=device)
    x_c, theta_c = x.view(1, 4, 16), torch.rand(4, 1, device=device) + 0.5
    impls = {
        "op": lambda: neuron_multistep(x, v0, 1.0),
        # the runtime's other common calls: a scalar v0 (first chunk), a per-channel theta
        "op-scalar-v0": lambda: neuron_multistep(x, 0.0, 1.0),
        "op-channel-theta": lambda: neuron_multistep(x_c, 0.0, theta_c),
        # where the op's cost goes: without its argument checks (backend resolution, θ/v0 layouts,
        # the backend's forward), and the backend's forward alone (output allocation and launch)
        "op-unchecked": lambda: op_module._forward(x, v0, one, 1.0, False, 0.0, "value", "auto", "atan", 1.0, False),
    }
    one = torch.ones((), device=device)
    if device == "cpu":
        impls["backend-forward"] = lambda: cpu.forward(x, v0, one, 1, 1.0, False, 0.0, "value", 1)
    elif "cuda" in available_backends():
        from snncompiler.kernels import cuda

        impls["backend-forward"] = lambda: cuda.forward(x, v0, one, 1, 1.0, False, 0.0, "value", 1)
    if device == "cpu":
        impls["kernel"] = preallocated_cpu_kernel(x, v0)
    else:
        impls.update(preallocated_gpu_kernels(x, v0))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    out = {}
    with torch.inference_mode():
        for name, fn in impls.items():
            for _ in range(100):
                fn()
            per_call = []
            for _ in range(repeats):
                sync()
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                sync()
                per_call.append((time.perf_counter() - t0) / calls * 1e6)
            out[name] = statistics.median(per_call)
    return out


def call_overheads(devices) -> dict:
    """:func:`call_overhead` on each device, printed as it is measured."""
    overhead = {}
    for device in devices:
        overhead[device] = call_overhead(device)
        print(
            f"\n[{device}] fixed cost per call (T=1, N=64, tight loop, median of 9), µs: "
            + ", ".join(f"{k} {v:.1f}" for k, v in overhead[device].items())
        )
    return overhead


GPU_FLOOR = dict(min_T=8, over_copy=0.8)


def gpu_floor_check(rows: list[dict]) -> dict | None:
    """The GPU floor: for T >= 8, Triton and CUDA >= 0.8x the device copy and faster than SpikingJelly."""
    checks = []
    for row in rows:
        if row["device"] != "cuda" or row["T"] < GPU_FLOOR["min_T"]:
            continue
        times = row["times_s"]
        for kern in ("snnc-triton", "snnc-cuda", "snnc-triton-pre", "snnc-cuda-pre"):
            if kern not in times:
                continue
            over_copy = statistics.median(c / k for c, k in zip(times["copy"], times[kern]))
            over_sj = statistics.median(b / k for b, k in zip(times["sj"], times[kern])) if "sj" in times else None
            checks.append(
                dict(
                    T=row["T"],
                    N=row["N"],
                    kernel=kern,
                    over_copy=over_copy,
                    over_sj=over_sj,
                    met=over_copy >= GPU_FLOOR["over_copy"] and over_sj is not None and over_sj > 1.0,
                )
            )
    if not checks:
        return None
    return dict(
        GPU_FLOOR,
        checks=checks,
        met_by_op=all(c["met"] for c in checks if not c["kernel"].endswith("-pre")),
        met_by_kernel=all(c["met"] for c in checks if c["kernel"].endswith("-pre")),
    )


def markdown(result: dict) -> str:
    """The JSON's rows as Markdown tables (one per device), as quoted in docs/kernels.md."""
    lines = []
    for device in ("cpu", "cuda"):
        rows = [r for r in result["results"] if r["device"] == device]
        if not rows:
            continue
        cols = [c for c in COLS if any(c in r["impls"] for r in rows)]
        ratio_keys = list(dict.fromkeys(k for r in rows for k in r["ratios"]))
        lines += [
            f"\n{device}: 10^9 elements/s (median); ratios are medians of per-round ratios\n",
            "| T | N | " + " | ".join(cols + ratio_keys) + " |",
            "|---" * (2 + len(cols) + len(ratio_keys)) + "|",
        ]
        for r in rows:
            cells = [f"{r['impls'][c]['elements_per_s'] / 1e9:.2f}" if c in r["impls"] else "-" for c in cols]
            cells += [f"{r['ratios'][k]:.2f}x" if k in r["ratios"] else "-" for k in ratio_keys]
            lines.append(f"| {r['T']} | 2^{r['N'].bit_length() - 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="reduced grid: T in {4, 32}, N in {2^16, 2^20}")
    ap.add_argument("--gpu", action="store_true", help="also measure Triton, CUDA and SpikingJelly on the GPU")
    ap.add_argument("--gpu-only", action="store_true", help="measure the GPU only (skip the CPU grid)")
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds per size (default 9)")
    ap.add_argument("--min-seconds", type=float, default=1.0, help="keep adding rounds until this much time")
    ap.add_argument(
        "--max-slow-elements",
        type=int,
        default=1 << 27,
        help="skip reference/SpikingJelly above this T*N (default 2^27)",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument(
        "--allocator",
        choices=("retain", "default"),
        default="retain",
        help="retain (default): keep freed host memory for reuse, as snnc's runtime sets it "
        "(snncompiler/runtime/memory.py); default: leave glibc's malloc alone",
    )
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--markdown", action="store_true", help="print --out's existing JSON as Markdown tables and exit")
    ap.add_argument(
        "--isa-sweep",
        action="store_true",
        help="only compare the C++ kernel's instruction sets and its streaming stores (writes "
        "benchmarks/results/kernels_isa.json unless --out is given)",
    )
    ap.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="x (and copy, value spikes) dtype of the CPU grid (default float32; bfloat16 writes "
        "benchmarks/results/kernels_bf16.json unless --out is given)",
    )
    ap.add_argument(
        "--backward",
        action="store_true",
        help="only time a training step (forward + surrogate-gradient backward) per surrogate, snnc "
        "vs autograd through the reference (writes benchmarks/results/kernels_backward.json "
        "unless --out is given)",
    )
    ap.add_argument(
        "--overhead",
        action="store_true",
        help="only measure the op's fixed cost per call against the bare kernel call (T=1, N=64), on "
        "the CPU and, with --gpu, the GPU (writes benchmarks/results/kernels_overhead.json unless "
        "--out is given)",
    )
    args = ap.parse_args(argv)
    if args.dtype != "float32" and args.out == OUT:
        args.out = OUT.with_name("kernels_bf16.json")
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return 0
    torch.set_num_threads(args.threads)
    retained = args.allocator == "retain" and retain_freed_memory()
    if args.backward:
        if not cpu.available():
            print("--backward: the C++ extension is not built")
            return 2
        print("[cpu] training step per surrogate (median of interleaved rounds)")
        rows = backward_bench(args.rounds, args.min_seconds, args.max_slow_elements // 8)
        write_result(
            BACKWARD_OUT if args.out == OUT else args.out,
            dict(
                benchmark="snncompiler neuron_multistep forward + backward",
                workload="LIF decay 0.9, soft reset, theta 1, float32, loss = sum(w * spikes) + sum(v_final)",
                machine=dict(machine(), freed_memory_retained=retained),
                results=rows,
            ),
        )
        return 0
    if args.isa_sweep:
        if not cpu.available():
            print("--isa-sweep: the C++ extension is not built")
            return 2
        print("[cpu] C++ kernel per instruction set, preallocated output, ratios = median of per-round ratios")
        rows = isa_sweep(args.rounds, args.min_seconds)
        write_result(
            ISA_OUT if args.out == OUT else args.out,
            dict(
                benchmark="snncompiler C++ kernel per instruction set",
                workload="IF, soft reset, theta=1, float32, value spikes; backward: LIF 0.9, atan surrogate",
                machine=dict(machine(), freed_memory_retained=retained),
                results=rows,
            ),
        )
        return 0
    gpu = ["cuda"] if (args.gpu or args.gpu_only) and torch.cuda.is_available() else []
    if args.overhead:
        overhead = call_overheads(["cpu"] + gpu)
        write_result(
            OVERHEAD_OUT if args.out == OUT else args.out,
            dict(
                benchmark="snncompiler neuron_multistep fixed cost per call",
                workload="T=1, N=64, IF, soft reset",
                machine=dict(machine(), freed_memory_retained=retained),
                call_overhead_us=overhead,
            ),
        )
        return 0
    Ts, Ns = (QUICK_T, QUICK_N) if args.quick else (FULL_T, FULL_N)
    gpu_sj = None
    dtype = getattr(torch, args.dtype)
    if dtype != torch.float32 and (args.gpu or args.gpu_only):
        print("--dtype: the GPU grid is float32 only")
        return 2
    rows = [] if args.gpu_only else run("cpu", Ts, Ns, args.rounds, args.min_seconds, args.max_slow_elements, dtype)
    if args.gpu or args.gpu_only:
        if torch.cuda.is_available():
            rows += run("cuda", Ts, Ns, max(args.rounds, 20), args.min_seconds, 1 << 62)
            gpu_sj = spikingjelly_cuda_implementation()
        else:
            print("\n--gpu: no CUDA device, GPU measurements skipped")
    floor = floor_check(rows) if dtype == torch.float32 else None  # the floor is stated for float32
    info = machine()
    info["freed_memory_retained"] = retained
    if args.gpu or args.gpu_only:
        info["spikingjelly_cuda_implementation"] = gpu_sj
    if floor:

        def verdict(ok):
            return "MET" if ok else "NOT MET"

        print(
            f"\nfloor (T=32, N=2^20, CPU, need >= 0.6x copy and >= 10x SpikingJelly):\n"
            f"  kernel, preallocated output (as copy): {floor['kernel_over_copy']:.2f}x copy -> "
            f"{verdict(floor['met_by_kernel'])}\n"
            f"  op, allocating its output:            {floor['snnc_over_copy']:.2f}x copy -> "
            f"{verdict(floor['met_by_op'])}\n"
            f"  vs SpikingJelly: op {floor['snnc_over_sj']:.1f}x, kernel {floor['kernel_over_sj']:.1f}x"
        )
    overhead = call_overheads(([] if args.gpu_only else ["cpu"]) + gpu)
    gpu_floor = gpu_floor_check(rows)
    if gpu_floor:
        print(
            f"\nGPU floor (T >= 8: >= 0.8x device copy and faster than SpikingJelly): "
            f"op as called {'MET' if gpu_floor['met_by_op'] else 'NOT MET'}, "
            f"kernels launched directly {'MET' if gpu_floor['met_by_kernel'] else 'NOT MET'}"
        )
        for c in gpu_floor["checks"]:
            sj = f"{c['over_sj']:.2f}x" if c["over_sj"] is not None else "-"
            print(
                f"  T={c['T']:>4} N=2^{c['N'].bit_length() - 1:<2} {c['kernel']:>12}: {c['over_copy']:.2f}x copy, "
                f"{sj} SpikingJelly{'' if c['met'] else '  <- below'}"
            )
    write_result(
        args.out,
        dict(
            benchmark="snncompiler.kernels.neuron_multistep",
            workload=f"IF, soft reset, theta=1, {args.dtype}, inference",
            machine=info,
            quick=args.quick,
            results=rows,
            floor=floor,
            gpu_floor=gpu_floor,
            call_overhead_us=overhead,
        ),
    )
    return 0


def write_result(path: Path, result: dict) -> None:
    """``result`` and a timestamp as JSON at ``path``, written atomically (an interrupted run
    never leaves half a JSON behind); says where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(dict(result, timestamp=time.strftime("%Y-%m-%dT%H:%M:%S")), indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
