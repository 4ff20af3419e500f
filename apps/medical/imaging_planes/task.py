"""The data, the pretext tasks and the models of the imaging-planes app (Zhang et al., MedIA 2024).

Oblique slices through deformed MNI152 "subjects" with exactly known geometry. Two pretext
tasks need no annotation, only the planes' geometry (in a scanner, the DICOM IPP/IOP tags):

* **intersection lines**: where the brain's anatomy-oriented planes (the MNI frame's mid-sagittal,
  mid-coronal and mid-axial planes, the brain's analogues of the heart's 2CH/4CH/SAX views) cut
  the slice, as three Gaussian line heatmaps;
* **relative slice location**: the slice's position in its parallel stack (signed distance of its
  centre from the brain's centre along its normal, scaled to about [-1, 1]).

The target task is 3-class tissue segmentation (background, grey, white matter) from a few
labelled slices of 1–3 subjects, with the encoder trained from scratch or from the pretext
weights.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from apps.medical.common import (
    TISSUES,
    Plane,
    Subject,
    intersection_line,
    line_heatmap,
    load_mni,
    random_plane,
    sample_slices,
)

CLASSES = len(TISSUES)
#: The anatomy-oriented reference planes (mm, MNI frame): mid-sagittal, mid-coronal, mid-axial.
REFERENCE_PLANES = (
    Plane(np.zeros(3), np.eye(3)[1], np.eye(3)[2]),
    Plane(np.zeros(3), np.eye(3)[0], np.eye(3)[2]),
    Plane(np.zeros(3), np.eye(3)[0], np.eye(3)[1]),
)
#: Slices are axial or coronal stacks (tilted up to 30°): their normal keeps its anatomical sign
#: (up, forward), so a position in the stack is defined; a sagittal stack is mirror-symmetric.
STACK_BASES = ("axial", "coronal")
MAX_OFFSET_MM = 30.0
#: width (pixels) of the line heatmaps: wide enough that a line a pixel off still earns credit
LINE_SIGMA = 2.5
PRETEXTS = {"none": (), "line": ("line",), "location": ("location",), "both": ("line", "location")}


def planes(rng: np.random.Generator, n: int) -> list[Plane]:
    """``n`` oblique planes of the stacks the app uses."""
    return [
        random_plane(
            rng, base=STACK_BASES[rng.integers(len(STACK_BASES))], max_offset_mm=MAX_OFFSET_MM, max_tilt_deg=30.0
        )
        for _ in range(n)
    ]


def pretext_targets(plane_list: list[Plane], size: int, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """(line heatmaps [n, 3, s, s] of the reference planes' intersections, relative slice locations [n])."""
    heat = np.stack(
        [
            np.stack(
                [
                    line_heatmap(intersection_line(p, ref, size, spacing), size, sigma=LINE_SIGMA)
                    for ref in REFERENCE_PLANES
                ]
            )
            for p in plane_list
        ]
    )
    # the plane's offset along its own normal: where it sits in its parallel stack
    location = np.array([p.centre @ p.normal for p in plane_list], np.float32) / MAX_OFFSET_MM
    return heat.astype(np.float32), location


def unlabelled_data(seed: int, subjects: int, slices_per_subject: int, size: int, spacing: float):
    """Pretext data: (images [n, 1, s, s], heatmaps [n, 3, s, s], locations [n]) from ``subjects``
    subjects whose tissue labels are never used."""
    atlas, rng = load_mni(2), np.random.default_rng(seed)
    xs, heats, locs = [], [], []
    for k in range(subjects):
        subject = Subject.random(atlas, 1_000 * (seed + 1) + k)
        ps = planes(rng, slices_per_subject)
        x, _ = sample_slices(subject, ps, size, spacing, noise_seed=7_000 + 100 * k)
        h, loc = pretext_targets(ps, size, spacing)
        xs.append(x), heats.append(h), locs.append(loc)
    return np.concatenate(xs), np.concatenate(heats), np.concatenate(locs)


def labelled_data(seed: int, subjects: int, slices_per_subject: int, size: int, spacing: float, *, offset: int = 0):
    """(images [n, 1, s, s], tissue labels [n, s, s]) of ``subjects`` subjects (disjoint from the
    pretext subjects and, through ``offset``, from the test subjects)."""
    atlas, rng = load_mni(2), np.random.default_rng(seed + 31 + offset)
    xs, ys = [], []
    for k in range(subjects):
        subject = Subject.random(atlas, 900_000 + offset + 100 * seed + k)
        x, y = sample_slices(subject, planes(rng, slices_per_subject), size, spacing, noise_seed=3_000 + 50 * k)
        xs.append(x), ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _block(cin, cout, stride=1, dilation=1):
    return [
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]


class Encoder(nn.Sequential):
    """Conv16 → Conv32 (stride 2) → dilated Conv32 (×2) → nearest ×2 upsample + Conv16: a 16-d
    non-negative embedding per pixel with a receptive field of about half the slice."""

    def __init__(self, dim: int = 16):
        super().__init__(
            *_block(1, 16),
            *_block(16, 32, stride=2),
            *_block(32, 32, dilation=2),
            *_block(32, 32, dilation=4),
            nn.Upsample(scale_factor=2, mode="nearest"),
            *_block(32, dim),
        )


class PlaneNet(nn.Module):
    """One encoder, three heads: line heatmaps (1×1 conv), slice location (global average pool +
    linear) and tissue classes (1×1 conv). The heads are non-spiking read-outs; only the
    segmenter (encoder + tissue head) is compiled."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.encoder = Encoder(dim)
        self.line = nn.Conv2d(dim, len(REFERENCE_PLANES), 1)
        self.location = nn.Linear(dim, 1)
        self.tissue = nn.Conv2d(dim, CLASSES, 1)

    def pretext(self, x):
        """(line heatmaps [N, 3, H, W], slice locations [N])."""
        f = self.encoder(x)
        return self.line(f), self.location(f.mean((2, 3)))[:, 0]

    def segmenter(self) -> nn.Module:
        """x → tissue logits: the network that is exported and compiled."""
        return nn.Sequential(self.encoder, self.tissue)


def _augment(x, *targets, gen):
    """The same random flip of the columns for images and dense targets (a quarter turn would move
    the lines' meaning only by relabelling, but a flip keeps the stack direction and the sign)."""
    if bool(torch.randint(2, (1,), generator=gen)):
        return (x.flip(-1),) + tuple(t.flip(-1) for t in targets)
    return (x,) + targets


def pretrain(
    net: PlaneNet, data, tasks: tuple[str, ...], *, iterations: int, batch: int = 16, lr: float = 3e-3, seed: int = 0
) -> dict:
    """Train the encoder on the pretext ``tasks`` (line MSE ×10 so both losses start near 1, location
    MSE); one torch thread. Returns the last 20 iterations' mean losses."""
    from apps.common import torch_threads

    x_all, heat_all, loc_all = (torch.from_numpy(a) for a in data)
    losses = {t: [] for t in tasks}
    with torch_threads(1):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        params = list(net.encoder.parameters()) + list(net.line.parameters()) + list(net.location.parameters())
        opt = torch.optim.Adam(params, lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
        net.train()
        for _ in range(iterations):
            idx = torch.randint(len(x_all), (batch,), generator=gen)
            x, heat = _augment(x_all[idx], heat_all[idx], gen=gen)
            line, loc = net.pretext(x)
            parts = {"line": 10 * F.mse_loss(line, heat), "location": F.mse_loss(loc, loc_all[idx])}
            loss = sum(parts[t] for t in tasks)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            for t in tasks:
                losses[t].append(parts[t].item())
    net.eval()
    return {t: float(np.mean(v[-20:])) for t, v in losses.items()}


def pretext_quality(net: PlaneNet, data) -> dict:
    """On held-out pretext data: R² of the slice location, and the line heatmaps' mean squared
    error relative to predicting the mean heatmap (1 - MSE/MSE_mean: a heatmap R²)."""
    x, heat, loc = data
    with torch.no_grad():
        line, pred = net.pretext(torch.from_numpy(x))
    line, pred = line.numpy(), pred.numpy()
    r2 = 1 - float(((pred - loc) ** 2).mean() / loc.var())
    heat_r2 = 1 - float(((line - heat) ** 2).mean() / ((heat - heat.mean(0)) ** 2).mean())
    return {"location_r2": r2, "line_heatmap_r2": heat_r2}


def finetune_segmentation(
    net: PlaneNet, x: np.ndarray, y: np.ndarray, *, iterations: int, batch: int = 8, lr: float = 3e-3, seed: int = 0
) -> nn.Module:
    """Train encoder and tissue head on the few labelled slices (flips, Adam, cosine schedule,
    cross-entropy); returns the segmenter. The same recipe from scratch and from pretext weights."""
    from apps.common import torch_threads

    model = net.segmenter()
    x_all, y_all = torch.from_numpy(x), torch.from_numpy(y)
    with torch_threads(1):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
        model.train()
        for _ in range(iterations):
            idx = torch.randint(len(x_all), (batch,), generator=gen)
            xb, yb = _augment(x_all[idx], y_all[idx], gen=gen)
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            sched.step()
    return model.eval()
