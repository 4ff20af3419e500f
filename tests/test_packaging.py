"""The wheel is self-contained: built from the package alone and installed into a fresh venv, it
loads the C++ kernel and carries the CUDA source that cuda.py compiles on first use (issue #16:
the native sources used to live outside the package, so an installed wheel had no .cu).

The wheel is built from a temporary copy holding only the packaging files and snncompiler/
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


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    # --no-build-isolation: the build requirements must be installed here (looked up, not
    # imported: importing setuptools after torch trips its distutils shim)
    missing = [m for m in ("pip", "setuptools", "pybind11") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"cannot build the wheel offline without {', '.join(missing)}")
    has_compiler = any(shutil.which(c) for c in ("c++", "g++", "clang++"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "SNNC_BUILD_CUDA")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")

    src = tmp_path / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "snncompiler", src / "snncompiler",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.pyd", "*.egg-info"))

    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", dist], cwd=src, env=env)
    (wheel,) = dist.glob("snncompiler-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], env=env)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env).strip())
    (purelib / "_snnc_test_parent_site.pth").write_text("\n".join(_parent_site_dirs()) + "\n")
    # this interpreter's pip, running in the venv (importable through the .pth), installs into the
    # venv; --ignore-installed: never look at (or uninstall) the checkout's own install
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", wheel], env=env)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    snnc = bindir / ("snnc.exe" if os.name == "nt" else "snnc")
    assert snnc.is_file(), "the wheel's console script was not installed"
    text = _run([snnc, "env"], cwd=outside, env=env)
    lines = text.splitlines()
    installed = purelib / "snncompiler" / "kernels" / "csrc" / "lif_cuda.cu"
    assert f"CUDA source: present ({installed})" in lines, text
    if has_compiler:
        kernel = next(line for line in lines if line.startswith("C++ kernel: "))
        assert "not built" not in kernel, text

    info = json.loads(_run([python, "-m", "snncompiler.cli", "env", "--json"], cwd=outside, env=env))
    assert info["cuda"]["source"] == str(installed)
    probe = ("import snncompiler, snncompiler.kernels.event as e; "
             "print(snncompiler.__file__); print(e.load() is not None)")
    where, event_built = _run([python, "-c", probe], cwd=outside, env=env).split()
    assert Path(where).parent == purelib / "snncompiler", where  # the wheel, not the checkout
    if has_compiler:
        assert info["cpu_kernel"] is not None and "cpu" in info["neuron_backends"], info
        assert event_built == "True", "the wheel has no event-driven kernel (_event_cpu)"
