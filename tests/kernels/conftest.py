"""Kernel tests: run the Triton kernels through the interpreter when there is no GPU.

TRITON_INTERPRET must be set before snncompiler.kernels.triton_kernel is imported (the
@triton.jit decorator reads it), which happens lazily on the first Triton call.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from snncompiler.kernels import available_backends


def kernel_backends() -> list[str]:
    """The non-reference backends that can run here (each is compared to the reference)."""
    return [b for b in available_backends() if b != "reference"]


def device_for(backend: str) -> str:
    """Where a backend's inputs live: the C++ kernel on CPU, Triton on the GPU when there is one."""
    return "cuda" if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()) else "cpu"


def pytest_report_header(config):
    return f"snncompiler kernel backends: {available_backends()}"


@pytest.fixture(params=kernel_backends())
def backend(request):
    return request.param
