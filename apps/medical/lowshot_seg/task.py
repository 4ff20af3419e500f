"""The data and the models of the low-shot segmentation app: oblique slices of ONE deformed MNI152
"subject" for training and of other subjects for testing, a small dilated conv encoder, and the
multimodal cosine-mixture head (Cui et al., TMI 2021) in its training form and in the
spike-friendly form that is exported."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from apps.medical.common import TISSUES, Subject, load_mni, random_plane, sample_slices

CLASSES = len(TISSUES)
#: grey-matter boost of the "multimodal" case: right-hemisphere cortex brighter than white matter
MULTIMODAL_BOOST = 0.6
#: case → (grey-matter boost, encoder): "deep" sees about a third of the slice, "local" one 3×3 patch
#: (one conv layer: it cannot tell the two grey-matter modes from white matter by context)
CASES = {
    "tissue": (0.0, "deep"),
    "multimodal": (MULTIMODAL_BOOST, "deep"),
    "tissue_local": (0.0, "local"),
    "multimodal_local": (MULTIMODAL_BOOST, "local"),
}


def one_shot_data(
    case: str,
    seed: int,
    *,
    size: int,
    spacing: float,
    train_slices: int,
    test_subjects: int,
    slices_per_test_subject: int,
):
    """(train images [n, 1, s, s], train labels [n, s, s], test images, test labels): oblique slices
    of one training subject (drawn from ``seed``) and of ``test_subjects`` other subjects (the same
    for every seed). Images are per-slice z-scored; labels are background / grey / white matter."""
    atlas = load_mni(2)
    boost = CASES[case][0]
    rng = np.random.default_rng(seed)
    train = Subject.random(atlas, 10_000 + seed, gm_boost=boost)
    train_x, train_y = sample_slices(
        train, [random_plane(rng) for _ in range(train_slices)], size, spacing, noise_seed=20_000 + 1000 * seed
    )
    xs, ys = [], []
    test_rng = np.random.default_rng(99)
    for k in range(test_subjects):
        subject = Subject.random(atlas, 50_000 + k, gm_boost=boost)
        x, y = sample_slices(
            subject,
            [random_plane(test_rng) for _ in range(slices_per_test_subject)],
            size,
            spacing,
            noise_seed=60_000 + 1000 * k,
        )
        xs.append(x)
        ys.append(y)
    return train_x, train_y, np.concatenate(xs), np.concatenate(ys)


def _block(cin, cout, stride=1, dilation=1):
    return [
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]


class Encoder(nn.Sequential):
    """Conv16 → Conv32 (stride 2) → dilated Conv32 → nearest ×2 upsample + Conv16: a ``dim``-d
    non-negative embedding per pixel (every ReLU becomes a spiking neuron after compiling)."""

    def __init__(self, dim: int = 16):
        super().__init__(
            *_block(1, 16),
            *_block(16, 32, stride=2),
            *_block(32, 32, dilation=2),
            nn.Upsample(scale_factor=2, mode="nearest"),
            *_block(32, dim),
        )


class LocalEncoder(nn.Sequential):
    """One Conv3x3 + BN + ReLU: an embedding of each pixel's 3×3 neighbourhood only."""

    def __init__(self, dim: int = 16):
        super().__init__(*_block(1, dim))


def encoder(kind: str, dim: int = 16) -> nn.Module:
    """The encoder of a case: "deep" (:class:`Encoder`) or "local" (:class:`LocalEncoder`)."""
    return Encoder(dim) if kind == "deep" else LocalEncoder(dim)


class MixtureHead(nn.Module):
    """Training form: C·K prototypes w_ck (the weights of a 1×1 conv); per pixel, the cosine
    similarity s·cos(f, w_ck) to each mode, mixed over the K modes of a class by their softmax
    (the adaptive mixing coefficients), is the class logit."""

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


class ModeScores(nn.Module):
    """Export form of :class:`MixtureHead`: the prototypes' normalisation and the scale s folded
    into a plain 1×1 conv whose C·K outputs are the per-mode scores s·⟨f, w_ck/‖w_ck‖⟩. The
    per-pixel embedding norm is dropped (a positive per-pixel factor: the argmax is unchanged) and
    the max over modes is the analog read-out after the network (:func:`mode_max`)."""

    def __init__(self, head: MixtureHead):
        super().__init__()
        self.classes, self.modes = head.classes, head.modes
        w = head.scale * F.normalize(head.weight.detach(), dim=1)
        self.conv = nn.Conv2d(w.shape[1], w.shape[0], 1, bias=False)
        self.conv.weight.data.copy_(w)

    def forward(self, f):
        """Per-mode scores [N, C·K, H, W]."""
        return self.conv(f)


def mode_max(scores, classes: int = CLASSES):
    """Class scores [N, C, H, W] from per-mode scores [N, C·K, H, W] (numpy or torch): the max over
    the K modes (identity for a C-channel output)."""
    modes = scores.shape[1] // classes
    if isinstance(scores, torch.Tensor):
        return scores.unflatten(1, (modes, classes)).amax(1)
    return scores.reshape(scores.shape[0], modes, classes, *scores.shape[2:]).max(1)


def train_segmenter(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    iterations: int,
    batch: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
) -> nn.Module:
    """Fit ``model`` (x → class logits) on the slices of the one training subject: random batches
    with random flips and quarter turns, Adam, cosine learning rate, cross-entropy; one torch thread."""
    from apps.common import torch_threads

    with torch_threads(1):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
        model.train()
        for _ in range(iterations):
            idx = torch.randint(len(x_all), (batch,), generator=gen)
            x, y = x_all[idx], y_all[idx]
            turns = int(torch.randint(4, (1,), generator=gen))
            x, y = torch.rot90(x, turns, (2, 3)), torch.rot90(y, turns, (1, 2))
            if bool(torch.randint(2, (1,), generator=gen)):
                x, y = x.flip(3), y.flip(2)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
        return model.eval()
