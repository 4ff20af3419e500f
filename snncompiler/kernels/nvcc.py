"""The one nvcc command line for the CUDA neuron kernel (csrc/lif_cuda.cu).

Every compilation of the .cu goes through :func:`nvcc_command`: the JIT build on first use
(kernels/cuda.py), the install-time build (setup.py with ``SNNC_BUILD_CUDA=1``) and the compile
checks in tests/kernels/test_build.py. The flags that matter for correctness (``--fmad=false``:
``h = decay * v + x`` rounded twice, as the PyTorch oracle does) therefore cannot drift apart.

Why a module of its own: setup.py needs this command at build time, where importing
``snncompiler.kernels.cuda`` would run ``snncompiler/__init__`` and import torch, which pip's
isolated build environment does not have (pyproject.toml's build requirements are setuptools
and pybind11 only). This module uses the standard library alone and imports nothing from the
package, so setup.py loads it by file path; cuda.py imports it (and re-exports its names) as
usual.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

# What setup.py builds for at install time (A100 / H100-class GPUs); the JIT build instead
# targets the current GPU's architecture.
INSTALL_ARCHS = ("80", "90")
# Always: no fused multiply-add (bit-exactness with the oracle), optimised host code.
_COMMON = ("-O3", "--fmad=false")
_OUTPUTS = {
    "shared": ("-shared", "-Xcompiler", "-fPIC"),  # the library cuda.py loads with ctypes
    "object": ("-c",),  # compile only (CI's check that the source builds)
    "ptx": ("-ptx",),  # device assembly, to inspect the instructions
}


def nvcc_path() -> str | None:
    """The nvcc to use: $NVCC, then PATH, then /usr/local/cuda/bin/nvcc; None if none exists."""
    for cand in (os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def nvcc_command(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    archs: Sequence[str] = INSTALL_ARCHS,
    kind: str = "shared",
    embed_ptx: bool = False,
    nvcc: str | None = None,
) -> list[str]:
    """The argv that compiles ``sources`` into ``output``.

    ``archs``: compute capabilities as digits ("80", "90"), one ``-gencode`` each, SASS only;
    ``embed_ptx`` adds each one's PTX too, so that a newer GPU can JIT it (the first-use build).
    ``kind``: "shared" (a library for ctypes), "object" (``-c``) or "ptx" (``-ptx``, one arch,
    virtual). ``nvcc``: the compiler, default :func:`nvcc_path` (ValueError if there is none).
    """
    nvcc = nvcc or nvcc_path()
    if nvcc is None:
        raise ValueError("nvcc not found (set NVCC or put it on PATH)")
    if kind not in _OUTPUTS:
        raise ValueError(f"kind must be one of {sorted(_OUTPUTS)}, not {kind!r}")
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    archs = [str(a) for a in archs]
    if not archs:
        raise ValueError("at least one architecture is needed")
    if kind == "ptx":
        if len(archs) != 1:
            raise ValueError("kind='ptx' writes one file: give exactly one architecture")
        targets = [f"-arch=compute_{archs[0]}"]
    else:
        codes = "[sm_{0},compute_{0}]" if embed_ptx else "sm_{0}"
        targets = [f"-gencode=arch=compute_{a},code={codes.format(a)}" for a in archs]
    return [nvcc, *_COMMON, *_OUTPUTS[kind], *targets, *map(str, sources), "-o", str(Path(output))]
