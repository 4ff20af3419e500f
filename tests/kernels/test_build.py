"""Native code must keep building: the CUDA kernel with nvcc (sm_80, sm_90), the C++ one with pip."""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from snncompiler.kernels import cpu, cuda
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


_CTYPES_OF_C = {"int": ctypes.c_int, "int64_t": ctypes.c_int64, "float": ctypes.c_float}


def _c_parameters(source: str, function: str) -> list[str]:
    """The C types of ``function``'s parameters as written in ``source``."""
    match = re.search(rf"\b{function}\(([^)]*)\)\s*{{", source)
    assert match, f"{function} not found"
    return [" ".join(p.split()[:-1]) for p in match.group(1).split(",")]


def test_cuda_launcher_declaration_matches_the_source_and_validates_by_position(tmp_path):
    """The CUDA library is called through ctypes, which cannot see C prototypes: a launcher and
    its argtypes that disagree would pass garbage on a GPU. Without one, build the library, load
    it as cuda.py does, check the declared argtypes against the prototype in the .cu, and call the
    launcher with N = 0 (no device work): valid arguments succeed, and each validated argument
    made invalid in its own position is refused."""
    nvcc = nvcc_path()
    if nvcc is None:
        pytest.skip("nvcc not found (set NVCC or put it on PATH): cannot compile csrc/lif_cuda.cu")
    lib_path = tmp_path / "lif_cuda.so"
    proc = subprocess.run([nvcc, "-O1", "-shared", "-Xcompiler", "-fPIC", "--fmad=false", "-gencode",
                           "arch=compute_80,code=sm_80", str(SOURCE), "-o", str(lib_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lib = cuda._open(str(lib_path))
    assert lib is not None, "the built library does not report cuda.ABI_VERSION"
    declared = lib.snnc_lif_forward.argtypes
    written = _c_parameters(SOURCE.read_text(), "snnc_lif_forward")
    assert len(declared) == len(written)
    for c_type, ct in zip(written, declared):
        assert ct is (ctypes.c_void_p if c_type.endswith("*") else _CTYPES_OF_C[c_type]), (c_type, ct)

    valid = dict(x=0, dtype=0, v0=0, v0_inner=1, v0_period=1, theta=0, inner=1, period=1, out=0, fmt=0, vout=0,
                 steps=4, N=0, decay=1.0, hard=0, v_reset=0.0, vec4_min_n=1 << 19, deep_max_n=1 << 17,
                 stream=None)
    assert len(valid) == len(written)
    assert lib.snnc_lif_forward(*valid.values()) == 0
    for name, bad in (("dtype", 3), ("fmt", -1), ("inner", 0), ("period", 0), ("v0_inner", 0), ("v0_period", 0)):
        code = lib.snnc_lif_forward(*dict(valid, **{name: bad}).values())
        assert code != 0 and lib.snnc_lif_error_string(code).decode() == "invalid argument", name


def test_stale_cuda_library_is_refused(tmp_path):
    """A library from an older source (no snnc_lif_abi_version, or another version) is not used."""
    nvcc = nvcc_path()
    if nvcc is None:
        pytest.skip("nvcc not found: cannot build a stand-in library")
    stale = tmp_path / "stale.cu"
    stale.write_text('extern "C" int snnc_lif_abi_version() { return 1; }\n')
    unversioned = tmp_path / "unversioned.cu"
    unversioned.write_text('extern "C" int snnc_lif_forward() { return 0; }\n')
    for src in (stale, unversioned):
        so = src.with_suffix(".so")
        proc = subprocess.run([nvcc, "-shared", "-Xcompiler", "-fPIC", str(src), "-o", str(so)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert cuda._open(str(so)) is None
