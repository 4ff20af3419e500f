"""Native code must keep building: the CUDA kernel with nvcc (sm_80, sm_90), the C++ one with pip."""
from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from snncompiler.kernels import cpu
from snncompiler.kernels.cuda import SOURCE, nvcc_path

ROOT = Path(__file__).resolve().parents[2]


def test_cuda_kernel_compiles_for_sm80_and_sm90(tmp_path):
    nvcc = nvcc_path()
    if nvcc is None:
        pytest.skip("nvcc not found (set NVCC or put it on PATH): cannot compile csrc/lif_cuda.cu")
    assert SOURCE == ROOT / "csrc" / "lif_cuda.cu" and SOURCE.is_file()
    cmd = [nvcc, "-O3", "--fmad=false", "-gencode", "arch=compute_80,code=sm_80",
           "-gencode", "arch=compute_90,code=sm_90", "-c", str(SOURCE), "-o", str(tmp_path / "lif_cuda.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "lif_cuda.o").stat().st_size > 0


def test_cuda_kernel_has_no_fused_multiply_add(tmp_path):
    """Bit-exactness with the oracle needs h = decay*v + x rounded twice: no fma in the PTX."""
    nvcc = nvcc_path()
    if nvcc is None:
        pytest.skip("nvcc not found (set NVCC or put it on PATH): cannot compile csrc/lif_cuda.cu")
    ptx = tmp_path / "lif_cuda.ptx"
    proc = subprocess.run([nvcc, "--fmad=false", "-arch=compute_80", "-ptx", str(SOURCE), "-o", str(ptx)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = ptx.read_text()
    assert "mul.rn.f32" in text and "fma.rn.f32" not in text


def test_cpu_extension_is_built_where_a_compiler_exists():
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the reference fallback is the expected configuration")
    assert cpu.available(), "snncompiler.kernels._lif_cpu is missing: run `make install` (pip install -e .)"
    assert cpu.load().has_openmp()


@pytest.mark.parametrize("flags", [["-fopenmp"], ["-fopenmp", "-DSNNC_SINGLE_ISA"], ["-fopenmp-simd", "-DSNNC_SINGLE_ISA"]],
                         ids=["all-isas", "single-isa", "single-isa-no-openmp"])
def test_cpu_extension_compiles_without_warnings(flags):
    """-Wall -Werror, as built here (baseline, AVX2 and AVX-512 copies) and as clang or a
    non-x86 GCC builds it (the baseline copy alone, via -DSNNC_SINGLE_ISA), with OpenMP and with
    setup.py's fallback where there is none (-fopenmp-simd: `omp parallel` ignored, `omp simd`
    kept; the compiler warns about the first, so unknown pragmas are allowed there): configurations this machine's install never compiles must not rot."""
    compiler = shutil.which("g++") or shutil.which("c++")
    pybind11 = pytest.importorskip("pybind11")
    if compiler is None:
        pytest.skip("no C++ compiler")
    includes = [f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}"]
    quiet = ["-Wno-unknown-pragmas"] if "-fopenmp" not in flags else []
    proc = subprocess.run([compiler, "-std=c++17", "-fsyntax-only", "-Wall", "-Werror", *quiet, *flags, *includes,
                           str(ROOT / "csrc" / "lif_cpu.cpp")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
