"""The wheel and the sdist are self-contained: built from the package alone and installed into a
fresh venv, each loads the C++ kernel, carries the CUDA source that cuda.py compiles on first use
(issue #16: the native sources used to live outside the package, so an installed wheel had no
.cu), and compiles and evaluates a model with the installed `snnc` (issue #20).

Each is built from a temporary copy holding only the packaging files and snncompiler/
(no .so, no caches), so that nothing else in the checkout can be what makes it work, and so
that the build leaves no build/ or *.egg-info behind in the checkout. It is installed with pip,
offline and without dependencies, into a venv that sees this interpreter's installed packages
(torch, onnx, ...) through a .pth file, and run from a directory outside the checkout.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Everything the wheel is built from, besides snncompiler/ itself (pyproject.toml names the
# readme; setuptools picks up LICENSE as the license file).
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "LICENSE")


def _run(cmd, **kwargs):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _parent_site_dirs() -> list[str]:
    """Where this interpreter's packages are installed, for the test venv's .pth file. Each is
    added as a plain path: .pth files inside it (e.g. the editable install of this checkout)
    are not processed, so the test venv imports snncompiler from the wheel only."""
    dirs = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def _build_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "SNNC_BUILD_CUDA")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def _package(kind: str, tmp_path: Path, env: dict) -> Path:
    """Build the wheel, or the sdist, from a copy of the build inputs; return its path."""
    src = tmp_path / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "snncompiler",
        src / "snncompiler",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.pyd", "*.egg-info"),
    )
    dist = tmp_path / "dist"
    if kind == "wheel":
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                ".",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                "-q",
                "-w",
                dist,
            ],
            cwd=src,
            env=env,
        )
        (built,) = dist.glob("snncompiler-*.whl")
    else:
        _run([sys.executable, "setup.py", "-q", "sdist", "-d", dist], cwd=src, env=env)
        (built,) = dist.glob("snncompiler-*.tar.gz")
    return built


def _venv_with(built: Path, tmp_path: Path, env: dict) -> tuple[Path, Path, Path]:
    """A fresh venv that sees this interpreter's dependencies, with ``built`` installed by pip
    (an sdist is built there, so everything the build needs must be in it): (python, bin, purelib)."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], env=env)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env).strip())
    (purelib / "_snnc_test_parent_site.pth").write_text("\n".join(_parent_site_dirs()) + "\n")
    # this interpreter's pip, running in the venv (importable through the .pth), installs into the
    # venv; --ignore-installed: never look at (or uninstall) the checkout's own install
    _run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--ignore-installed",
            "-q",
            built,
        ],
        env=env,
    )
    return python, bindir, purelib


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_package_installs_and_runs_outside_the_checkout(kind, tmp_path):
    """The wheel and the sdist, each installed into a clean venv offline: `snnc env` finds the C++
    kernel and the CUDA source inside the installed package, and a compile and an eval run."""
    # --no-build-isolation: the build requirements must be installed here (looked up, not
    # imported: importing setuptools after torch trips its distutils shim)
    missing = [m for m in ("pip", "setuptools", "pybind11") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"cannot build the {kind} offline without {', '.join(missing)}")
    has_compiler = any(shutil.which(c) for c in ("c++", "g++", "clang++"))
    env = _build_env()
    built = _package(kind, tmp_path, env)
    if kind == "sdist":  # the sources a build from the sdist needs, CUDA's included
        names = set(
            _run(
                [
                    sys.executable,
                    "-c",
                    "import sys, tarfile; print('\\n'.join(tarfile.open(sys.argv[1]).getnames()))",
                    built,
                ],
                env=env,
            ).split()
        )
        for source in ("lif_cpu.cpp", "lif_cpu_isa.inc", "lif_cuda.cu", "event_cpu.cpp", "common.h"):
            assert any(n.endswith(f"snncompiler/kernels/csrc/{source}") for n in names), f"sdist lacks {source}"
    python, bindir, purelib = _venv_with(built, tmp_path, env)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    snnc = bindir / ("snnc.exe" if os.name == "nt" else "snnc")
    assert snnc.is_file(), f"the {kind}'s console script was not installed"
    text = _run([snnc, "env"], cwd=outside, env=env)
    lines = text.splitlines()
    installed = purelib / "snncompiler" / "kernels" / "csrc" / "lif_cuda.cu"
    assert f"CUDA source: present ({installed})" in lines, text
    if has_compiler:
        kernel = next(line for line in lines if line.startswith("C++ kernel: "))
        assert "not built" not in kernel, text

    info = json.loads(_run([python, "-m", "snncompiler.cli", "env", "--json"], cwd=outside, env=env))
    assert info["cuda"]["source"] == str(installed)
    probe = (
        "import snncompiler, snncompiler.kernels.event as e; print(snncompiler.__file__); print(e.load() is not None)"
    )
    where, event_built = _run([python, "-c", probe], cwd=outside, env=env).split()
    assert Path(where).parent == purelib / "snncompiler", where  # the installed package, not the checkout
    if has_compiler:
        assert info["cpu_kernel"] is not None and "cpu" in info["neuron_backends"], info
        assert event_built == "True", f"the {kind} has no event-driven kernel (_event_cpu)"

    # one compile and one eval with the installed command, on a tiny model the installed package exports
    make = (
        "import numpy as np, torch\n"
        "from snncompiler.formats.onnx.from_torch import export_onnx\n"
        "from snncompiler.data import save_npz\n"
        "torch.manual_seed(0)\n"
        "net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))\n"
        "x = np.random.default_rng(0).random((40, 1, 4, 4), dtype=np.float32)\n"
        "y = net(torch.from_numpy(x)).argmax(1).numpy()\n"
        "export_onnx(net, (1, 4, 4), 'm.onnx'); save_npz('d.npz', x, y)\n"
    )
    _run([python, "-c", make], cwd=outside, env=env)
    _run([snnc, "compile", "m.onnx", "--calib", "d.npz", "-o", "m.snn.onnx", "--timesteps", "16"], cwd=outside, env=env)
    result = json.loads(
        _run([snnc, "eval", "m.snn.onnx", "--data", "d.npz", "--timesteps", "16", "--json"], cwd=outside, env=env)
    )
    assert result["samples"] == 40 and 0.0 <= result["snn_accuracy"]["16"] <= 1.0, result
