"""torch.distributed in one place: rank, world size, shards, reductions, and the torchrun start.

Every function is a no-op when no process group is initialised (or it has one process): the
single-process code path computes exactly what it computed before this module existed (the
reductions fall back to the plain ``tensor.mean`` / ``sum`` they replace), so its results stay
bit-identical. Under a process group of W processes:

* data is sharded contiguously: rank r holds items ``[n·r // W, n·(r+1) // W)`` of n
  (:func:`shard_range`), so the shards, in rank order, are the unsharded data;
* every reduction a decision depends on (histogram counts and maxima, means over calibration
  samples, gradients, correct-prediction and spike counts) is all-reduced in float64, so every
  rank holds the same numbers and takes the same decisions;
* collectives are issued in the same order on every rank: callers must not branch on local data
  around them.

The backend follows the device: gloo for CPU tensors, NCCL for CUDA (tensors are moved to the
rank's GPU for the reduction and back).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from .errors import SnncError

if TYPE_CHECKING:  # torch is imported where it is used: `snnc --help` must not load it
    import torch

#: the environment torchrun sets for each process
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def _dist():
    """torch.distributed when it is usable and a group is initialised, else None."""
    if "torch" not in sys.modules:  # nothing imported torch yet, so no process group can exist
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    """Processes in the default group (1 without one)."""
    dist = _dist()
    return dist.get_world_size() if dist is not None else 1


def rank() -> int:
    """This process's rank in the default group (0 without one)."""
    dist = _dist()
    return dist.get_rank() if dist is not None else 0


def is_distributed() -> bool:
    """Whether a process group of more than one process is initialised."""
    return world_size() > 1


def is_main() -> bool:
    """Whether this is rank 0 (the one that prints and writes files); true without a group."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """Whether torchrun (or a launcher setting the same variables) started this process with a world over 1."""
    return all(k in os.environ for k in ENV_KEYS) and int(os.environ["WORLD_SIZE"]) > 1


def launched_rank() -> int:
    """The rank torchrun gave this process (its RANK variable), 0 when not launched by it."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def init_from_env(device: str = "cpu") -> str:
    """Under torchrun: initialise the default group (gloo for ``cpu``, NCCL for ``cuda``) from the
    environment, unless one already is; return the device this rank runs on (``cuda`` becomes
    ``cuda:LOCAL_RANK``: rank r on GPU r of its node). Without torchrun: ``device`` unchanged."""
    import torch
    import torch.distributed as dist

    if not launched_by_torchrun():
        return device
    cuda = str(device).startswith("cuda")
    if cuda:
        local = int(os.environ["LOCAL_RANK"])
        if not torch.cuda.is_available() or local >= torch.cuda.device_count():
            raise SnncError(
                f"--device {device}: torchrun local rank {local} needs GPU {local}, but "
                f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} are visible"
            )
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return device


def shutdown() -> None:
    """Destroy the default group if this process has one (after a torchrun command)."""
    dist = _dist()
    if dist is not None:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op without a group)."""
    dist = _dist()
    if dist is not None and dist.get_world_size() > 1:
        dist.barrier()


def shard_range(n: int) -> tuple[int, int]:
    """[start, end) of this rank's contiguous shard of ``n`` items; (0, n) without a group."""
    w, r = world_size(), rank()
    return n * r // w, n * (r + 1) // w


def shard(items):
    """This rank's contiguous shard of a sliceable (array, tensor, list); ``items`` itself without a group."""
    if not is_distributed():
        return items
    start, end = shard_range(len(items))
    return items[start:end]


def _reduce(t: torch.Tensor, op: str) -> torch.Tensor:
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    buf = t.detach().to(device=device, dtype=torch.float64).clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return buf.to(device=t.device, dtype=t.dtype)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Elementwise sum over ranks (in float64, returned in ``t``'s dtype and device); ``t`` itself without a group."""
    return _reduce(t, "sum") if is_distributed() else t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum over ranks; ``t`` itself without a group."""
    return _reduce(t, "max") if is_distributed() else t


def sum_numbers(*values: float) -> list[float]:
    """Python numbers summed over ranks (exact for integer counts below 2**53); unchanged without a group."""
    import torch

    if not is_distributed():
        return list(values)
    return all_reduce_sum(torch.tensor(values, dtype=torch.float64)).tolist()


def mean(t: torch.Tensor, dim=None) -> torch.Tensor:
    """``t.mean(dim)`` over the samples of every rank: local sums and counts all-reduced, then
    divided. Without a group exactly ``t.mean()`` / ``t.mean(dim=dim)``."""
    import torch

    if not is_distributed():
        return t.mean() if dim is None else t.mean(dim=dim)
    dims = list(range(t.dim())) if dim is None else ([dim] if isinstance(dim, int) else list(dim))
    local = t.to(torch.float64).sum(dim=dims) if t.dim() else t.to(torch.float64)
    count = 1
    for d in dims:
        count *= t.shape[d]
    total = all_reduce_sum(
        torch.cat([local.reshape(-1), torch.tensor([float(count)], dtype=torch.float64, device=local.device)])
    )
    return (total[:-1] / total[-1]).reshape(local.shape).to(t.dtype)


def sum_gradients(parameters) -> None:
    """Sum every parameter's gradient over ranks (callers scale their losses so that the sum is
    the full-batch gradient); no-op without a group."""
    import torch

    if not is_distributed():
        return
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.copy_(all_reduce_sum(p.grad))
