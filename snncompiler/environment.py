"""What this installation runs on: versions, kernel backends and their settings (``snnc env``).

Meant for bug reports and for checking that the fast kernels are in use: which neuron backends
can run, which instruction set the C++ kernel picked, whether OpenMP and the CUDA library are
there (and the CUDA source it is compiled from on first use, package data next to
kernels/cuda.py), and the ``SNNC_*`` variables that change behaviour. Collecting it never
compiles anything (the CUDA library is reported as found or not, not JIT-built).
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

import torch

_PACKAGES = ("snncompiler", "torch", "numpy", "onnx", "onnxruntime", "triton", "spikingjelly")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def collect() -> dict:
    """The environment as a JSON-ready dict: ``python``, ``platform``, ``packages`` (versions,
    None where not installed), ``cpu``, ``neuron_backends``, ``cpu_kernel``, ``cuda`` and
    ``env`` (the SNNC_* variables that are set)."""
    from .kernels import available_backends, cpu
    from .kernels import cuda as cuda_kernel

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "cpu": {"model": cpu.cpu_model(), "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "neuron_backends": available_backends(),
    }
    lib = cpu.load()
    info["cpu_kernel"] = (
        None
        if lib is None
        else {
            "openmp": lib.has_openmp(),
            "isa": lib.isa(),
            "supported_isas": list(lib.supported_isas()),
            "stream_min_bytes": lib.stream_min_bytes(),
            "output_cache": cpu.cache_stats(),
        }
    )
    cuda = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if cuda["available"]:
        cuda["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    cuda["library_built"] = cuda_kernel.built_library() is not None
    cuda["nvcc"] = cuda_kernel.nvcc_path()
    # what a first-use build compiles: shipped in the wheel, so None means a broken install
    cuda["source"] = str(cuda_kernel.SOURCE) if cuda_kernel.SOURCE.is_file() else None
    info["cuda"] = cuda
    info["env"] = {k: v for k, v in sorted(os.environ.items()) if k.startswith("SNNC_")}
    return info


def format_text(info: dict) -> str:
    """:func:`collect`'s dict as aligned ``key: value`` lines."""
    lines = [f"python: {info['python']} ({info['platform']})"]
    lines += [f"{name}: {version or 'not installed'}" for name, version in info["packages"].items()]
    c = info["cpu"]
    lines.append(f"cpu: {c['model']}, {c['logical_cores']} logical cores, torch threads {c['torch_threads']}")
    lines.append(f"neuron backends: {', '.join(info['neuron_backends'])}")
    k = info["cpu_kernel"]
    if k is None:
        lines.append("C++ kernel: not built (the reference runs instead; reinstall with a C++ compiler)")
    else:
        stream = (
            f"streaming stores from {k['stream_min_bytes'] / (1 << 20):g} MiB"
            if k["stream_min_bytes"]
            else "streaming stores off"
        )
        lines.append(
            f"C++ kernel: {k['isa']} (supported: {', '.join(k['supported_isas'])}), "
            f"OpenMP {'yes' if k['openmp'] else 'no'}, {stream}"
        )
        cache = k["output_cache"]
        lines.append(
            f"C++ output cache: {cache['cached_bytes'] / (1 << 20):g} MiB kept, "
            f"limit {cache['limit_bytes'] / (1 << 20):g} MiB"
        )
    g = info["cuda"]
    gpus = ", ".join(g.get("devices", [])) or "no GPU"
    lines.append(
        f"cuda: {gpus} (torch CUDA {g['torch_cuda'] or 'none'}); CUDA kernel library "
        f"{'built' if g['library_built'] else 'not built'}, nvcc {g['nvcc'] or 'not found'}"
    )
    lines.append(
        f"CUDA source: present ({g['source']})"
        if g["source"]
        else "CUDA source: missing (lif_cuda.cu is not installed with the package: reinstall)"
    )
    lines.append("SNNC_* variables: " + (", ".join(f"{k}={v}" for k, v in info["env"].items()) or "none set"))
    return "\n".join(lines)
