"""Data and model of the concept-bottleneck choroid-tumour classifier (Wu et al., Nat. Commun. 2025).

The fundus background is real: crops of scikit-image's ``retina.jpg`` (a colour fundus
photograph, 1411×1411) around its optic disc, flipped at random (left or right eye) and shifted.
The lesions are planted: each "patient" draws a class, then six human-readable concepts from a
class-conditional Bernoulli table (:data:`CONCEPT_TABLE`, an illustrative prior, not clinical
fact), and the lesion is rendered from the concepts, so every concept's ground truth is known.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from snncompiler.errors import SnncError

CLASSES = ("melanoma", "hemangioma", "metastasis")
CONCEPTS = ("large", "pigmented", "orange", "irregular", "mottled", "near_disc")
#: P(concept | class): rows CLASSES, columns CONCEPTS. Illustrative, loosely after the
#: textbook picture (melanoma: large, pigmented, mushroom-shaped; circumscribed haemangioma:
#: orange, smooth, at the posterior pole; metastasis: creamy, irregular, mottled).
CONCEPT_TABLE = np.array(
    [
        [0.80, 0.85, 0.05, 0.60, 0.35, 0.30],
        [0.30, 0.05, 0.90, 0.10, 0.15, 0.80],
        [0.40, 0.10, 0.10, 0.85, 0.85, 0.35],
    ]
)
SIZE = 32  # network input, pixels
RENDER = 4  # lesions are drawn at SIZE·RENDER and area-averaged down (anti-aliasing)
CROP = 640  # crop of the full-resolution photograph, pixels (the disc is ~180 px across)
DISC_RADIUS = 4.5  # optic disc radius at SIZE, pixels


def load_fundus(path: str | Path | None = None) -> np.ndarray:
    """A colour fundus photograph as float32 RGB in [0, 1], [H, W, 3].

    ``None`` reads scikit-image's bundled ``retina.jpg`` (in the wheel: nothing downloads); a
    path reads any RGB/greyscale image PIL opens (JPEG, PNG, TIFF), e.g. a fundus from a real
    dataset. Grey images are repeated over the three channels."""
    from PIL import Image

    if path is None:
        import skimage

        path = Path(skimage.__file__).parent / "data" / "retina.jpg"
    path = Path(path)
    if not path.is_file():
        raise SnncError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as exc:
        raise SnncError(f"{path}: not an image PIL can read ({exc})") from None
    if min(rgb.shape[:2]) < 64:
        raise SnncError(f"{path}: image is {rgb.shape[1]}x{rgb.shape[0]}; a fundus photograph needs ≥ 64 px a side")
    return rgb


def find_disc(rgb: np.ndarray) -> tuple[int, int]:
    """(row, col) of the optic disc: the brightest region of the smoothed luminance (the disc is
    the brightest structure of a fundus photograph)."""
    from scipy.ndimage import uniform_filter

    window = max(3, min(rgb.shape[:2]) // 14) | 1
    smooth = uniform_filter(rgb.mean(2), window)
    row, col = np.unravel_index(int(smooth.argmax()), smooth.shape)
    return int(row), int(col)


def _area_down(img: np.ndarray, factor: int) -> np.ndarray:
    h, w = img.shape[0] // factor, img.shape[1] // factor
    return img[: h * factor, : w * factor].reshape(h, factor, w, factor, -1).mean((1, 3))


def _backgrounds(rgb: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` crops [n, R, R, 3] (R = SIZE·RENDER) of the photograph around the disc, each shifted
    and flipped at random, and the disc centre in each crop (in SIZE pixels)."""
    from PIL import Image

    big = SIZE * RENDER
    scale = big / CROP
    small = (
        np.asarray(
            Image.fromarray((rgb * 255).astype(np.uint8)).resize(
                (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), Image.BILINEAR
            ),
            dtype=np.float32,
        )
        / 255.0
    )
    dr, dc = (round(v * scale) for v in find_disc(rgb))
    crops, discs = np.empty((n, big, big, 3), np.float32), np.empty((n, 2), np.float32)
    for i in range(n):
        # the disc lands in the left third of the crop, anywhere vertically in the middle half
        pos_r = rng.uniform(0.3, 0.7) * big
        pos_c = rng.uniform(0.15, 0.3) * big
        top = int(np.clip(round(dr - pos_r), 0, small.shape[0] - big))
        left = int(np.clip(round(dc - pos_c), 0, small.shape[1] - big))
        crop = small[top : top + big, left : left + big]
        disc = np.array([dr - top, dc - left], np.float32)
        if rng.random() < 0.5:  # the other eye: disc on the right
            crop, disc[1] = crop[:, ::-1], big - 1 - disc[1]
        crops[i] = crop * rng.uniform(0.85, 1.15)  # exposure
        discs[i] = disc / RENDER
    return crops, discs


def _lesion(concepts: np.ndarray, disc: np.ndarray, rng: np.random.Generator):
    """Mask [R, R] in [0, 1], colour [3] and texture [R, R] of one lesion drawn from its concepts."""
    big = SIZE * RENDER
    large, pigmented, orange, irregular, mottled, near = concepts.astype(bool)
    radius = rng.uniform(5.5, 7.5) if large else rng.uniform(2.5, 3.5)  # SIZE pixels
    for _ in range(1000):  # a centre at the wanted distance from the disc, inside the crop
        dist = (rng.uniform(1.4, 2.3) if near else rng.uniform(3.3, 5.0)) * DISC_RADIUS
        angle = rng.uniform(0, 2 * np.pi)
        centre = disc + dist * np.array([np.sin(angle), np.cos(angle)])
        if np.all(centre >= radius * 0.4) and np.all(centre <= SIZE - 1 - radius * 0.4):
            break
    else:
        raise RuntimeError(f"no lesion position {dist:.1f} px from the disc at {disc} fits the crop")
    yy, xx = (np.mgrid[0:big, 0:big] + 0.5) / RENDER
    dy, dx = yy - centre[0], xx - centre[1]
    theta, rho = np.arctan2(dy, dx), np.hypot(dy, dx)
    aspect = rng.uniform(0.75, 1.0)
    rho = rho * (1 + (1 / aspect - 1) * np.sin(theta + rng.uniform(0, np.pi)) ** 2)
    edge = np.full_like(theta, radius)
    if irregular:  # lobulated outline: a few random harmonics
        for k in (2, 3, 4):
            edge += radius * rng.uniform(0.2, 0.32) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    mask = np.clip((edge - rho) * RENDER / 2 + 0.5, 0, 1)
    if pigmented and orange:
        colour = np.array([0.55, 0.30, 0.12])
    elif pigmented:
        colour = np.array([0.22, 0.17, 0.13])
    elif orange:
        colour = np.array([1.00, 0.55, 0.15])
    else:  # creamy yellow-white
        colour = np.array([0.95, 0.90, 0.62])
    colour = colour * rng.uniform(0.9, 1.1)
    if mottled:  # coarse blotches inside the lesion
        noise = rng.standard_normal((SIZE // 2, SIZE // 2))
        from scipy.ndimage import zoom

        texture = 1 + 0.45 * np.clip(zoom(noise, big / (SIZE // 2), order=1)[:big, :big], -2, 2)
    else:
        texture = np.ones((big, big))
    return mask, colour, texture


def fundus_cases(n: int, seed: int, rgb: np.ndarray | None = None):
    """``n`` planted cases: images [n, 3, SIZE, SIZE] (float32, [0, 1]), class labels [n]
    (int64) and concept labels [n, 6] (float32, 0/1). ``rgb`` is the photograph (default:
    :func:`load_fundus`)."""
    rng = np.random.default_rng(seed)
    rgb = load_fundus() if rgb is None else rgb
    labels = rng.integers(0, len(CLASSES), n)
    concepts = (rng.random((n, len(CONCEPTS))) < CONCEPT_TABLE[labels]).astype(np.float32)
    crops, discs = _backgrounds(rgb, n, rng)
    images = np.empty((n, 3, SIZE, SIZE), np.float32)
    for i in range(n):
        mask, colour, texture = _lesion(concepts[i], discs[i], rng)
        shaded = np.clip(
            colour[None, None] * texture[..., None] * (0.75 + 0.25 * crops[i] / max(crops[i].max(), 1e-6)), 0, 1
        )
        drawn = crops[i] * (1 - 0.9 * mask[..., None]) + 0.9 * mask[..., None] * shaded
        images[i] = _area_down(drawn, RENDER).transpose(2, 0, 1)
    return np.clip(images, 0, 1), labels.astype(np.int64), concepts


def standardize(images: np.ndarray) -> np.ndarray:
    """Per-channel zero mean / unit spread over each image (exposure and fundus pigment vary)."""
    mean = images.mean((2, 3), keepdims=True)
    std = images.std((2, 3), keepdims=True) + 1e-3
    return ((images - mean) / std).astype(np.float32)


class ConceptBottleneck(nn.Module):
    """image → CNN → concept scores in [0, 1] (Clip, an IF neuron's rate read out) → linear diagnosis.

    ``forward`` returns (class logits, concept scores); ``concept_logits`` the unclipped
    concept layer that the concept loss trains."""

    def __init__(self, width: int = 16, concepts: int = len(CONCEPTS), classes: int = len(CLASSES)):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * w * (SIZE // 8) ** 2, 64),
            nn.ReLU(),
        )
        self.concept_layer = nn.Linear(64, concepts)
        self.classifier = nn.Linear(concepts, classes)

    def concept_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The concept layer before its clip."""
        return self.concept_layer(self.features(x))

    def forward(self, x: torch.Tensor):
        scores = torch.clamp(self.concept_logits(x), 0.0, 1.0)
        return self.classifier(scores), scores


def train_bottleneck(
    model: ConceptBottleneck,
    x: np.ndarray,
    y: np.ndarray,
    c: np.ndarray,
    *,
    epochs: int,
    seed: int,
    concept_weight: float = 2.0,
    batch: int = 64,
    lr: float = 3e-3,
) -> ConceptBottleneck:
    """Joint concept-bottleneck training: cross-entropy on the diagnosis plus ``concept_weight``
    × squared error of the unclipped concept layer against the 0/1 concept labels (the clip has
    no gradient where it saturates; the regression keeps every concept unit learning)."""
    torch.manual_seed(seed)
    xt, yt, ct = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(c)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            xb = xt[idx]
            if torch.rand((), generator=gen) < 0.5:  # the eye's mirror image is another valid case
                xb = xb.flip(3)
            z = model.concept_logits(xb)
            logits = model.classifier(torch.clamp(z, 0.0, 1.0))
            loss = F.cross_entropy(logits, yt[idx]) + concept_weight * F.mse_loss(z, ct[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def macro_f1(predicted: np.ndarray, labels: np.ndarray, classes: int = len(CLASSES)) -> float:
    """Unweighted mean over classes of F1 (a class never predicted and never present counts 1)."""
    scores = []
    for k in range(classes):
        tp = np.sum((predicted == k) & (labels == k))
        fp = np.sum((predicted == k) & (labels != k))
        fn = np.sum((predicted != k) & (labels == k))
        scores.append(1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); NaN with one class only."""
    from scipy.stats import rankdata

    positives = positives.astype(bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def export_bottleneck(model: ConceptBottleneck, path) -> Path:
    """ONNX with input 'x' [N, 3, SIZE, SIZE] and two outputs: 'logits' [N, 3] (first: what
    accuracy, calibration and fine-tuning read) and 'concepts' [N, 6] (the concept layer)."""
    import io
    import warnings

    from snncompiler.fileio import write_bytes

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.zeros(1, 3, SIZE, SIZE),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["logits", "concepts"],
            dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}, "concepts": {0: "N"}},
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, buffer.getvalue())
    return path


def ort_outputs(path, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """Every output of an ONNX model under onnxruntime (the ANN oracle), in graph order."""
    from snncompiler.formats.onnx.ort import OrtModel

    session = OrtModel(path).session
    return tuple(session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x, np.float32)}))
