"""Small, reproducible workloads for the demo, the tests and the benchmarks.

Everything here trains in seconds on a CPU from data that ships with scikit-learn (digits,
breast cancer) or is generated with a known ground truth; nothing is downloaded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from snncompiler.data import Dataset
from snncompiler.formats.onnx.from_torch import export_onnx


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
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * 4, classes),
        )


def train_classifier(
    model: nn.Module,
    train: Dataset,
    *,
    epochs: int = 30,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 1e-4,
    parameters=None,
    penalty=None,
    after_step=None,
) -> nn.Module:
    """Train with Adam and cross-entropy (cosine learning rate); returns the model in eval mode.

    ``parameters`` (default: all) are what Adam trains; ``penalty()`` is added to every batch's
    loss; ``after_step()`` runs after every Adam step (a second optimizer for the other
    parameters, say)."""
    torch.manual_seed(seed)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    opt = torch.optim.Adam(model.parameters() if parameters is None else parameters, lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            if penalty is not None:
                loss = loss + penalty()
            loss.backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step()
    return model.eval()


def evaluate(model: nn.Module, data: Dataset) -> float:
    """Top-1 accuracy of a torch model."""
    with torch.no_grad():
        pred = model(torch.from_numpy(data.x)).argmax(1).numpy()
    return float((pred == data.y).mean())


def digits_cnn_workload(out_dir, *, epochs: int = 30, seed: int = 0, verbose: bool = True) -> dict:
    """Train the digits CNN, export it and write test/calibration .npz files into ``out_dir``."""
    from snncompiler.data import save_npz

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
        print(
            f"trained DigitsCNN on {len(train)} digits in {seconds:.1f} s: test accuracy {100 * acc:.2f}% "
            f"(torch) -> {onnx_path}"
        )
    return {
        "model": model,
        "onnx": onnx_path,
        "test": out / "test.npz",
        "calib": out / "calib.npz",
        "torch_accuracy": acc,
        "train_seconds": seconds,
    }


# ---- benchmark workloads (benchmarks/timestep_accuracy.py) ------------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block: conv-BN-ReLU-conv-BN plus a (1×1 conv-BN when the shape changes) shortcut, Add, ReLU.

    Every ReLU is its own ``nn.ReLU`` module because SpikingJelly's converter only replaces ReLU modules.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class DigitsResNet(nn.Module):
    """A small ResNet for 8×8 digits: a conv-BN-ReLU stem, three basic blocks (one strided), average pool, linear."""

    def __init__(self, width: int = 16, classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.blocks = nn.Sequential(
            BasicBlock(width, width), BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width)
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, classes))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1×1 expansion conv-BN-ReLU6, 3×3 depthwise conv-BN-ReLU6, 1×1 projection
    conv-BN with no activation (the linear bottleneck), plus the input when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 4):
        super().__init__()
        hidden = cin * expand
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.block(x)
        return x + out if self.residual else out


class DigitsMobileNet(nn.Module):
    """A MobileNetV2 for 8×8 digits: conv-BN-ReLU6 stem, four inverted residual blocks with linear
    bottlenecks (one strided), a 1×1 conv-BN-ReLU6, average pool, linear. The expansion convs read
    the bottlenecks' analog values, not spikes, unless compiled with ``signed_spikes``."""

    def __init__(self, width: int = 16, classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU6()
        )
        wide = 3 * width // 2
        self.blocks = nn.Sequential(
            InvertedResidual(width, width),
            InvertedResidual(width, wide, 2),
            InvertedResidual(wide, wide),
            InvertedResidual(wide, wide),
        )
        self.head = nn.Sequential(
            nn.Conv2d(wide, 4 * width, 1, bias=False),
            nn.BatchNorm2d(4 * width),
            nn.ReLU6(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * width, classes),
        )

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class TabularMLP(nn.Sequential):
    """A three-layer ReLU MLP for tabular data (e.g. breast cancer: 30 features, 2 classes)."""

    def __init__(self, features: int = 30, hidden: int = 64, classes: int = 2):
        super().__init__(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, classes),
        )


class VGGSmall(nn.Sequential):
    """VGG-style CNN for 3×32×32: four stages of two conv-BN-ReLU layers, each followed by a 2×2 MaxPool.

    Eight conv layers and four MaxPools, then a linear classifier on the 2×2 map.
    """

    def __init__(self, widths=(8, 16, 32, 32), classes: int = 10, in_channels: int = 3):
        layers, cin = [], in_channels
        for w in widths:
            for _ in range(2):
                layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
                cin = w
            layers.append(nn.MaxPool2d(2))
        super().__init__(*layers, nn.Flatten(), nn.Linear(cin * 4, classes))


#: Class k of :func:`textured_shapes` is (SHAPES[k // 2], stripes horizontal if k is even else vertical).
SHAPES = ("disk", "square", "triangle", "ring", "cross")


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "disk":
        return dx**2 + dy**2 < r**2
    if shape == "square":
        return np.maximum(abs(dx), abs(dy)) < 0.85 * r
    if shape == "triangle":  # apex up; the width grows linearly towards the base
        return (dy > -r) & (dy < 0.8 * r) & (abs(dx) < 0.6 * (dy + r))
    if shape == "ring":
        d2 = dx**2 + dy**2
        return (d2 < r**2) & (d2 > (0.55 * r) ** 2)
    return (np.maximum(abs(dx), abs(dy)) < r) & (np.minimum(abs(dx), abs(dy)) < 0.35 * r)  # cross


def textured_shapes(n: int, seed: int = 0, size: int = 32, noise: float = 0.2, clutter: int = 4) -> Dataset:
    """A generated 10-class 3×size×size image task with known ground truth; float32 in about [0, 1].

    Class = shape (disk, square, triangle, ring, cross; see :data:`SHAPES`) × stripe orientation of its
    texture (horizontal, vertical). Nuisances: position, size, stripe period/phase, both stripe colours
    (sometimes of low contrast), background colour, up to ``clutter`` solid or diagonally striped
    rectangles (some partly covering the object) and Gaussian pixel noise. Deterministic under ``seed``.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    x = np.empty((n, 3, size, size), np.float32)
    y = rng.integers(0, 2 * len(SHAPES), n).astype(np.int64)
    s = size / 32
    for i in range(n):
        img = np.broadcast_to(rng.uniform(0, 0.6, 3)[:, None, None].astype(np.float32), (3, size, size)).copy()
        clutters = [
            (rng.uniform(0, size, 2), rng.uniform(2, 7, 2) * s, rng.uniform(0, 1, 3), rng.integers(0, 2))
            for _ in range(rng.integers(0, clutter + 1))
        ]
        over = rng.integers(0, len(clutters) + 1)  # clutter drawn after the object occludes it
        shape, vertical = SHAPES[y[i] // 2], y[i] % 2
        cx, cy = rng.uniform(11, 21, 2) * s
        r = rng.uniform(6, 10) * s
        period, phase = rng.uniform(3, 6) * s, rng.uniform(0, 6)
        stripes = (np.floor(((xx if vertical else yy) + phase) * 2 / period) % 2).astype(bool)
        c1, c2 = rng.uniform(0, 1, 3).astype(np.float32), rng.uniform(0, 1, 3).astype(np.float32)
        texture = np.where(stripes, c1[:, None, None], c2[:, None, None])
        for k in range(len(clutters) + 1):
            if k == over:
                img = np.where(_shape_mask(shape, xx - cx, yy - cy, r), texture, img)
            if k == len(clutters):
                break
            pos, half, colour, diagonal = clutters[k]
            m = (abs(xx - pos[0]) < half[0]) & (abs(yy - pos[1]) < half[1])
            if diagonal:  # diagonal stripes: texture-like clutter that is not a class cue
                m &= (np.floor((xx + yy) / (2 * s)) % 2).astype(bool)
            img = np.where(m, colour[:, None, None].astype(np.float32), img)
        x[i] = img + rng.normal(0, noise, img.shape).astype(np.float32)
    return Dataset(x, y)


def moving_dot(n: int, seed: int = 0, length: int = 16, steps: int = 8, noise: float = 0.1) -> Dataset:
    """A generated sequence task whose answer is in the order of the frames, not in any one frame.

    x: [n, steps, 1, length] float32, a dot of height 1 that moves one cell per step along a line,
    plus Gaussian noise; y: 0 if it moves right, 1 if left. Both directions sweep the same cells
    (a left-moving sample is a right-moving one played backwards), so the time-mean of x carries
    no information about y: a model that sees only the mean is at chance by construction, and one
    that integrates over time can reach 100%. Deterministic under ``seed``.
    """
    if steps > length:
        raise ValueError(f"moving_dot: steps ({steps}) must not exceed length ({length})")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.int64)
    start = rng.integers(0, length - steps + 1, n)
    x = rng.normal(0, noise, (n, steps, 1, length)).astype(np.float32)
    t = np.arange(steps)
    position = start[:, None] + np.where(y[:, None] == 0, t, steps - 1 - t)
    x[np.arange(n)[:, None], t, 0, position] += 1.0
    return Dataset(x, y)


# ---- ready-made benchmark workloads: a trained (or random) torch model with calibration and test data --


@dataclass
class Workload:
    """A model plus the data to convert and score it; ``trained`` is False for agreement workloads."""

    name: str
    model: nn.Module
    input_shape: tuple
    calib: Dataset
    test: Dataset
    trained: bool = True
    note: str = ""
    train_seconds: float = 0.0
    train: Dataset | None = None  # what the model was trained on (fine-tuning reuses it)


def _head(data: Dataset, n: int | None) -> Dataset:
    return Dataset(data.x[:n], None if data.y is None else data.y[:n])


def _trained(name, model, train, test, calib_samples, seed, note, **train_kwargs) -> Workload:
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    train_classifier(model, train, seed=seed, **train_kwargs)
    return Workload(
        name,
        model,
        tuple(train.x.shape[1:]),
        _head(train, calib_samples),
        test,
        True,
        note,
        time.perf_counter() - t0,
        train,
    )


def _digits_bench(name, model_class, note, seed, test_samples, calib_samples, epochs) -> Workload:
    """``model_class()`` (built after seeding) trained on the digits train split."""
    train, test = digits(seed=seed)
    torch.manual_seed(seed)
    return _trained(name, model_class(), train, _head(test, test_samples), calib_samples, seed, note, epochs=epochs)


def digits_cnn_bench(
    seed: int = 0, test_samples: int | None = None, calib_samples: int = 512, epochs: int = 30
) -> Workload:
    """:class:`DigitsCNN` (conv-BN-ReLU, two MaxPools) trained on the digits train split."""
    return _digits_bench(
        "digits_cnn", DigitsCNN, "DigitsCNN: 3 conv + BN, 2 MaxPool", seed, test_samples, calib_samples, epochs
    )


def digits_resnet_bench(
    seed: int = 0, test_samples: int | None = None, calib_samples: int = 512, epochs: int = 30
) -> Workload:
    """:class:`DigitsResNet` (BN, three basic blocks with residual Adds) trained on digits."""
    return _digits_bench(
        "digits_resnet",
        DigitsResNet,
        "DigitsResNet: stem + 3 BasicBlocks (residual Add), GAP",
        seed,
        test_samples,
        calib_samples,
        epochs,
    )


def digits_mobilenet_bench(
    seed: int = 0, test_samples: int | None = None, calib_samples: int = 512, epochs: int = 30
) -> Workload:
    """:class:`DigitsMobileNet` (inverted residual blocks, linear bottlenecks, ReLU6) trained on digits."""
    return _digits_bench(
        "digits_mobilenet",
        DigitsMobileNet,
        "DigitsMobileNet: stem + 4 inverted residual blocks (linear bottlenecks, ReLU6), GAP",
        seed,
        test_samples,
        calib_samples,
        epochs,
    )


def breast_cancer_bench(
    seed: int = 0, test_samples: int | None = None, calib_samples: int = 512, epochs: int = 60
) -> Workload:
    """:class:`TabularMLP` trained on the standardised breast-cancer table."""
    train, test = breast_cancer(seed=seed)
    torch.manual_seed(seed)
    return _trained(
        "breast_cancer_mlp",
        TabularMLP(),
        train,
        _head(test, test_samples),
        calib_samples,
        seed,
        "MLP 30-64-32-2",
        epochs=epochs,
        lr=1e-3,
    )


def vgg_shapes_bench(
    seed: int = 0,
    test_samples: int = 500,
    calib_samples: int = 512,
    train_samples: int = 16000,
    epochs: int = 4,
    widths=(8, 16, 32, 32),
) -> Workload:
    """:class:`VGGSmall` (8 conv + BN, 4 MaxPools) trained on :func:`textured_shapes`.

    The generator gives fresh samples for free, so the model trains on many images for few epochs
    instead of many epochs on few (which overfits); seeds keep train, calibration and test disjoint.
    """
    train = textured_shapes(train_samples, seed=1000 + seed)
    test = textured_shapes(test_samples, seed=2000 + seed)
    torch.manual_seed(seed)
    return _trained(
        "vgg_shapes",
        VGGSmall(widths),
        train,
        test,
        calib_samples,
        seed,
        f"VGGSmall{tuple(widths)}: 8 conv + BN, 4 MaxPool; textured_shapes ({train_samples} train)",
        epochs=epochs,
    )


def resnet18_agreement_bench(seed: int = 0, test_samples: int = 64, calib_samples: int = 512) -> Workload:
    """A random-init torchvision ResNet-18 (10 classes) on :func:`textured_shapes` images, labelled by its argmax.

    Accuracy is then agreement with the ANN; the ANN scores 100% by construction.
    """
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    calib = textured_shapes(calib_samples, seed=3000 + seed)
    test = textured_shapes(test_samples, seed=4000 + seed)
    with torch.no_grad():
        labels = model(torch.from_numpy(test.x)).argmax(1).numpy()
    counts = np.bincount(labels, minlength=10)
    return Workload(
        "resnet18_agreement",
        model,
        (3, 32, 32),
        calib,
        Dataset(test.x, labels),
        False,
        f"torchvision ResNet-18, random init, labels = ANN argmax (majority class "
        f"{100 * counts.max() / len(labels):.0f}%)",
    )


#: name → builder(seed, **sizes) for benchmarks/timestep_accuracy.py.
BENCH_WORKLOADS = {
    "digits_cnn": digits_cnn_bench,
    "digits_resnet": digits_resnet_bench,
    "digits_mobilenet": digits_mobilenet_bench,
    "breast_cancer_mlp": breast_cancer_bench,
    "vgg_shapes": vgg_shapes_bench,
    "resnet18_agreement": resnet18_agreement_bench,
}


class DeepVGG(nn.Sequential):
    """Ten conv + BN + ReLU layers with four MaxPools (3×32×32 inputs): deep enough that plain
    max-threshold conversion collapses at low T, the BN failure mode calibration repairs."""

    def __init__(self, widths=(8, 8, 16, 16, 32, 32, 32, 32, 64, 64), classes: int = 10):
        layers, c = [], 3
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
            if i in (1, 3, 5, 7):
                layers.append(nn.MaxPool2d(2))
        super().__init__(*layers, nn.Flatten(), nn.Linear(c * 4, classes))


def bn_failure_workload(seed: int = 0, train_samples: int = 8000, test_samples: int = 500, epochs: int = 4) -> Workload:
    """:class:`DeepVGG` trained with BN on :func:`textured_shapes` for a few CPU seconds."""
    train = textured_shapes(train_samples, seed=11 + seed)
    test = textured_shapes(test_samples, seed=12 + seed)
    torch.manual_seed(seed)
    return _trained(
        "deep_vgg_bn",
        DeepVGG(),
        train,
        test,
        256,
        seed,
        "DeepVGG: 10 conv + BN, 4 MaxPool; textured_shapes",
        epochs=epochs,
    )
