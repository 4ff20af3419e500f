"""The data and the models of the medical app: synthetic 2-D "abdomen" subjects with known organ
labels, a small dilated conv encoder, and the multimodal cosine-mixture head in its training form
and in the spike-friendly form that is exported."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

#: Organs (label 1, 2, 3): nominal centre (x, y) in body coordinates [-1, 1], semi-axes, base intensity.
#: The body itself is label 0 with the background; intensities overlap once subjects vary.
ORGANS = (
    ("liver", (-0.38, -0.05), (0.36, 0.26), 0.80),
    ("kidney", (0.40, 0.30), (0.19, 0.13), 0.20),
    ("spleen", (0.42, -0.30), (0.24, 0.15), 0.68),
)
BODY_INTENSITY = 0.50
CLASSES = 1 + len(ORGANS)


def abdomen(n: int, seed: int = 0, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic subjects: images [n, 1, size, size] float32 (raw intensities) and labels
    [n, size, size] int64 (0 background/body, 1..3 organs). Deterministic under ``seed``.

    Each subject draws its own anatomy (body ellipse, organ position, size and rotation) and its
    own appearance (organ and body intensity shifts, global gain and offset, a linear bias field,
    noise level), so a model fitted to one subject must generalise across both.
    """
    rng = np.random.default_rng(seed)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    images = np.zeros((n, 1, size, size), np.float32)
    labels = np.zeros((n, size, size), np.int64)
    for i in range(n):
        bx, by = rng.uniform(0.78, 0.92), rng.uniform(0.58, 0.72)  # body semi-axes
        cx, cy = rng.uniform(-0.05, 0.05, 2)
        body = _ellipse(xx - cx, yy - cy, bx, by, rng.uniform(-0.15, 0.15))
        img = np.where(body, BODY_INTENSITY + rng.normal(0, 0.04), 0.0)
        lab = np.zeros((size, size), np.int64)
        for k, (_, (ox, oy), (ax, ay), level) in enumerate(ORGANS, start=1):
            scale = rng.uniform(0.8, 1.2)
            mask = _ellipse(xx - cx - bx * (ox + rng.uniform(-0.1, 0.1)), yy - cy - by * (oy + rng.uniform(-0.1, 0.1)),
                            ax * scale * rng.uniform(0.85, 1.15), ay * scale * rng.uniform(0.85, 1.15),
                            rng.uniform(0, math.pi)) & body
            img = np.where(mask, level + rng.normal(0, 0.06), img)
            lab[mask] = k
        angle = rng.uniform(0, 2 * math.pi)
        bias = 1 + rng.uniform(0, 0.35) * (np.cos(angle) * xx + np.sin(angle) * yy)
        img = rng.uniform(0.7, 1.3) * img * bias + rng.normal(0, 0.05)
        images[i, 0] = img + rng.normal(0, rng.uniform(0.03, 0.08), img.shape)
        labels[i] = lab
    return images, labels


def _ellipse(dx, dy, ax, ay, theta):
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / ax) ** 2 + (v / ay) ** 2 < 1


def standardize(x: np.ndarray | torch.Tensor):
    """Per-image z-score (the usual MR preprocessing; removes global gain and offset), done
    before the network so the exported model sees what training saw."""
    dims = tuple(range(1, x.ndim))
    if isinstance(x, torch.Tensor):
        return (x - x.mean(dims, keepdim=True)) / (x.std(dims, keepdim=True) + 1e-6)
    return ((x - x.mean(dims, keepdims=True)) / (x.std(dims, keepdims=True) + 1e-6)).astype(np.float32)


def augment(image: torch.Tensor, label: torch.Tensor, n: int, gen: torch.Generator):
    """``n`` random-affine copies (rotation ±20°, scale 0.85–1.15, shift ±10%) of one subject,
    image [1, 1, H, W] bilinear and label [1, H, W] nearest, then standardised images."""
    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    angle, scale = uniform(-math.pi / 9, math.pi / 9), uniform(0.85, 1.15)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, uniform(-0.2, 0.2)], 1),
                         torch.stack([sin, cos, uniform(-0.2, 0.2)], 1)], 1)
    grid = F.affine_grid(theta, (n, 1) + tuple(image.shape[-2:]), align_corners=False)
    x = F.grid_sample(image.expand(n, -1, -1, -1), grid, mode="bilinear", align_corners=False)
    y = F.grid_sample(label[:, None].float().expand(n, -1, -1, -1), grid, mode="nearest", align_corners=False)
    return standardize(x), y[:, 0].long()


def _block(cin, cout, stride=1, dilation=1):
    return [nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU()]


class Encoder(nn.Sequential):
    """Conv16 → Conv32 (stride 2) → dilated Conv32 → nearest ×2 upsample + Conv16: a ``dim``-d
    non-negative embedding per pixel (every ReLU becomes a spiking neuron after compiling)."""

    def __init__(self, dim: int = 16):
        super().__init__(*_block(1, 16), *_block(16, 32, stride=2), *_block(32, 32, dilation=2),
                         nn.Upsample(scale_factor=2, mode="nearest"), *_block(32, dim))


class MixtureHead(nn.Module):
    """Training form: C·K mode vectors w_ck (the weights of a 1×1 conv); per pixel, the cosine
    similarity s·cos(f, w_ck) to each mode, mixed over the K modes by their softmax, is the
    class logit (Cui et al.'s multimodal mixture representation)."""

    def __init__(self, dim: int = 16, classes: int = CLASSES, modes: int = 3, scale: float = 10.0):
        super().__init__()
        self.classes, self.modes, self.scale = classes, modes, scale
        # channel k·C + c is mode k of class c, so each mode is one contiguous slice of C channels
        self.weight = nn.Parameter(torch.randn(modes * classes, dim, 1, 1) * 0.5)

    def forward(self, f):
        """Per-class logits [N, C, H, W] from embeddings [N, D, H, W]."""
        sim = self.scale * F.conv2d(F.normalize(f, dim=1), F.normalize(self.weight, dim=1))
        sim = sim.unflatten(1, (self.modes, self.classes))
        return (sim.softmax(1) * sim).sum(1)


class MaxHead(nn.Module):
    """Export form of :class:`MixtureHead`: the weight normalisation (and s) folded into a plain
    1×1 conv, no per-pixel embedding norm (a positive per-pixel factor: argmax unchanged), and a
    hard max over the modes as an elementwise max of channel slices (ONNX Slice and Max)."""

    def __init__(self, head: MixtureHead):
        super().__init__()
        self.classes, self.modes = head.classes, head.modes
        w = head.scale * F.normalize(head.weight.detach(), dim=1)
        self.conv = nn.Conv2d(w.shape[1], w.shape[0], 1, bias=False)
        self.conv.weight.data.copy_(w)

    def forward(self, f):
        """Per-class scores [N, C, H, W]: max over modes of s·⟨f, w_ck/‖w_ck‖⟩."""
        z, c = self.conv(f), self.classes
        out = z[:, :c]
        for k in range(1, self.modes):
            out = torch.maximum(out, z[:, k * c:(k + 1) * c])
        return out


def train_segmenter(model: nn.Module, image: np.ndarray, label: np.ndarray, *, iterations: int, batch: int = 8,
                    lr: float = 3e-3, seed: int = 0, threads: int = 1) -> nn.Module:
    """Fit ``model`` (x → per-class logits) to one subject (image [1, 1, H, W], label [1, H, W]) with
    fresh random-affine copies every iteration; Adam, cosine learning rate, cross-entropy.

    Trains on ``threads`` torch threads (restored afterwards): each op here is so small that a
    second thread costs more in synchronisation than it saves (15 vs 75 ms per iteration on the
    2-vCPU VM while other jobs ran on it)."""
    from apps.common import torch_threads

    with torch_threads(threads):
        return _train(model, image, label, iterations, batch, lr, seed)


def _train(model, image, label, iterations, batch, lr, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    image, label = torch.from_numpy(image), torch.from_numpy(label)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
    model.train()
    for _ in range(iterations):
        x, y = augment(image, label, batch, gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
    return model.eval()


def dice_scores(pred: np.ndarray, labels: np.ndarray) -> dict:
    """Per-organ Dice (mean over subjects; a subject missing an organ in both counts as 1), their
    mean, and pixel accuracy, from predicted and true label maps [N, H, W]."""
    scores = {}
    for k, (name, *_) in enumerate(ORGANS, start=1):
        p, g = pred == k, labels == k
        inter, total = (p & g).sum((1, 2)), p.sum((1, 2)) + g.sum((1, 2))
        scores[name] = float(np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0).mean())
    scores["mean_dice"] = float(np.mean([scores[name] for name, *_ in ORGANS]))
    scores["pixel_acc"] = float((pred == labels).mean())
    return scores
