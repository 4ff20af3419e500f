"""What the medical apps share: the real MRI they run on, the geometry of oblique planes through it,
synthetic "subjects", Dice, the real-file loaders, and the study that compiles a trained model with
snnc and scores ANN and SNN (with calibration, fine-tuning and energy) at every T.

The data is real and ships inside the nilearn wheel (nothing downloads): the MNI152 2009a
symmetric T1 template (197×233×189 voxels, 1 mm) and its grey- and white-matter probability maps.
A "subject" is that brain warped by a random smooth deformation with its own intensity gain,
gamma, bias field and noise; its tissue labels are the same deformation applied to the
probability maps, so the ground truth of every sampled slice is exact.

Geometry is in millimetres, origin at the centre of the volume, axes those of the voxel grid.
A :class:`Plane` is a centre and two orthonormal in-plane axes; a slice of ``size``×``size``
pixels at ``spacing`` mm has pixel (i, j) at ``centre + (j - (size-1)/2)·spacing·u + (i - (size-1)/2)·spacing·v``.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

import snncompiler as snnc
from snncompiler.errors import SnncError
from snncompiler.fileio import write_bytes

#: The MNI152 files inside nilearn's package data.
MNI_FILES = {kind: f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz" for kind in ("t1", "gm", "wm")}
#: Tissue classes of the segmentation targets (label index = position).
TISSUES = ("background", "grey matter", "white matter")
#: The T every app reports.
TIMESTEPS = (1, 2, 4, 8, 16, 32, 64)


# ---- real files ----------------------------------------------------------------------------
def mni_path(kind: str) -> Path:
    """Path of the MNI152 ``kind`` file ("t1", "gm" or "wm") in the installed nilearn package."""
    try:
        import nilearn
    except ImportError:  # pragma: no cover - a dev-extra dependency
        raise SnncError("the medical apps need nilearn (pip install nilearn): its wheel ships the MNI152 MRI") from None
    if kind not in MNI_FILES:
        raise SnncError(f"kind: expected one of {', '.join(MNI_FILES)}, got {kind!r}")
    return Path(nilearn.__file__).parent / "datasets" / "data" / MNI_FILES[kind]


def load_nifti(path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """A NIfTI volume as (data float32, 4×4 affine, voxel size in mm); a missing, malformed or
    non-3-D file is a one-line :class:`SnncError` naming it."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise SnncError(f"{path}: no such file")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many kinds (ImageFileError, EOFError, zlib.error, ...)
        raise SnncError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise SnncError(f"{path}: expected a 3-D volume, got shape {list(data.shape)}")
    if not np.isfinite(data).all():
        raise SnncError(f"{path}: contains NaN or Inf voxels")
    return data, np.asarray(img.affine, dtype=np.float64), tuple(float(z) for z in img.header.get_zooms()[:3])


@dataclass(frozen=True)
class Plane:
    """An imaging plane: ``centre`` (mm) and orthonormal in-plane axes ``u`` (columns), ``v`` (rows)."""

    centre: np.ndarray
    u: np.ndarray
    v: np.ndarray

    @property
    def normal(self) -> np.ndarray:
        """Unit normal u × v."""
        return np.cross(self.u, self.v)

    def points(self, size: int, spacing: float) -> np.ndarray:
        """The mm coordinates of the slice's pixels, [3, size, size] (row i, column j)."""
        offsets = (np.arange(size) - (size - 1) / 2) * spacing
        return (
            self.centre[:, None, None]
            + offsets[None, None, :] * self.u[:, None, None]
            + offsets[None, :, None] * self.v[:, None, None]
        )

    def shifted(self, distance: float) -> Plane:
        """The parallel plane ``distance`` mm along the normal."""
        return Plane(self.centre + distance * self.normal, self.u, self.v)


def load_dicom(path) -> tuple[np.ndarray, Plane, tuple[float, float]]:
    """A DICOM slice as (pixels float32 [rows, cols] in rescaled units, its :class:`Plane` in patient
    mm from ImagePositionPatient/ImageOrientationPatient, pixel spacing (row, column) mm).

    The plane's centre is the image centre; ``u`` runs along a row (the first IOP triplet), ``v``
    down a column. A missing tag or unreadable file is a one-line :class:`SnncError` naming it."""
    import pydicom

    path = Path(path)
    if not path.is_file():
        raise SnncError(f"{path}: no such file")
    try:
        ds = pydicom.dcmread(str(path))
        pixels = ds.pixel_array.astype(np.float32)
    except Exception as exc:
        raise SnncError(f"{path}: not a readable DICOM image ({type(exc).__name__}: {exc})") from None
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if tag not in ds:
            raise SnncError(f"{path}: missing the {tag} tag (the slice's geometry)")
    pixels = pixels * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    position = np.asarray([float(p) for p in ds.ImagePositionPatient])
    orientation = np.asarray([float(o) for o in ds.ImageOrientationPatient])
    row_mm, col_mm = (float(s) for s in ds.PixelSpacing)
    u, v = orientation[:3], orientation[3:]
    if not (abs(np.linalg.norm(u) - 1) < 1e-3 and abs(np.linalg.norm(v) - 1) < 1e-3 and abs(u @ v) < 1e-3):
        raise SnncError(f"{path}: ImageOrientationPatient is not two orthonormal directions: {orientation.tolist()}")
    rows, cols = pixels.shape[-2:]
    # IPP is the centre of the first pixel; PixelSpacing is (between rows, between columns)
    centre = position + (cols - 1) / 2 * col_mm * u + (rows - 1) / 2 * row_mm * v
    return pixels, Plane(centre, u, v), (row_mm, col_mm)


# ---- the atlas and its subjects ------------------------------------------------------------
@dataclass
class Atlas:
    """The MNI152 brain at ``voxel_mm`` resolution: T1 (0..1), grey- and white-matter probabilities."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    voxel_mm: float

    def to_index(self, points: np.ndarray) -> np.ndarray:
        """Voxel indices of mm coordinates [3, ...] (origin at the volume's centre)."""
        centre = (np.asarray(self.t1.shape, dtype=np.float64) - 1) / 2
        return points / self.voxel_mm + centre.reshape((3,) + (1,) * (points.ndim - 1))

    @property
    def extent_mm(self) -> np.ndarray:
        """Size of the volume along each axis, mm."""
        return np.asarray(self.t1.shape) * self.voxel_mm


_ATLAS_CACHE: dict[int, Atlas] = {}


def load_mni(downsample: int = 2) -> Atlas:
    """The MNI152 T1 and tissue maps from nilearn's package data, block-averaged by ``downsample``
    (2: 2 mm voxels, 98×116×94, loads in about a second); cached per process."""
    if downsample not in _ATLAS_CACHE:
        volumes = []
        for kind in ("t1", "gm", "wm"):
            data, _, zooms = load_nifti(mni_path(kind))
            data = data / 255.0  # all three are stored as uint8 0..255
            if downsample > 1:
                shape = [s // downsample for s in data.shape]
                data = data[: shape[0] * downsample, : shape[1] * downsample, : shape[2] * downsample]
                data = data.reshape(shape[0], downsample, shape[1], downsample, shape[2], downsample).mean((1, 3, 5))
            volumes.append(np.ascontiguousarray(data, dtype=np.float32))
        _ATLAS_CACHE[downsample] = Atlas(*volumes, voxel_mm=float(zooms[0]) * downsample)
    return _ATLAS_CACHE[downsample]


def normalise(images: np.ndarray) -> np.ndarray:
    """Per-image z-score over all but the first axis (the usual MR preprocessing: removes each
    subject's gain and offset), float32."""
    dims = tuple(range(1, images.ndim))
    mean, std = images.mean(dims, keepdims=True), images.std(dims, keepdims=True)
    return ((images - mean) / (std + 1e-6)).astype(np.float32)


def tissue_labels(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """Label per pixel (0 background incl. CSF, 1 grey matter, 2 white matter): the most probable of
    (1 - gm - wm, gm, wm)."""
    return np.stack([1 - gm - wm, gm, wm]).argmax(0).astype(np.int64)


@dataclass
class Subject:
    """The atlas seen through a random smooth deformation and an intensity model.

    The deformation is a displacement field on a coarse control grid (``grid`` points per axis
    over the volume, normal with ``amplitude_mm`` standard deviation), interpolated with cubic
    B-splines: the subject's value at x is the atlas's at x + d(x). Intensities are
    gain · t1^gamma · (1 + bias · (x · direction) / 100 mm) + noise.
    """

    atlas: Atlas
    control: np.ndarray  # [3, g, g, g] displacement in mm
    gain: float = 1.0
    gamma: float = 1.0
    bias: float = 0.0
    bias_direction: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0]))
    noise: float = 0.0
    #: added to grey matter (times its probability) in the x > 0 hemisphere: a planted second
    #: appearance mode of one class (0: none)
    gm_boost: float = 0.0

    @classmethod
    def random(
        cls,
        atlas: Atlas,
        seed: int,
        *,
        amplitude_mm: float = 4.0,
        grid: int = 5,
        appearance: bool = True,
        gm_boost: float = 0.0,
    ) -> Subject:
        """A subject drawn deterministically from ``seed`` (with ``appearance`` False only the
        deformation varies). The atlas itself is ``Subject(atlas, np.zeros((3, 2, 2, 2)))``."""
        rng = np.random.default_rng(seed)
        control = rng.normal(0, amplitude_mm, (3, grid, grid, grid))
        if not appearance:
            return cls(atlas, control, gm_boost=gm_boost)
        direction = rng.normal(size=3)
        return cls(
            atlas,
            control,
            gain=float(rng.uniform(0.8, 1.2)),
            gamma=float(rng.uniform(0.75, 1.35)),
            bias=float(rng.uniform(0, 0.3)),
            bias_direction=direction / np.linalg.norm(direction),
            noise=float(rng.uniform(0.01, 0.04)),
            gm_boost=gm_boost,
        )

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """d(x) at mm coordinates [3, ...]: cubic-spline interpolation of the control grid."""
        g = np.asarray(self.control.shape[1:], dtype=np.float64)
        half = self.atlas.extent_mm / 2
        # control point k of axis a sits at -half_a + k · extent_a / (g_a - 1)
        idx = (points + half.reshape((3,) + (1,) * (points.ndim - 1))) / (2 * half / (g - 1)).reshape(
            (3,) + (1,) * (points.ndim - 1)
        )
        flat = idx.reshape(3, -1)
        out = np.stack([ndimage.map_coordinates(c, flat, order=3, mode="nearest") for c in self.control])
        return out.reshape(points.shape)

    def sample(
        self, plane: Plane, size: int, spacing: float, *, noise_seed: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The slice through ``plane``: (image float32 [size, size], tissue labels int64,
        probabilities float32 [3, size, size]); trilinear interpolation, zero outside the volume."""
        points = plane.points(size, spacing)
        warped = self.atlas.to_index(points + self.displacement(points))
        flat = warped.reshape(3, -1)

        def take(vol):
            return ndimage.map_coordinates(vol, flat, order=1, mode="constant", cval=0.0).reshape(size, size)

        t1, gm, wm = take(self.atlas.t1), take(self.atlas.gm), take(self.atlas.wm)
        image = self.gain * np.clip(t1, 0, None) ** self.gamma
        if self.gm_boost:
            image = image + self.gm_boost * gm * (points[0] > 0)
        image = image * (1 + self.bias * np.tensordot(self.bias_direction, points, 1) / 100.0)
        if self.noise and noise_seed is not None:
            image = image + np.random.default_rng(noise_seed).normal(0, self.noise, image.shape)
        probs = np.stack([np.clip(1 - gm - wm, 0, 1), gm, wm]).astype(np.float32)
        return image.astype(np.float32), tissue_labels(gm, wm), probs


def sample_slices(
    subject: Subject, planes: list[Plane], size: int, spacing: float, *, noise_seed: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Slices of ``subject`` through each plane: (normalised images float32 [N, 1, size, size],
    tissue labels int64 [N, size, size]); the noise of slice k is drawn from ``noise_seed + k``."""
    images, labels = [], []
    for k, plane in enumerate(planes):
        image, label, _ = subject.sample(
            plane, size, spacing, noise_seed=None if noise_seed is None else noise_seed + k
        )
        images.append(image)
        labels.append(label)
    return normalise(np.stack(images)[:, None]), np.stack(labels)


def random_plane(
    rng: np.random.Generator, *, max_offset_mm: float = 25.0, max_tilt_deg: float = 35.0, base: str | None = None
) -> Plane:
    """An oblique plane: a random anatomical base orientation (axial, coronal or sagittal, or
    ``base``) tilted up to ``max_tilt_deg`` about a random in-plane axis, rotated in plane at random,
    centred within ``max_offset_mm`` of the brain's centre."""
    bases = {
        "axial": (np.eye(3)[0], np.eye(3)[1]),
        "coronal": (np.eye(3)[0], np.eye(3)[2]),
        "sagittal": (np.eye(3)[1], np.eye(3)[2]),
    }
    u, v = bases[base or ("axial", "coronal", "sagittal")[rng.integers(3)]]
    normal = np.cross(u, v)
    tilt_axis = _rotate(u, normal, rng.uniform(0, 2 * math.pi))
    tilt = math.radians(rng.uniform(-max_tilt_deg, max_tilt_deg))
    u, v = _rotate(u, tilt_axis, tilt), _rotate(v, tilt_axis, tilt)
    spin = rng.uniform(0, 2 * math.pi)
    normal = np.cross(u, v)
    u, v = _rotate(u, normal, spin), _rotate(v, normal, spin)
    return Plane(rng.uniform(-max_offset_mm, max_offset_mm, 3), u, v)


def _rotate(vector: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation of ``vector`` about unit ``axis``."""
    axis = axis / np.linalg.norm(axis)
    return (
        vector * math.cos(angle)
        + np.cross(axis, vector) * math.sin(angle)
        + axis * (axis @ vector) * (1 - math.cos(angle))
    )


def intersection_line(plane: Plane, other: Plane, size: int, spacing: float) -> tuple[np.ndarray, float] | None:
    """Where ``other`` cuts ``plane``, in ``plane``'s pixel coordinates: (unit normal n [2] over
    (row, column), offset c) with n·(i, j) + c = 0; None when the planes are (nearly) parallel."""
    n_other = other.normal
    a, b = n_other @ plane.v, n_other @ plane.u  # per pixel along rows, along columns (per mm)
    norm = math.hypot(a, b)
    if norm < 0.05:
        return None
    mid = (size - 1) / 2
    # the signed mm distance to ``other`` of pixel (i, j) is s·(a·i + b·j) + c, with
    # n_o · (c_p + (j - mid)·s·u + (i - mid)·s·v - c_o) expanded; its in-plane gradient is s·norm per pixel
    c = n_other @ (plane.centre - other.centre) - (a + b) * mid * spacing
    return np.array([a, b]) / norm, c / (spacing * norm)


def line_heatmap(line: tuple[np.ndarray, float] | None, size: int, sigma: float = 1.5) -> np.ndarray:
    """exp(-d²/2σ²) of every pixel's distance d (pixels) to ``line``; zeros for None."""
    if line is None:
        return np.zeros((size, size), np.float32)
    n, c = line
    ii, jj = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    distance = n[0] * ii + n[1] * jj + c
    return np.exp(-(distance**2) / (2 * sigma**2)).astype(np.float32)


# ---- metric --------------------------------------------------------------------------------
def dice(pred: np.ndarray, labels: np.ndarray, classes: int, names=None) -> dict:
    """Dice per foreground class (over all pixels of all images: one pooled score per class), their
    mean (``mean_dice``, the apps' metric) and pixel accuracy, from label maps [N, H, W]."""
    names = names or [f"class{k}" for k in range(classes)]
    scores = {}
    for k in range(1, classes):
        p, g = pred == k, labels == k
        total = int(p.sum() + g.sum())
        scores[names[k]] = float(2 * (p & g).sum() / total) if total else 1.0
    scores["mean_dice"] = float(np.mean([scores[names[k]] for k in range(1, classes)]))
    scores["pixel_acc"] = float((pred == labels).mean())
    return scores


# ---- the snnc study ------------------------------------------------------------------------
@dataclass
class Study:
    """How an app's trained model goes through snnc, and how it is scored.

    ``score(outputs) -> {metric: value}`` is the one metric function, applied to onnxruntime's
    ANN output, the artifact's ANN mode and the SNN at every T. ``finetune(model, T)`` (optional)
    returns a fine-tuned CompiledModel for T ≤ 4.
    """

    name: str
    onnx_path: Path
    calib_x: np.ndarray
    test_x: np.ndarray
    score: Callable[[np.ndarray], dict]
    metric: str = "mean_dice"
    tolerance: float = 0.02
    timesteps: tuple = TIMESTEPS
    low_timesteps: tuple = (1, 2, 4)
    calib_iterations: int = 100
    energy_samples: int = 8
    finetune: Callable | None = None
    out_dir: Path = Path(".")


def run_study(study: Study) -> tuple[dict, snnc.model.CompiledModel]:
    """Compile, score and price ``study``'s model; returns (record, the uncalibrated model).

    Record: ``ann`` (onnxruntime), ``ann_mode``, ``snn`` {T: scores} without calibration,
    ``advanced`` {T: scores} (``snnc.calibrate`` at each low T, with whether the calibration was
    kept), ``finetune`` {T: scores}, ``energy`` {T: synaptic ops and SNN/ANN energy in fp32 and
    int8} and ``smallest_T`` (the smallest T within ``tolerance`` of the ANN, with its energy)."""
    from apps.common import compare_model

    record, model = compare_model(
        study.name,
        study.onnx_path,
        study.calib_x,
        study.test_x,
        study.score,
        timesteps=study.timesteps,
        out_dir=study.out_dir,
        quiet=True,
    )

    energy_x = study.test_x[: study.energy_samples]
    record["energy"] = {}
    for t in study.timesteps:
        sops = model.synaptic_operations(energy_x, t)
        record["energy"][str(t)] = {
            "synaptic_ops": sops["snn_acs"] + sops["snn_macs"],
            "acs": sops["snn_acs"],
            "macs": sops["snn_macs"],
            "ann_macs": sops["ann_macs"],
            "energy_ratio_fp32": sops["energy_presets_pj"]["fp32"]["snn_over_ann"],
            "energy_ratio_int8": sops["energy_presets_pj"]["int8"]["snn_over_ann"],
        }

    record["advanced"], record["advanced_kept"] = {}, {}
    for t in study.low_timesteps:
        t0 = time.perf_counter()
        calibrated = snnc.calibrate(
            str(study.onnx_path),
            study.calib_x,
            timesteps=t,
            pipeline="advanced",
            iterations=study.calib_iterations,
            quiet=True,
        )
        record["advanced"][str(t)] = study.score(calibrated.run(study.test_x, t))
        check = calibrated.report.get("calibration_check", {})
        record["advanced_kept"][str(t)] = {
            "kept": check.get("kept", "calibrated"),
            "seconds": round(time.perf_counter() - t0, 2),
        }

    record["finetune"], record["finetune_notes"] = {}, {}
    if study.finetune is not None:
        for t in study.low_timesteps:
            t0 = time.perf_counter()
            try:
                tuned = study.finetune(model, t)
            except SnncError as exc:  # e.g. analog islands: say why the row is empty
                record["finetune_notes"][str(t)] = {"error": str(exc)}
                continue
            record["finetune"][str(t)] = study.score(tuned.run(study.test_x, t))
            record["finetune_notes"][str(t)] = dict(
                tuned.report.get("finetune", {}), seconds=round(time.perf_counter() - t0, 2)
            )

    record["metric"] = study.metric
    record["tolerance"] = study.tolerance
    record["smallest_T"] = smallest_t(record, study.metric, study.tolerance)
    return record, model


def smallest_t(record: dict, metric: str, tolerance: float) -> dict | None:
    """The smallest T at which any route (none, advanced, finetune) is within ``tolerance`` of the
    ANN's ``metric``, with that route, its value and the energy ratio at that T."""
    ann = record["ann"][metric]
    best = None
    for route in ("snn", "advanced", "finetune"):
        for t, scores in record.get(route, {}).items():
            if ann - scores[metric] <= tolerance and (best is None or int(t) < best["T"]):
                best = {"T": int(t), "route": "none" if route == "snn" else route, metric: scores[metric]}
    if best is not None and str(best["T"]) in record.get("energy", {}):
        energy = record["energy"][str(best["T"])]
        best.update(energy_ratio_fp32=energy["energy_ratio_fp32"], energy_ratio_int8=energy["energy_ratio_int8"])
    return best


def print_study(record: dict) -> None:
    """The table: one row per T with the metric for each route and the energy beside it."""
    metric = record["metric"]
    print(
        f"ANN (onnxruntime) {metric} {record['ann'][metric]:.4f}; artifact's ANN mode {record['ann_mode'][metric]:.4f}"
    )
    print(
        f"{'T':>4}  {'no calib':>9}  {'advanced':>9}  {'finetune':>9}  {'syn. ops':>12}  {'E/E_ANN fp32':>12}  "
        f"{'E/E_ANN int8':>12}"
    )
    for t, scores in record["snn"].items():
        adv, ft = record["advanced"].get(t), record["finetune"].get(t)
        energy = record["energy"].get(t, {})
        print(
            f"{t:>4}  {scores[metric]:9.4f}  {_cell(adv, metric):>9}  {_cell(ft, metric):>9}  "
            f"{energy.get('synaptic_ops', float('nan')):12,.0f}  {energy.get('energy_ratio_fp32', float('nan')):12.3f}  "
            f"{energy.get('energy_ratio_int8', float('nan')):12.3f}"
        )
    energy = next(iter(record["energy"].values()), {})
    print(f"ANN: {energy.get('ann_macs', float('nan')):,.0f} MACs per image")
    best = record["smallest_T"]
    if best:
        print(
            f"smallest T within {record['tolerance']} of the ANN: T={best['T']} ({best['route']}, {metric} "
            f"{best[metric]:.4f}), energy {best.get('energy_ratio_fp32', float('nan')):.3f}× the ANN's in fp32, "
            f"{best.get('energy_ratio_int8', float('nan')):.3f}× in int8"
        )
    else:
        print(f"no T reported is within {record['tolerance']} of the ANN")
    for t, note in record.get("finetune_notes", {}).items():
        if "error" in note:
            print(f"finetune at T={t}: {note['error']}")


def _cell(scores, metric) -> str:
    return "-" if scores is None else f"{scores[metric]:.4f}"


def json_summary(task: str, record: dict, seconds: float) -> dict:
    """The one object ``--json`` prints: {"task", "metric", "ann", "snn": {T: value}, "seconds"}
    (the SNN without calibration; the other routes under "advanced" and "finetune")."""
    metric = record["metric"]
    return {
        "task": task,
        "metric": metric,
        "ann": record["ann"][metric],
        "snn": {t: s[metric] for t, s in record["snn"].items()},
        "advanced": {t: s[metric] for t, s in record["advanced"].items()},
        "finetune": {t: s[metric] for t, s in record["finetune"].items()},
        "smallest_T": record["smallest_T"],
        "seconds": round(seconds, 1),
    }


def add_smoke(parser) -> None:
    """The medical apps' extra option: ``--smoke``, the smallest configuration (the CI tests)."""
    parser.add_argument("--smoke", action="store_true", help="the smallest configuration (what the CI test runs)")


# ---- fine-tuning a segmentation SNN --------------------------------------------------------
def finetune_segmentation(
    model,
    x: np.ndarray,
    y: np.ndarray,
    timesteps: int,
    *,
    score: Callable,
    metric: str,
    val: tuple[np.ndarray, np.ndarray],
    epochs: int = 4,
    lr: float = 5e-4,
    batch: int = 16,
    seed: int = 0,
    readout: Callable | None = None,
):
    """Fine-tune a compiled segmentation model at ``timesteps`` with a per-pixel TET loss.

    :func:`snncompiler.train.finetune` trains classifiers (labels [N]); a segmentation model's
    labels are [N, H, W], so this runs the same machinery (:class:`snncompiler.train.GraphNet`,
    :func:`snncompiler.train.run_steps`, surrogate gradients, θ learned) with cross-entropy per
    pixel at every step. ``readout`` maps the graph's output [T·B, ...] to class scores (the
    lowshot head's max over modes). The result is kept only if ``score``'s ``metric`` on ``val``
    improves, as ``finetune`` does; the report says which."""
    import torch.nn.functional as F

    from apps.common import torch_threads
    from snncompiler.model import CompiledModel
    from snncompiler.train import GraphNet, run_steps

    readout = readout or (lambda z: z)
    with torch_threads(1):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        net = GraphNet(model.graph, learn_theta=True)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        steps = epochs * max(1, math.ceil(len(xt) / batch))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        net.train()
        for _ in range(epochs):
            order = torch.randperm(len(xt), generator=gen)
            for start in range(0, len(xt), batch):
                idx = order[start : start + batch]
                out = readout(run_steps(net, xt[idx], timesteps).flatten(0, 1))
                loss = F.cross_entropy(out, yt[idx].repeat(timesteps, 1, 1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        tuned = CompiledModel(net.write_back(), {**model.options, "timesteps": int(timesteps)}, dict(model.report))
    before = score(model.run(val[0], timesteps))[metric]
    after = score(tuned.run(val[0], timesteps))[metric]
    kept = after > before
    result = tuned if kept else CompiledModel(model.graph, model.options, dict(model.report))
    result.report["finetune"] = {
        "timesteps": int(timesteps),
        "epochs": epochs,
        "lr": lr,
        "train_images": int(len(x)),
        "val_images": int(len(val[0])),
        f"val_{metric}_before": before,
        f"val_{metric}_after": after,
        "kept": kept,
    }
    return result


# ---- figure --------------------------------------------------------------------------------
def save_figure(
    path: Path, images: np.ndarray, truth: np.ndarray, ann: np.ndarray, snn: np.ndarray, snn_label: str, title: str
) -> Path:
    """A PNG with one row per example: input, ground truth, ANN and SNN label maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(images)
    fig, axes = plt.subplots(rows, 4, figsize=(8, 2 * rows + 0.4), squeeze=False)
    classes = max(int(truth.max()), 2)
    for r in range(rows):
        for c, (img, name) in enumerate(
            ((images[r], "input"), (truth[r], "ground truth"), (ann[r], "ANN"), (snn[r], snn_label))
        ):
            ax = axes[r, c]
            if c == 0:
                ax.imshow(img, cmap="gray")
            else:
                ax.imshow(img, cmap="viridis", vmin=0, vmax=classes, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, buffer.getvalue())
    return path
