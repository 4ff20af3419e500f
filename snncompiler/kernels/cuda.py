"""The CUDA backend (forward only): csrc/lif_cuda.cu (next to this file, shipped in the wheel)
loaded as a shared library via ctypes.

Where the library comes from, in order:

1. built at install time with ``SNNC_BUILD_CUDA=1 pip install ...`` (setup.py runs nvcc and
   places ``snncompiler/kernels/_lif_cuda*.so`` next to this file);
2. otherwise compiled here on first use with nvcc for the current GPU's architecture, cached
   in ``$SNNC_CACHE_DIR`` (default ``~/.cache/snncompiler``) under a hash of the source.

Both, and the compile checks in tests, use the one command line of :func:`nvcc.nvcc_command`.

The .cu has a plain C launcher and no torch headers, so neither path needs torch's C++ API;
``snnc_lif_abi_version`` guards against loading a stale library whose launcher takes other
arguments.
Backward for CUDA tensors runs on the Triton kernel. CI only compiles the .cu (tests/kernels
check `nvcc -c` for sm_80/sm_90); its parity tests run wherever a GPU is present
(benchmarks/gpu_session.sh; last run on an H200).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import hashlib
import math
import os
import subprocess
import warnings
from pathlib import Path

import torch

from .nvcc import nvcc_command, nvcc_path
from .packing import output_buffers

FORMATS = {"value": 0, "binary": 1, "packed": 2}
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
# Layers of at least this many neurons (float32, value or binary spikes, N % 4 == 0) run the
# kernel that moves four neurons per thread in 16-byte accesses; smaller ones one neuron per
# thread, which keeps enough threads in flight (measured on an H200, benchmarks/kernels.py).
# Module-level so that tests can send small layers down the vector path.
VEC4_MIN_N = 1 << 19
# Small layers run the one-neuron-per-thread kernel with 16 time steps' loads in flight per
# thread instead of 8: with few threads, 8 do not cover the memory latency (H200, T=128,
# N=2^16: 0.68x copy with 8). Only while the launch fits in one wave at the deeper kernel's
# occupancy (<= 128 registers: 2 blocks of 256 threads per SM), see deep_unroll_max_n.
# benchmarks/kernels.py times both on a GPU; False turns it off.
DEEP_UNROLL = True
_DEEP_BLOCKS_PER_SM, _THREADS = 2, 256
SOURCE = Path(__file__).parent / "csrc" / "lif_cuda.cu"  # package data: an installed wheel has it
ABI_VERSION = 2  # snnc_lif_abi_version() of a library whose snnc_lif_forward matches load()'s argtypes
# the current stream as a raw handle, without building a torch.cuda.Stream object (microseconds,
# more than a small layer's kernel); triton launches through the same call
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _jit_compile() -> str | None:
    nvcc = nvcc_path()
    if nvcc is None or not SOURCE.is_file():
        return None
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}"
    digest = hashlib.sha256(SOURCE.read_bytes() + arch.encode()).hexdigest()[:16]
    cache = Path(os.environ.get("SNNC_CACHE_DIR", Path.home() / ".cache" / "snncompiler"))
    target = cache / f"lif_cuda_{digest}.so"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        cmd = nvcc_command(SOURCE, tmp, archs=[arch], embed_ptx=True, nvcc=nvcc)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            warnings.warn(
                f"snncompiler: nvcc failed to build the CUDA neuron kernel:\n{proc.stderr[-2000:]}", stacklevel=2
            )
            return None
        os.replace(tmp, target)  # atomic: concurrent processes never load a half-written file
    return str(target)


def built_library() -> str | None:
    """The library built at install time (``SNNC_BUILD_CUDA=1``) next to this file, or None."""
    built = sorted(glob.glob(str(Path(__file__).with_name("_lif_cuda")) + "*.so"))
    return built[0] if built else None


@functools.cache
def load():
    """The ctypes handle of the CUDA kernel library, or None (no GPU, no library, no nvcc)."""
    if not torch.cuda.is_available():
        return None
    lib = None
    built = built_library()
    if built is not None:
        lib = _open(built)
        if lib is None:
            warnings.warn(
                f"snncompiler: {built} was built from an older lif_cuda.cu; compiling the "
                "current one with nvcc instead (reinstall with SNNC_BUILD_CUDA=1 to update it)",
                stacklevel=2,
            )
    if lib is None:
        path = _jit_compile()
        lib = None if path is None else _open(path)
    return lib


def _open(path: str):
    """Load the library at ``path`` and declare its launcher, or None if its ABI is not ABI_VERSION."""
    lib = ctypes.CDLL(path)
    version = getattr(lib, "snnc_lif_abi_version", None)
    if version is None:
        return None
    version.restype = ctypes.c_int
    if version() != ABI_VERSION:
        return None
    i64, f32, vp, i32 = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p, ctypes.c_int
    lib.snnc_lif_forward.argtypes = [
        vp,
        i32,
        vp,
        i64,
        i64,
        vp,
        i64,
        i64,
        vp,
        i32,
        vp,
        i64,
        i64,
        f32,
        i32,
        f32,
        i64,
        i64,
        vp,
    ]
    lib.snnc_lif_forward.restype = i32
    lib.snnc_lif_error_string.argtypes = [i32]
    lib.snnc_lif_error_string.restype = ctypes.c_char_p
    return lib


def available() -> bool:
    """Whether the CUDA kernel can run (compiling it with nvcc on first call if needed)."""
    return load() is not None


@functools.cache
def deep_unroll_max_n(index: int) -> int:
    """Layers of at most this many neurons on GPU ``index`` run the deeper-unrolled kernel
    (0 with DEEP_UNROLL off): as many as run in one wave of the deeper kernel there."""
    if not DEEP_UNROLL:
        return 0
    return _DEEP_BLOCKS_PER_SM * _THREADS * torch.cuda.get_device_properties(index).multi_processor_count


def current_stream(device: torch.device) -> int:
    """The raw cudaStream_t (as an int) that torch runs on for ``device`` now."""
    if _raw_stream is not None:
        return _raw_stream(device.index)
    return torch.cuda.current_stream(device).cuda_stream


def forward(x, v0, theta, inner, decay, hard, v_reset, spike_format, v0_inner=1):
    """Fused forward on CUDA tensors; same arguments and results as cpu.forward/triton_kernel.forward
    (x contiguous; theta and v0 float32 vectors read as neuron n -> [(n // inner) % numel])."""
    T, n = x.shape[0], math.prod(x.shape[1:])
    out, vout = output_buffers(x, v0, spike_format)
    lib = load()
    device = x.device
    # switching the current device costs more than a small layer's kernel: only when needed
    switch = torch.cuda.device(device) if device.index != torch.cuda.current_device() else contextlib.nullcontext()
    with switch:
        err = lib.snnc_lif_forward(
            x.data_ptr(),
            DTYPES[x.dtype],
            v0.data_ptr(),
            v0_inner,
            v0.numel(),
            theta.data_ptr(),
            inner,
            theta.numel(),
            out.data_ptr(),
            FORMATS[spike_format],
            vout.data_ptr(),
            T,
            n,
            decay,
            int(bool(hard)),
            v_reset,
            VEC4_MIN_N,
            deep_unroll_max_n(device.index),
            current_stream(device),
        )
    if err != 0:
        raise RuntimeError(f"snncompiler CUDA neuron kernel failed: {lib.snnc_lif_error_string(err).decode()}")
    return out, vout
