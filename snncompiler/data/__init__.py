"""Data in and out: the .npz contract, standard on-disk formats (MNIST idx, CIFAR batches) and
event streams (:mod:`snncompiler.data.events`)."""

from .datasets import (
    Dataset,
    from_batches,
    is_batch_iterable,
    load,
    load_cifar10_batch,
    load_mnist,
    load_npz,
    read_idx,
    read_npz,
    save_npz,
    validate,
)

__all__ = [
    "Dataset",
    "from_batches",
    "is_batch_iterable",
    "load",
    "load_cifar10_batch",
    "load_mnist",
    "load_npz",
    "read_idx",
    "read_npz",
    "save_npz",
    "validate",
]
