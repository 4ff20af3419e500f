"""The C++ CPU backend: loads the pybind11 extension built from csrc/lif_cpu.cpp.

The extension receives the addresses of contiguous buffers (``data_ptr()``: zero-copy, and no
torch headers on the C++ side); this module checks dtype/layout, allocates the outputs and
passes the sizes. Outputs of 1 MiB and more come from the extension's buffer cache (handed to
torch through DLPack), so that a large layer does not pay the OS for fresh pages on every call.
If the extension was not built (no compiler at install time), :func:`load` returns None and the
op falls back to the PyTorch reference with a one-time warning.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import warnings
from pathlib import Path

import torch

from .packing import output_buffers, time_steps

FORMATS = {"value": 0, "binary": 1, "packed": 2}
DEFAULT_CACHE_MB = 1024
CACHE_MIN_BYTES = 1 << 20  # below glibc's mmap threshold, malloc reuses freed memory by itself
_DLPACK_DTYPES = {torch.float32: (2, 32), torch.uint8: (1, 8), torch.bfloat16: (4, 16)}  # DLPack (code, bits)
DTYPES = (torch.float32, torch.bfloat16)  # what the kernel reads; value spikes come out in x's dtype
_dlpack_failed = False


@functools.cache
def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 7B13"), from /proc/cpuinfo where there is one:
    ``platform.processor()`` is often empty on Linux. Benchmarks, ``snnc env`` and the event
    cost model's cache key all name the machine with it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: What :func:`last_level_cache_bytes` assumes where the OS does not say (a common server L3 slice).
FALLBACK_CACHE_BYTES = 32 << 20


@functools.cache
def last_level_cache_bytes() -> int:
    """Size of the CPU's last-level cache (the largest of cpu0's data/unified caches in sysfs),
    or :data:`FALLBACK_CACHE_BYTES`; the spiking runtime sizes its chunks of steps by it."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            text = (index / "size").read_text().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            sizes.append(int(text.rstrip("KMG")) * scale)
        except (OSError, ValueError):
            continue
    return max(sizes) if sizes else FALLBACK_CACHE_BYTES


@functools.cache
def load():
    """The compiled ``snncompiler.kernels._lif_cpu`` module, or None if it is not built.
    The first call applies ``SNNC_CPU_ISA`` and ``SNNC_CPU_STREAM_MB`` (see :func:`set_isa`
    and :func:`set_stream_min_bytes`)."""
    try:
        from . import _lif_cpu
    except ImportError:
        return None
    _configure_from_env(_lif_cpu)
    return _lif_cpu


def _configure_from_env(lib) -> None:
    isa_name = os.environ.get("SNNC_CPU_ISA", "").strip().lower()
    if isa_name and isa_name != "auto":
        if isa_name in lib.supported_isas():
            lib.set_isa(isa_name)
        else:
            warnings.warn(
                f"SNNC_CPU_ISA={isa_name!r} is not one of this CPU's {lib.supported_isas()}; using {lib.isa()}",
                RuntimeWarning,
                stacklevel=3,
            )
    stream_mb = _env_mib("SNNC_CPU_STREAM_MB", lib.stream_min_bytes() / (1 << 20))
    if stream_mb is not None:
        lib.set_stream_min_bytes(int(stream_mb * (1 << 20)))


def _env_mib(name: str, fallback_mib: float) -> float | None:
    """The number of MiB (>= 0) in environment variable ``name``; None when it is unset, and
    ``fallback_mib`` with one warning when it is not such a number."""
    raw = os.environ.get(name)
    if raw is None:
        return None
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if mb >= 0 and math.isfinite(mb):
        return mb
    warnings.warn(f"{name}={raw!r} is not a number of MiB >= 0; using {fallback_mib:g}", RuntimeWarning, stacklevel=4)
    return fallback_mib


def isa() -> str | None:
    """The instruction set the C++ kernels run with ("baseline", "avx2" or "avx512"; None
    without the extension). The best one the CPU has, unless :func:`set_isa` chose another."""
    lib = load()
    return None if lib is None else lib.isa()


def supported_isas() -> list[str]:
    """The instruction sets this build has and this CPU runs, slowest first ("baseline" runs
    anywhere; AVX2/AVX-512 copies exist in GCC builds for x86-64). All give identical results."""
    lib = load()
    return [] if lib is None else list(lib.supported_isas())


def set_isa(name: str) -> str:
    """Run the C++ kernels with instruction set ``name`` (one of :func:`supported_isas`; the
    environment variable ``SNNC_CPU_ISA`` sets it at start-up). Returns the previous one."""
    lib = load()
    if lib is None:
        raise RuntimeError("the C++ CPU kernel is not built")
    if name not in lib.supported_isas():
        raise ValueError(f"isa: {name!r} is not one of this CPU's {lib.supported_isas()}")
    previous = lib.isa()
    lib.set_isa(name)
    return previous


def streamed_calls() -> int:
    """How many forward calls of the C++ kernel wrote their spikes with streaming stores so far."""
    lib = load()
    return 0 if lib is None else lib.streamed_calls()


def set_stream_min_bytes(n: int) -> int:
    """Write value-spike outputs of at least ``n`` bytes per call with non-temporal stores,
    which skip the read-for-ownership of each output line and bypass the caches (0: never).
    Default 8 MiB, or ``SNNC_CPU_STREAM_MB`` at start-up: large layers then run faster than a
    tensor copy. Only float32 rows that start on 64-byte lines stream (N % 16 == 0, as in
    nearly every conv/linear layer); :func:`streamed_calls` counts the calls that did.
    Returns the previous value; results are identical either way."""
    lib = load()
    if lib is None:
        raise RuntimeError("the C++ CPU kernel is not built")
    if n < 0:
        raise ValueError(f"stream_min_bytes: must be >= 0, got {n}")
    previous = lib.stream_min_bytes()
    lib.set_stream_min_bytes(int(n))
    return previous


def available() -> bool:
    """Whether the C++ kernel can run."""
    return load() is not None


def _addr(t: torch.Tensor | None, dtype=torch.float32) -> int:
    """Address of a contiguous CPU tensor of ``dtype`` (a dtype or a tuple of them) for the
    extension (0 for None)."""
    if t is None:
        return 0
    if t.dtype not in (dtype if isinstance(dtype, tuple) else (dtype,)) or not t.is_contiguous() or not t.is_cpu:
        raise ValueError(f"internal: C++ kernel needs contiguous {dtype} CPU buffers, got {t.dtype} {t.device}")
    return t.data_ptr()


def _cache_limit_bytes() -> int:
    mb = _env_mib("SNNC_CPU_CACHE_MB", DEFAULT_CACHE_MB)
    return int((DEFAULT_CACHE_MB if mb is None else mb) * (1 << 20))


def cached_empty(shape, dtype: torch.dtype) -> torch.Tensor | None:
    """An uninitialised C-contiguous CPU tensor from the output buffer cache, or None when the
    cache does not apply (fewer than ``CACHE_MIN_BYTES``, caching off, or no extension).

    Buffers of freed outputs are kept for the next output of the same size (up to
    ``SNNC_CPU_CACHE_MB``, default 1024 MiB), so large outputs skip the OS's page faults and
    zeroing of fresh memory on every call; see :func:`cache_stats` and :func:`empty_cache`."""
    global _dlpack_failed
    lib = load()
    code = _DLPACK_DTYPES.get(dtype)
    if (
        lib is None
        or code is None
        or _dlpack_failed
        or _limit() == 0
        or math.prod(shape) * code[1] < CACHE_MIN_BYTES * 8
    ):
        return None
    try:
        return torch.from_dlpack(lib.empty(shape, *code))
    except (TypeError, RuntimeError, BufferError) as e:  # a torch that no longer takes DLPack capsules
        # the unconsumed capsule frees its buffer; outputs are then allocated by torch as usual
        _dlpack_failed = True
        lib.cache_set_limit(0)
        warnings.warn(
            f"snncompiler: the CPU output buffer cache is off (torch.from_dlpack failed: {e})",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


@functools.cache
def _limit() -> int:
    limit = _cache_limit_bytes()
    load().cache_set_limit(limit)
    return limit


def cache_stats() -> dict:
    """The CPU output buffer cache: cached_bytes, cached_buffers, limit_bytes, hits, misses."""
    lib = load()
    if lib is None:
        return dict(cached_bytes=0, cached_buffers=0, limit_bytes=0, hits=0, misses=0)
    _limit()  # the limit SNNC_CPU_CACHE_MB sets, even before the first output
    return lib.cache_stats()


def empty_cache() -> None:
    """Free the buffers the CPU output cache keeps (tensors in use are not affected)."""
    lib = load()
    if lib is not None:
        lib.cache_release()


def forward(x, v0, theta, inner, decay, hard, v_reset, spike_format, v0_inner=1):
    """Run the fused forward. x: [T, ...] float32 or bfloat16 in any layout: an input repeated over time by
    a stride-0 time axis (``x0.unsqueeze(0).expand(T, ...)``, the runtime's first layer under
    direct encoding) is read at every step from one contiguous x0, never copied T times; any
    other x is made contiguous. theta: float32 with ``period`` elements (a vector or 0-d), neuron
    n using theta[(n // inner) % period]; v0 (float32, contiguous) the same way with ``v0_inner``,
    so a scalar or per-channel v0 is never expanded (a dense [N] one has v0_inner 1).
    Returns (spikes, v_final, number of spikes with theta != 0 as an int)."""
    T, n, steps, x_step = time_steps(x)
    # a time-broadcast x again, now over the contiguous step: outputs made like x are dense in C order
    x = steps.unsqueeze(0).expand(x.shape) if steps.dim() < x.dim() else steps
    # the cache is asked only when a buffer may reach its minimum size: asking costs more than
    # a small layer's kernel (spikes take at most T*n*4 bytes and v_final n*4)
    out, vout = output_buffers(x, v0, spike_format, cached_empty if (T + 1) * n * 4 >= CACHE_MIN_BYTES else None)
    assert (v0.numel() >= 1 or n == 0) and theta.numel() >= 1
    count = load().forward(
        _addr(steps, DTYPES),
        _addr(v0),
        _addr(theta),
        inner,
        theta.numel(),
        out.data_ptr(),
        vout.data_ptr(),
        T,
        n,
        decay,
        hard,
        v_reset,
        FORMATS[spike_format],
        torch.get_num_threads(),
        x_step,
        steps.dtype == torch.bfloat16,
        v0_inner,
        v0.numel(),
    )
    return out, vout, count


def population_forward(x, v0, theta, inner, population, decay, hard, v_reset):
    """The fused forward of ``population`` (B) neurons per unit, writing the units' outputs (see
    :func:`~snncompiler.kernels.op.population_multistep`). x: [T, ...] float32 in any layout (a
    time-broadcast input is read without copying, as in :func:`forward`); v0: float32, dense and
    contiguous [B, *x.shape[1:]]; theta as in :func:`forward`, per unit. Returns (the units'
    outputs [T, ...] float32, v_final [B, ...], the number of spikes with theta != 0 as an int)."""
    T, n, steps, x_step = time_steps(x)
    shape = tuple(x.shape)
    out = cached_empty(shape, torch.float32) if T * n * 4 >= CACHE_MIN_BYTES else None
    if out is None:
        out = torch.empty(shape, dtype=torch.float32)
    vout = torch.empty_like(v0)
    assert v0.numel() == population * n and theta.numel() >= 1
    count = load().population_forward(
        _addr(steps),
        _addr(v0),
        _addr(theta),
        inner,
        theta.numel(),
        out.data_ptr(),
        vout.data_ptr(),
        T,
        n,
        population,
        decay,
        hard,
        v_reset,
        torch.get_num_threads(),
        x_step,
    )
    return out, vout, count


def population_backward(
    grad_out,
    grad_v,
    x,
    v0,
    theta,
    inner,
    population,
    decay,
    hard,
    v_reset,
    surrogate_id,
    alpha,
    detach_reset,
    theta_grad,
):
    """Surrogate-gradient backward of :func:`population_forward` (recomputes the B membranes).
    grad_out: the gradient of every neuron's value spikes, [T, ...] float32 contiguous (the
    units' output gradient divided by B), or None; grad_v: [B, ...] float32 contiguous or None;
    x: [T, ...] float32 contiguous; v0: [B, ...] float32 dense. Returns (grad_x [T, ...],
    grad_v0 [B, N], grad_theta [N] or None), grad_x and grad_theta summed over the B neurons,
    before any broadcast reduction."""
    T, n = x.shape[0], math.prod(x.shape[1:])
    gx = torch.empty(x.shape, dtype=torch.float32)
    gv0 = torch.empty((population, n), dtype=torch.float32)
    gth = torch.empty(n, dtype=torch.float32) if theta_grad else None
    assert v0.numel() == population * n and x.is_contiguous() and x.dtype == torch.float32
    assert grad_out is None or (grad_out.shape == x.shape and grad_out.is_contiguous())
    assert grad_v is None or (grad_v.numel() == population * n and grad_v.is_contiguous())
    assert T > 0 and n > 0, "internal: the caller handles empty layers"
    load().backward_neurons(
        _addr(x),
        _addr(v0),
        _addr(theta),
        inner,
        theta.numel(),
        _addr(grad_out),
        _addr(grad_v),
        _addr(gx),
        _addr(gv0),
        _addr(gth),
        T,
        n,
        population,
        decay,
        hard,
        v_reset,
        surrogate_id,
        alpha,
        detach_reset,
        torch.get_num_threads(),
    )
    return gx, gv0, gth


def backward(
    grad_spikes,
    grad_v,
    x,
    v0,
    theta,
    inner,
    decay,
    hard,
    v_reset,
    surrogate_id,
    alpha,
    detach_reset,
    theta_grad,
    v0_inner=1,
):
    """Surrogate-gradient backward (recomputes the membrane). Returns (grad_x, grad_v0 [N],
    grad_theta [N] or None), the last two per neuron, before any broadcast reduction; grad_x is
    float32 (a bfloat16 x is widened first: the backward kernel reads float32 only)."""
    x = x.float()
    T, n = x.shape[0], math.prod(x.shape[1:])
    gx = cached_empty(x.shape, torch.float32)
    gx = torch.empty_like(x) if gx is None else gx
    gv0 = torch.empty(n, dtype=torch.float32)
    gth = torch.empty(n, dtype=torch.float32) if theta_grad else None
    assert v0.numel() >= 1 or n == 0
    assert grad_spikes is None or grad_spikes.shape == x.shape
    assert grad_v is None or grad_v.numel() == n
    load().backward_neurons(
        _addr(x),
        _addr(v0),
        _addr(theta),
        inner,
        theta.numel(),
        _addr(grad_spikes),
        _addr(grad_v),
        _addr(gx),
        _addr(gv0),
        _addr(gth),
        T,
        n,
        1,  # one neuron per unit
        decay,
        hard,
        v_reset,
        surrogate_id,
        alpha,
        detach_reset,
        torch.get_num_threads(),
        v0_inner,
        v0.numel(),
    )
    return gx, gv0, gth
