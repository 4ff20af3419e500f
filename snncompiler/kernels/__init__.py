"""Fused multi-timestep IF/LIF neuron kernels.

One op, :func:`neuron_multistep` (also ``torch.ops.snncompiler.neuron_multistep``), with
interchangeable backends that all reproduce :mod:`.reference` bit for bit:

* ``reference``: the plain-PyTorch oracle (a Python loop over T), any device;
* ``cpu``: C++/OpenMP kernel, csrc/lif_cpu.cpp, built by setup.py;
* ``triton``: Triton kernel (GPU, or CPU under TRITON_INTERPRET=1 for tests);
* ``cuda``: CUDA kernel, csrc/lif_cuda.cu (forward; its backward runs on Triton).

Triton and the CUDA loader are imported lazily, only when their backend runs.
"""

from .op import (
    available_backends,
    neuron_multistep,
    population_mean,
    population_multistep,
    population_output,
    theta_layout,
)
from .packing import count_spikes, pack_spikes, unpack_spikes
from .reference import neuron_multistep_reference
from .surrogate import SURROGATES

__all__ = [
    "neuron_multistep",
    "population_multistep",
    "population_output",
    "population_mean",
    "available_backends",
    "pack_spikes",
    "unpack_spikes",
    "count_spikes",
    "neuron_multistep_reference",
    "theta_layout",
    "SURROGATES",
]
