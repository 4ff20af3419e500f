"""Data and models of the GIRNet-style registration app (Liu & Gu, MICCAI 2023).

Pairs of real MRI slices: the fixed image is an axial-ish slice of nilearn's MNI152 T1 seen
through a random "subject" (:class:`apps.medical.common.Subject`: smooth 3-D deformation and
intensity model); the moving image is the same slice warped by a known smooth 2-D displacement,
with a planted lesion (a textured bright or dark blob with no counterpart in the fixed image).
Everything about the pair is known: the flow that maps the fixed grid into the moving image and
the lesion mask in both frames.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage

from apps.medical.common import Subject, load_mni, random_plane

FIELD_OF_VIEW_MM = 168.0  # the brain fits inside; pixel spacing = FIELD_OF_VIEW_MM / size


# ---- data ----------------------------------------------------------------------------------
def smooth_field(rng: np.random.Generator, size: int, amplitude: float, grid: int = 5) -> np.ndarray:
    """A smooth 2-D displacement [2, size, size] in pixels: normal control points (std
    ``amplitude``) on a ``grid``×``grid`` lattice, cubic-spline interpolated."""
    control = rng.normal(0, amplitude, (2, grid, grid))
    coords = np.mgrid[0:size, 0:size].astype(np.float64) * (grid - 1) / (size - 1)
    return np.stack([ndimage.map_coordinates(c, coords, order=3, mode="nearest") for c in control]).astype(np.float32)


def sample_at(image: np.ndarray, flow: np.ndarray, order: int = 1, mode: str = "constant") -> np.ndarray:
    """image(x + flow(x)) for every pixel x ([H, W] or [C, H, W]; flow [2, H, W] as (row, col)
    pixels); outside the image zeros (``mode="constant"``) or the nearest edge value ("nearest")."""
    grid = np.mgrid[0 : flow.shape[1], 0 : flow.shape[2]].astype(np.float64) + flow
    if image.ndim == 2:
        return ndimage.map_coordinates(image, grid, order=order, mode=mode).astype(np.float32)
    return np.stack([sample_at(channel, flow, order, mode) for channel in image])


def inverse_flow(field: np.ndarray, iterations: int = 10) -> np.ndarray:
    """φ with x + φ(x) + field(x + φ(x)) = x: the flow undoing ``field`` (fixed-point iteration,
    exact to a small fraction of a pixel for smooth fields of a few pixels)."""
    phi = -field.copy()
    for _ in range(iterations):
        phi = -sample_at(field, phi, mode="nearest")  # the field goes on smoothly past the edge
    return phi


def plant_lesion(image: np.ndarray, brain: np.ndarray, rng: np.random.Generator, size: int):
    """The image with a textured blob inside the brain, and the blob's mask (float32, soft edge).
    Half the lesions are bright (oedema-like), half dark (necrosis-like)."""
    radius = rng.uniform(0.05, 0.11) * size
    inside = np.argwhere(ndimage.binary_erosion(brain, iterations=int(radius) + 1))
    if len(inside) == 0:
        inside = np.argwhere(brain)
    centre = inside[rng.integers(len(inside))] + rng.uniform(-0.5, 0.5, 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = np.arctan2(yy - centre[0], xx - centre[1])
    edge = radius * (
        1 + 0.2 * np.cos(2 * angle + rng.uniform(0, np.pi)) + 0.1 * np.cos(3 * angle + rng.uniform(0, np.pi))
    )
    mask = np.clip(edge - np.hypot(yy - centre[0], xx - centre[1]) + 0.5, 0, 1).astype(np.float32)
    level = rng.uniform(0.85, 1.1) if rng.random() < 0.5 else rng.uniform(0.0, 0.15)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 1.0)
    texture = level + 0.08 * texture / (texture.std() + 1e-6)
    return (image * (1 - mask) + mask * texture).astype(np.float32), mask


def registration_pairs(n: int, seed: int, size: int = 48, amplitude: float = 1.6, pairs_per_slice: int = 4):
    """``n`` planted pairs from the real MNI152 MRI.

    Returns a dict of float32 arrays: ``x`` [n, 2, size, size] (fixed, moving; the network input),
    ``flow`` [n, 2, size, size] (the true displacement in pixels, (row, col): moving(x + flow(x))
    matches fixed(x) outside the lesion), ``lesion_moving`` and ``lesion_fixed`` [n, size, size]
    (the lesion mask in each frame) and ``brain`` [n, size, size] (the fixed image's brain mask).
    Each sampled slice serves ``pairs_per_slice`` pairs (different fields and lesions)."""
    rng = np.random.default_rng(seed)
    atlas = load_mni(2)
    spacing = FIELD_OF_VIEW_MM / size
    out = {
        k: np.empty((n, 2, size, size) if k in ("x", "flow") else (n, size, size), np.float32)
        for k in ("x", "flow", "lesion_moving", "lesion_fixed", "brain")
    }
    for i in range(n):
        if i % pairs_per_slice == 0:
            subject = Subject.random(atlas, int(rng.integers(1 << 30)), amplitude_mm=3.0)
            plane = random_plane(rng, max_offset_mm=12.0, max_tilt_deg=12.0, base="axial")
            fixed, _, probs = subject.sample(plane, size, spacing, noise_seed=int(rng.integers(1 << 30)))
            # the point samples alias at 3.5-5 mm pixels: a pixel-sized blur (a scanner's point
            # spread) keeps the image resolvable by interpolation, hence registrable
            fixed = ndimage.gaussian_filter(fixed, 0.7)
            fixed = np.clip(fixed / max(float(np.percentile(fixed, 99.5)), 1e-6), 0, 1.2)
            brain = (probs[1] + probs[2]) > 0.3
        field = smooth_field(rng, size, amplitude)
        moving = sample_at(fixed, field)  # moving(y) = fixed(y + field(y))
        lesion_brain = sample_at(brain.astype(np.float32), field) > 0.5
        moving, lesion = plant_lesion(moving, lesion_brain, rng, size)
        flow = inverse_flow(field)  # moving(x + flow(x)) = fixed(x)
        out["x"][i] = (fixed, moving)
        out["flow"][i] = flow
        out["lesion_moving"][i] = lesion
        out["lesion_fixed"][i] = sample_at(lesion, flow)
        out["brain"][i] = brain
    return out


def load_slice(path, size: int = 48) -> np.ndarray:
    """A real 2-D image for :func:`registration_pairs`-style use: a NIfTI volume's middle axial
    slice (via :func:`apps.medical.common.load_nifti`) or a greyscale PNG/JPEG, resampled to
    ``size``×``size`` and scaled to [0, 1] by its 99.5th percentile."""
    from apps.medical.common import load_nifti

    path = Path(path)
    if path.name.endswith((".nii", ".nii.gz")):
        volume, _, _ = load_nifti(path)
        image = volume[:, :, volume.shape[2] // 2]
    else:
        from PIL import Image

        from snncompiler.errors import SnncError

        try:
            with Image.open(path) as img:
                image = np.asarray(img.convert("F"), dtype=np.float32)
        except (OSError, ValueError) as exc:
            raise SnncError(f"{path}: not an image PIL can read ({exc})") from None
    zoom = (size / image.shape[0], size / image.shape[1])
    image = ndimage.zoom(image.astype(np.float32), zoom, order=1)[:size, :size]
    return np.clip(image / max(float(np.percentile(image, 99.5)), 1e-6), 0, 1.2).astype(np.float32)


# ---- models --------------------------------------------------------------------------------
def _block(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


class UNet(nn.Module):
    """A two-level U-Net of spike-friendly ops: 3×3 conv + BN + ReLU, stride-2 convs down,
    2×2 transposed convs up (an event-driven layer: its spike inputs cost accumulates), skip
    concatenations, and a linear 3×3 read-out (the signed, non-spiking output)."""

    def __init__(self, cin: int, cout: int, width: int = 16):
        super().__init__()
        w = width
        self.enc = nn.Sequential(*_block(cin, w))
        self.down1 = nn.Sequential(*_block(w, 2 * w, 2))
        self.down2 = nn.Sequential(*_block(2 * w, 2 * w, 2), *_block(2 * w, 2 * w))
        self.up2 = nn.Sequential(nn.ConvTranspose2d(2 * w, 2 * w, 2, stride=2), nn.ReLU())
        self.dec2 = nn.Sequential(*_block(4 * w, 2 * w))
        self.up1 = nn.Sequential(nn.ConvTranspose2d(2 * w, w, 2, stride=2), nn.ReLU())
        self.dec1 = nn.Sequential(*_block(2 * w, w))
        self.head = nn.Conv2d(w, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        d1 = self.down1(e)
        d2 = self.down2(d1)
        u2 = self.dec2(torch.cat([self.up2(d2), d1], 1))
        u1 = self.dec1(torch.cat([self.up1(u2), e], 1))
        return self.head(u1)


class GirNet(nn.Module):
    """Registration U-Net (fixed, moving → flow) and lesion U-Net (moving → lesion logit) as one
    network with one input [N, 2, H, W] and one output [N, 3, H, W]: channels 0-1 the flow in
    pixels (row, col), channel 2 the lesion logit of the moving image."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.register_net = UNet(2, 2, width)
        self.segment_net = UNet(1, 1, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.register_net(x), self.segment_net(x[:, 1:2])], 1)


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """image(x + flow(x)) by bilinear grid sampling (the spatial transformer; zeros outside).
    image [N, C, H, W], flow [N, 2, H, W] in pixels (row, col)."""
    n, _, h, w = flow.shape
    rows = torch.arange(h, dtype=flow.dtype).view(1, h, 1) + flow[:, 0]
    cols = torch.arange(w, dtype=flow.dtype).view(1, 1, w) + flow[:, 1]
    grid = torch.stack([2 * cols / (w - 1) - 1, 2 * rows / (h - 1) - 1], -1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def girnet_loss(out: torch.Tensor, x: torch.Tensor, lesion: torch.Tensor, *, smooth: float = 0.5):
    """The co-training loss: squared error between the warped moving image and the fixed image,
    with the lesion area (the segmentation's lesion probability carried into the fixed frame)
    left out; a diffusion penalty on the flow; BCE + soft Dice of the lesion segmentation against
    the planted mask. The registration never sees the true flow."""
    flow, logit = out[:, :2], out[:, 2:3]
    fixed, moving = x[:, :1], x[:, 1:2]
    prob = torch.sigmoid(logit)
    keep = 1 - warp(prob, flow).detach().clamp(0, 1)  # ignore the lesion in the similarity term
    similarity = (keep * (warp(moving, flow) - fixed) ** 2).sum() / keep.sum().clamp_min(1.0)
    diffusion = ((flow[:, :, 1:] - flow[:, :, :-1]) ** 2).mean() + (
        (flow[:, :, :, 1:] - flow[:, :, :, :-1]) ** 2
    ).mean()
    target = lesion[:, None]
    bce = F.binary_cross_entropy_with_logits(logit, target, pos_weight=torch.tensor(4.0))
    dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
    return similarity * 100 + smooth * diffusion + bce + dice


def train_girnet(model: GirNet, data: dict, *, epochs: int, seed: int, batch: int = 16, lr: float = 3e-3) -> GirNet:
    """Joint training of both U-Nets with :func:`girnet_loss` (Adam, cosine schedule; random
    flips of the whole pair are extra training pairs)."""
    torch.manual_seed(seed)
    x, lesion = torch.from_numpy(data["x"]), torch.from_numpy(data["lesion_moving"])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            xb, lb = x[idx], lesion[idx]
            if torch.rand((), generator=gen) < 0.5:  # left-right mirror of the whole pair
                xb, lb = xb.flip(3), lb.flip(2)
            loss = girnet_loss(model(xb), xb, lb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


# ---- metrics -------------------------------------------------------------------------------
def registration_scores(out: np.ndarray, data: dict) -> dict:
    """``epe_outside`` the mean endpoint error (pixels) of the predicted flow against the true
    one over brain pixels outside the lesion (fixed frame), ``epe_identity`` the same for a zero
    flow (no registration), and ``lesion_dice`` (pooled over images) of the lesion logit > 0
    against the planted mask in the moving frame."""
    out = np.asarray(out)
    flow, logit = out[:, :2], out[:, 2]
    region = (data["brain"] > 0.5) & (data["lesion_fixed"] < 0.5)
    error = np.sqrt(((flow - data["flow"]) ** 2).sum(1))
    identity = np.sqrt((data["flow"] ** 2).sum(1))
    predicted, truth = logit > 0, data["lesion_moving"] > 0.5
    total = predicted.sum() + truth.sum()
    return {
        "lesion_dice": float(2 * (predicted & truth).sum() / total) if total else 1.0,
        "epe_outside": float(error[region].mean()),
        "epe_identity": float(identity[region].mean()),
    }


def export_girnet(model: GirNet, size: int, path) -> Path:
    """ONNX of the two U-Nets with input 'x' [N, 2, size, size] and output 'out' [N, 3, size, size]."""
    from snncompiler.fileio import write_bytes

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.zeros(1, 2, size, size),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["out"],
            dynamic_axes={"x": {0: "N"}, "out": {0: "N"}},
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, buffer.getvalue())
    return path
