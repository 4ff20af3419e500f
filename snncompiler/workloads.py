"""Small, reproducible workloads for the demo, the tests and the benchmarks.

Everything here trains in seconds on a CPU from data that ships with scikit-learn (digits,
breast cancer) or is generated with a known ground truth; nothing is downloaded.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .data import Dataset


def digits(test_fraction: float = 0.3, seed: int = 0) -> tuple[Dataset, Dataset]:
    """scikit-learn's 8×8 digits as [N, 1, 8, 8] float32 in [0, 1]; a seeded train/test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    y = bunch.target.astype(np.int64)
    return _split(x, y, test_fraction, seed)


def breast_cancer(test_fraction: float = 0.3, seed: int = 0) -> tuple[Dataset, Dataset]:
    """scikit-learn's breast-cancer table, standardised with train statistics; [N, 30] float32."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    train, test = _split(bunch.data.astype(np.float32), bunch.target.astype(np.int64), test_fraction, seed)
    mean, std = train.x.mean(0), train.x.std(0) + 1e-6
    return Dataset((train.x - mean) / std, train.y), Dataset((test.x - mean) / std, test.y)


def _split(x, y, test_fraction, seed):
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    te, tr = order[:n_test], order[n_test:]
    return Dataset(x[tr], y[tr]), Dataset(x[te], y[te])


class DigitsCNN(nn.Sequential):
    """Three conv layers with BN and two MaxPools, then a linear classifier (8×8 inputs)."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * 4, classes),
        )


def train_classifier(model: nn.Module, train: Dataset, *, epochs: int = 30, lr: float = 3e-3,
                     batch_size: int = 64, seed: int = 0, weight_decay: float = 1e-4) -> nn.Module:
    """Train with Adam and cross-entropy (cosine learning rate); returns the model in eval mode."""
    torch.manual_seed(seed)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def evaluate(model: nn.Module, data: Dataset) -> float:
    """Top-1 accuracy of a torch model."""
    with torch.no_grad():
        pred = model(torch.from_numpy(data.x)).argmax(1).numpy()
    return float((pred == data.y).mean())


def export_onnx(model: nn.Module, sample_shape, path, *, opset: int = 17, dynamic_batch: bool = True) -> Path:
    """Export a torch model to ONNX with input 'x' and output 'logits' (dynamic batch axis)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros((1,) + tuple(sample_shape))
    kwargs = dict(input_names=["x"], output_names=["logits"], opset_version=opset)
    if dynamic_batch:
        kwargs["dynamic_axes"] = {"x": {0: "N"}, "logits": {0: "N"}}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (dummy,), str(path), dynamo=False, **kwargs)
    return path


def digits_cnn_workload(out_dir, *, epochs: int = 30, seed: int = 0, verbose: bool = True) -> dict:
    """Train the digits CNN, export it and write test/calibration .npz files into ``out_dir``."""
    from .data import save_npz

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, test = digits(seed=seed)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = train_classifier(DigitsCNN(), train, epochs=epochs, seed=seed)
    seconds = time.perf_counter() - t0
    acc = evaluate(model, test)
    onnx_path = export_onnx(model, train.x.shape[1:], out / "digits_cnn.onnx")
    save_npz(out / "test.npz", test.x, test.y)
    save_npz(out / "calib.npz", train.x[:256], train.y[:256])
    if verbose:
        print(f"trained DigitsCNN on {len(train)} digits in {seconds:.1f} s: test accuracy {100 * acc:.2f}% "
              f"(torch) -> {onnx_path}")
    return {"model": model, "onnx": onnx_path, "test": out / "test.npz", "calib": out / "calib.npz",
            "torch_accuracy": acc, "train_seconds": seconds}
