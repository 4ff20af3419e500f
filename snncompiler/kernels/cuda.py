"""The CUDA backend (forward only): csrc/lif_cuda.cu loaded as a shared library via ctypes.

Where the library comes from, in order:

1. built at install time with ``SNNC_BUILD_CUDA=1 pip install ...`` (setup.py runs nvcc and
   places ``snncompiler/kernels/_lif_cuda*.so`` next to this file);
2. otherwise compiled here on first use with nvcc for the current GPU's architecture, cached
   in ``$SNNC_CACHE_DIR`` (default ``~/.cache/snncompiler``) under a hash of the source.

The .cu has a plain C launcher and no torch headers, so neither path needs torch's C++ API.
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
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import torch

from .packing import output_buffers

FORMATS = {"value": 0, "binary": 1, "packed": 2}
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
# Layers of at least this many neurons (float32, value or binary spikes, N % 4 == 0) run the
# kernel that moves four neurons per thread in 16-byte accesses; smaller ones one neuron per
# thread, which keeps enough threads in flight (measured on an H200, benchmarks/kernels.py).
# Module-level so that tests can send small layers down the vector path.
VEC4_MIN_N = 1 << 19
SOURCE = Path(__file__).resolve().parents[2] / "csrc" / "lif_cuda.cu"


def nvcc_path() -> str | None:
    """The nvcc to use: $NVCC, then PATH, then /usr/local/cuda/bin/nvcc; None if none exists."""
    for cand in (os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


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
        cmd = [nvcc, "-O3", "-shared", "-Xcompiler", "-fPIC", "--fmad=false",
               f"-gencode=arch=compute_{arch},code=[sm_{arch},compute_{arch}]", str(SOURCE), "-o", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            warnings.warn(f"snncompiler: nvcc failed to build the CUDA neuron kernel:\n{proc.stderr[-2000:]}")
            return None
        os.replace(tmp, target)  # atomic: concurrent processes never load a half-written file
    return str(target)


def built_library() -> str | None:
    """The library built at install time (``SNNC_BUILD_CUDA=1``) next to this file, or None."""
    built = sorted(glob.glob(str(Path(__file__).with_name("_lif_cuda")) + "*.so"))
    return built[0] if built else None


@functools.lru_cache(maxsize=None)
def load():
    """The ctypes handle of the CUDA kernel library, or None (no GPU, no library, no nvcc)."""
    if not torch.cuda.is_available():
        return None
    path = built_library() or _jit_compile()
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    i64, f32, vp = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    lib.snnc_lif_forward.argtypes = [vp, ctypes.c_int, vp, vp, i64, i64, vp, ctypes.c_int, vp, i64, i64, f32,
                                     ctypes.c_int, f32, i64, vp]
    lib.snnc_lif_forward.restype = ctypes.c_int
    lib.snnc_lif_error_string.argtypes = [ctypes.c_int]
    lib.snnc_lif_error_string.restype = ctypes.c_char_p
    return lib


def available() -> bool:
    """Whether the CUDA kernel can run (compiling it with nvcc on first call if needed)."""
    return load() is not None


def forward(x, v0, theta, inner, decay, hard, v_reset, spike_format):
    """Fused forward on CUDA tensors; same arguments and results as cpu.forward/triton_kernel.forward."""
    T, n = x.shape[0], v0.numel()
    out, vout = output_buffers(x, v0, spike_format)
    lib = load()
    # switching the current device costs more than a small layer's kernel: only when needed
    switch = torch.cuda.device(x.device) if x.device.index != torch.cuda.current_device() else contextlib.nullcontext()
    with switch:
        stream = torch.cuda.current_stream(x.device).cuda_stream
        err = lib.snnc_lif_forward(x.data_ptr(), DTYPES[x.dtype], v0.data_ptr(), theta.data_ptr(), inner,
                                   theta.numel(), out.data_ptr(), FORMATS[spike_format], vout.data_ptr(), T, n,
                                   decay, int(bool(hard)), v_reset, VEC4_MIN_N, stream)
    if err != 0:
        raise RuntimeError(f"snncompiler CUDA neuron kernel failed: {lib.snnc_lif_error_string(err).decode()}")
    return out, vout
