"""Keep freed host memory for reuse instead of handing it back to the OS (glibc only).

The spiking runtime works on [chunk·B, ...] tensors: on a ResNet's first stage at batch 64
one such tensor is over 100 MB. glibc serves every allocation above its mmap threshold
(at most 32 MB) with a fresh mmap and unmaps it on free, so each of those tensors is
page-faulted and zeroed by the kernel again on every chunk: that costs more than the neuron
kernel that fills it (benchmarks/kernels.py: 'clone' against 'copy'). Raising the mmap and
trim thresholds makes glibc keep and reuse that memory, as a caching allocator would.

The price is that a process keeps its peak heap after a run. Set SNNC_RETAIN_MEMORY=0 to
leave the allocator alone. Outside glibc (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
RETAIN_BYTES = 1 << 30  # allocations below this come from (and return to) the reusable heap


@functools.cache
def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True if they were raised."""
    if os.environ.get("SNNC_RETAIN_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, RETAIN_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, RETAIN_BYTES))
