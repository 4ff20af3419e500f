"""Build script: the package itself is described in pyproject.toml.

The native kernels' sources live inside the package, in snncompiler/kernels/csrc/, and ship in
the wheel and sdist as package data (pyproject.toml), so that an installed wheel can still
compile the CUDA kernel on first use. They are added here as extensions once they exist, so that
a checkout without them (or without a compiler) still installs and falls back to the PyTorch
reference kernels.
"""

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

# ---- native kernels (snncompiler/kernels): optional, never a reason for install to fail ----
# -ffp-contract=off: the kernels must round exactly like the PyTorch oracle (no fused FMA).
# -fno-trapping-math: lets GCC if-convert (vectorise) the soft reset; values are unchanged.
_CPU_FLAGS = ["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fopenmp"]
# Relative to this file, as setuptools wants extension sources (sdist and wheel builds).
CSRC = "snncompiler/kernels/csrc"


def _nvcc_module():
    """snncompiler/kernels/nvcc.py, the one place the nvcc command line is written, loaded by file
    path: `import snncompiler.kernels...` would run snncompiler/__init__ and import torch, which
    pip's isolated build environment does not have (build requirements: setuptools, pybind11).
    That module uses the standard library only, and cuda.py and the tests import it too."""
    path = Path(__file__).resolve().parent / "snncompiler" / "kernels" / "nvcc.py"
    spec = importlib.util.spec_from_file_location("_snncompiler_nvcc", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class OptionalBuildExt(build_ext):
    """build_ext that retries without OpenMP, builds the .cu with nvcc, and warns instead of failing."""

    def build_extension(self, ext):
        try:
            if ext.name.endswith("_lif_cuda"):
                self._build_cuda(ext)
                return
            try:
                super().build_extension(ext)
            except Exception:
                if "-fopenmp" not in ext.extra_compile_args:
                    raise
                # e.g. Apple clang has no -fopenmp: a single-threaded kernel beats none. Its
                # `omp simd` loops still vectorise under -fopenmp-simd (no runtime needed).
                ext.extra_link_args = [f for f in ext.extra_link_args if f != "-fopenmp"]
                without = [f for f in ext.extra_compile_args if f != "-fopenmp"]
                try:
                    ext.extra_compile_args = without + ["-fopenmp-simd"]
                    super().build_extension(ext)
                except Exception:
                    ext.extra_compile_args = without
                    super().build_extension(ext)
        except Exception as exc:  # no compiler, no headers, ...: the PyTorch reference still works
            warnings.warn(
                f"snncompiler: skipping native extension {ext.name} ({exc}); "
                "the PyTorch reference kernels will be used instead",
                stacklevel=2,
            )

    def _build_cuda(self, ext):
        nvcc = _nvcc_module()
        target = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        # for INSTALL_ARCHS (sm_80, sm_90); raises (-> the warning below) when there is no nvcc
        subprocess.check_call(nvcc.nvcc_command(ext.sources, target))


def _extensions():
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        warnings.warn("snncompiler: pybind11 is not installed; building without the native CPU kernel", stacklevel=2)
        return []
    # lif_cpu_isa.inc holds the kernels; lif_cpu.cpp compiles it once per instruction set.
    # common.h: helpers both C++ extensions include.
    exts = [
        Pybind11Extension(
            "snncompiler.kernels._lif_cpu",
            [f"{CSRC}/lif_cpu.cpp"],
            cxx_std=17,
            depends=[f"{CSRC}/lif_cpu_isa.inc", f"{CSRC}/common.h"],
            extra_compile_args=[] if sys.platform == "win32" else list(_CPU_FLAGS),
            extra_link_args=[] if sys.platform == "win32" else ["-fopenmp"],
        ),
        # event-driven conv/linear (snncompiler/kernels/event.py): optional like the neuron kernel
        Pybind11Extension(
            "snncompiler.kernels._event_cpu",
            [f"{CSRC}/event_cpu.cpp"],
            cxx_std=17,
            depends=[f"{CSRC}/common.h"],
            extra_compile_args=[] if sys.platform == "win32" else list(_CPU_FLAGS),
            extra_link_args=[] if sys.platform == "win32" else ["-fopenmp"],
        ),
    ]
    if os.environ.get("SNNC_BUILD_CUDA") == "1":  # otherwise cuda.py compiles it on first use
        from setuptools import Extension

        exts.append(Extension("snncompiler.kernels._lif_cuda", [f"{CSRC}/lif_cuda.cu"]))
    return exts


ext_modules = _extensions()

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
