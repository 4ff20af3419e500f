"""Native code must keep building: the CUDA kernel with nvcc (sm_80, sm_90), the C++ one with pip."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from snncompiler.kernels import cpu, cuda
from snncompiler.kernels.cuda import SOURCE, nvcc_path
from snncompiler.kernels.nvcc import nvcc_command

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "snncompiler" / "kernels" / "csrc"


def test_cuda_kernel_compiles_for_sm80_and_sm90(tmp_path):
    nvcc = nvcc_path()
    if nvcc is None:
        pytest.skip("nvcc not found (set NVCC or put it on PATH): cannot compile csrc/lif_cuda.cu")
    assert SOURCE == CSRC / "lif_cuda.cu" and SOURCE.is_file()
    # setup.py's command for INSTALL_ARCHS (sm_80, sm_90), compiling to an object only
    proc = subprocess.run(
        nvcc_command(SOURCE, tmp_path / "lif_cuda.o", kind="object", nvcc=nvcc), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "lif_cuda.o").stat().st_size > 0


def test_cuda_kernel_has_no_fused_multiply_add(tmp_path):
    """Bit-exactness with the oracle needs h = decay*v + x rounded twice: no fma in the PTX."""
    nvcc = nvcc_path()
    if nvcc is None:
        pytest.skip("nvcc not found (set NVCC or put it on PATH): cannot compile csrc/lif_cuda.cu")
    ptx = tmp_path / "lif_cuda.ptx"
    proc = subprocess.run(
        nvcc_command(SOURCE, ptx, archs=["80"], kind="ptx", nvcc=nvcc), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    text = ptx.read_text()
    assert "mul.rn.f32" in text and "fma.rn.f32" not in text


def test_cpu_extension_is_built_where_a_compiler_exists():
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the reference fallback is the expected configuration")
    assert cpu.available(), "snncompiler.kernels._lif_cpu is missing: run `make install` (pip install -e .)"
    assert cpu.load().has_openmp()


@pytest.mark.parametrize(
    "flags",
    [["-fopenmp"], ["-fopenmp", "-DSNNC_SINGLE_ISA"], ["-fopenmp-simd", "-DSNNC_SINGLE_ISA"]],
    ids=["all-isas", "single-isa", "single-isa-no-openmp"],
)
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
    proc = subprocess.run(
        [
            compiler,
            "-std=c++17",
            "-fsyntax-only",
            "-Wall",
            "-Werror",
            *quiet,
            *flags,
            *includes,
            str(CSRC / "lif_cpu.cpp"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_event_extension_compiles_without_warnings():
    """The event-driven kernel too (it shares common.h with lif_cpu.cpp), with and without OpenMP."""
    compiler = shutil.which("g++") or shutil.which("c++")
    pybind11 = pytest.importorskip("pybind11")
    if compiler is None:
        pytest.skip("no C++ compiler")
    includes = [f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}"]
    for flags in (["-fopenmp"], ["-Wno-unknown-pragmas"]):
        proc = subprocess.run(
            [
                compiler,
                "-std=c++17",
                "-fsyntax-only",
                "-Wall",
                "-Werror",
                *flags,
                *includes,
                str(CSRC / "event_cpu.cpp"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, (flags, proc.stderr[-3000:])


def test_nvcc_command_line_is_written_once():
    """kernels/nvcc.py is the only place the nvcc flags are spelled out: cuda.py's first-use build,
    setup.py's install-time build and these tests all call nvcc_command, so the flags that keep
    the kernel bit-exact (--fmad=false) cannot differ between them."""
    spelled = [
        p.relative_to(ROOT).as_posix()
        for p in [
            ROOT / "setup.py",
            *ROOT.glob("snncompiler/**/*.py"),
            *ROOT.glob("tests/**/*.py"),
            *ROOT.glob("benchmarks/**/*.py"),
        ]
        if p.name != "test_build.py" and ("--fmad" in p.read_text() or "-gencode" in p.read_text())
    ]
    assert spelled == ["snncompiler/kernels/nvcc.py"], spelled
    assert "nvcc_command(" in (ROOT / "setup.py").read_text()
    shared = nvcc_command(SOURCE, "k.so", nvcc="nvcc")
    assert shared[:3] == ["nvcc", "-O3", "--fmad=false"] and "-shared" in shared
    assert "-gencode=arch=compute_80,code=sm_80" in shared and "-gencode=arch=compute_90,code=sm_90" in shared
    assert shared[-3:] == [str(SOURCE), "-o", "k.so"]
    jit = nvcc_command(SOURCE, "k.so", archs=["86"], embed_ptx=True, nvcc="nvcc")
    assert "-gencode=arch=compute_86,code=[sm_86,compute_86]" in jit and "--fmad=false" in jit
    assert nvcc_command(SOURCE, "k.ptx", archs=["80"], kind="ptx", nvcc="nvcc")[3:5] == ["-ptx", "-arch=compute_80"]
    with pytest.raises(ValueError):
        nvcc_command(SOURCE, "k.ptx", kind="ptx", nvcc="nvcc")  # two archs, one file


def test_setup_py_loads_the_nvcc_command_without_the_package():
    """setup.py runs where torch may be missing (pip's isolated build): it loads kernels/nvcc.py
    by path, and that module imports nothing from the package (nor torch)."""
    code = (
        "import runpy, sys; sys.argv = ['setup.py', '--version']; "
        "g = runpy.run_path('setup.py'); m = g['_nvcc_module'](); "
        "assert 'torch' not in sys.modules and 'snncompiler' not in sys.modules, sorted(sys.modules); "
        "print(m.nvcc_command(['a.cu'], 'a.so', nvcc='nvcc'))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--fmad=false" in proc.stdout


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
    proc = subprocess.run(nvcc_command(SOURCE, lib_path, archs=["80"], nvcc=nvcc), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lib = cuda._open(str(lib_path))
    assert lib is not None, "the built library does not report cuda.ABI_VERSION"
    declared = lib.snnc_lif_forward.argtypes
    written = _c_parameters(SOURCE.read_text(), "snnc_lif_forward")
    assert len(declared) == len(written)
    for c_type, ct in zip(written, declared):
        assert ct is (ctypes.c_void_p if c_type.endswith("*") else _CTYPES_OF_C[c_type]), (c_type, ct)

    valid = dict(
        x=0,
        dtype=0,
        v0=0,
        v0_inner=1,
        v0_period=1,
        theta=0,
        inner=1,
        period=1,
        out=0,
        fmt=0,
        vout=0,
        steps=4,
        N=0,
        decay=1.0,
        hard=0,
        v_reset=0.0,
        vec4_min_n=1 << 19,
        deep_max_n=1 << 17,
        stream=None,
    )
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
        proc = subprocess.run(nvcc_command(src, so, archs=["80"], nvcc=nvcc), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert cuda._open(str(so)) is None
