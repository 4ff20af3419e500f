"""GIRNet-style registration of real MRI slices with a co-trained lesion segmentation (Liu & Gu,
MICCAI 2023), compiled to a spiking network: endpoint error outside the lesion and lesion Dice
for the ANN and the SNN at every T; the warp runs outside the compiled network on the SNN's flow.

    python -m apps.medical.registration           # full run: table, PNG and results.json beside the app
    python -m apps.medical.registration --quick   # the small configuration (under 3 minutes on 2 cores)
    python -m apps.medical.registration --json    # one JSON object on stdout
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from apps.common import app_args, torch_threads, write_json
from apps.medical.common import Study, json_summary, print_study, run_study
from apps.medical.registration.task import (
    GirNet,
    export_girnet,
    registration_pairs,
    registration_scores,
    train_girnet,
    warp,
)
from snncompiler.fileio import write_bytes

NAME = "medical.registration"
TASK = (
    "registration of real MNI152 MRI slice pairs (known smooth deformation, planted lesion in the moving "
    "image) with a co-trained lesion segmentation; metrics: lesion Dice, mean endpoint error (pixels) "
    "outside the lesion"
)
#: (image size, train pairs, test pairs, epochs, U-Net width, calibration iterations)
CONFIGS = {"full": (32, 384, 96, 15, 12, 40), "quick": (32, 256, 48, 12, 12, 40)}
#: Why the fine-tuning rows are empty.
FINETUNE_NOTE = (
    "not applicable: snnc.train.finetune trains a classifier (labels [N], TET cross-entropy on the "
    "first output); this network's output is a dense signed flow field (a regression) plus a "
    "per-pixel lesion logit, for which it has no loss"
)
#: How far (pixels) the SNN's endpoint error may exceed the ANN's for "within tolerance".
EPE_TOLERANCE = 0.1


def make_scorer(test: dict):
    """The one metric function: lesion Dice, endpoint errors, and the mean squared difference
    between the fixed image and the moving image warped by the predicted flow, over brain
    pixels outside the lesion (the warp is torch's grid sample, run here, outside the network)."""
    moving, fixed = torch.from_numpy(test["x"][:, 1:2]), test["x"][:, 0]
    region = (test["brain"] > 0.5) & (test["lesion_fixed"] < 0.5)

    def score(outputs) -> dict:
        outputs = np.asarray(outputs[0] if isinstance(outputs, tuple) else outputs)
        scores = registration_scores(outputs, test)
        with torch.no_grad():
            warped = warp(moving, torch.from_numpy(np.ascontiguousarray(outputs[:, :2]))).numpy()[:, 0]
        scores["warped_mse_outside"] = float(((warped - fixed)[region] ** 2).mean())
        return scores

    return score


def smallest_both(record: dict) -> dict | None:
    """The smallest T at which a route is within 0.02 lesion Dice AND ``EPE_TOLERANCE`` pixels
    of endpoint error of the ANN, with the energy ratio there."""
    ann = record["ann"]
    best = None
    for route in ("snn", "advanced", "finetune"):
        for t, s in record.get(route, {}).items():
            ok = (
                ann["lesion_dice"] - s["lesion_dice"] <= 0.02 and s["epe_outside"] - ann["epe_outside"] <= EPE_TOLERANCE
            )
            if ok and (best is None or int(t) < best["T"]):
                best = {
                    "T": int(t),
                    "route": "none" if route == "snn" else route,
                    "lesion_dice": s["lesion_dice"],
                    "epe_outside": s["epe_outside"],
                }
    if best is not None and str(best["T"]) in record.get("energy", {}):
        energy = record["energy"][str(best["T"])]
        best.update(energy_ratio_fp32=energy["energy_ratio_fp32"], energy_ratio_int8=energy["energy_ratio_int8"])
    return best


def save_registration_figure(
    path: Path, test: dict, ann: np.ndarray, snn: np.ndarray, snn_label: str, rows: int = 3
) -> Path:
    """A PNG with one row per pair: fixed, moving with the true lesion outline, the moving image
    warped by the true flow, by the ANN's and by the SNN's flow (each with its lesion outline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    moving = torch.from_numpy(test["x"][:rows, 1:2])
    with torch.no_grad():
        warped = {
            name: warp(moving, torch.from_numpy(np.ascontiguousarray(flow[:rows, :2]))).numpy()[:, 0]
            for name, flow in (("truth", test["flow"]), ("ann", ann), ("snn", snn))
        }
    fig, axes = plt.subplots(rows, 5, figsize=(10, 2 * rows + 0.4), squeeze=False)
    for r in range(rows):
        panels = [
            (test["x"][r, 0], None, "fixed"),
            (test["x"][r, 1], test["lesion_moving"][r], "moving + lesion"),
            (warped["truth"][r], None, "warped, true flow"),
            (warped["ann"][r], ann[r, 2] > 0, "warped, ANN flow + lesion"),
            (warped["snn"][r], snn[r, 2] > 0, f"warped, {snn_label}"),
        ]
        for c, (image, outline, title) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray", vmin=0, vmax=1.1)
            if outline is not None:
                ax.contour(np.asarray(outline, np.float32), levels=[0.5], colors="r", linewidths=0.8)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, buffer.getvalue())
    return path


def main(argv=None) -> dict:
    """Build the pairs, train, export, compile and study; print the table (or the JSON) and
    write results.json and the PNG; return the record."""
    args = app_args(__doc__.splitlines()[0], NAME, argv)
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        record = _run(args)
    if args.json:
        summary = json_summary(TASK, record, record["seconds"])
        summary["epe_outside"] = {
            "ann": record["ann"]["epe_outside"],
            "snn": {t: s["epe_outside"] for t, s in record["snn"].items()},
        }
        print(json.dumps(summary), file=out)
    return record


def _figure_dir(args) -> Path:
    """results/ beside the app for the full run (the README shows it); --out for --quick runs."""
    return args.out if args.quick else Path(__file__).parent / "results"


def _run(args) -> dict:
    start = time.perf_counter()
    size, n_train, n_test, epochs, width, calib_iterations = CONFIGS["quick" if args.quick else "full"]
    train = registration_pairs(n_train, seed=1000 + args.seed, size=size)
    test = registration_pairs(n_test, seed=2000 + args.seed, size=size)
    t0 = time.perf_counter()
    with torch_threads(1):
        torch.manual_seed(args.seed)
        net = train_girnet(GirNet(width), train, epochs=epochs, seed=args.seed)
    train_s = time.perf_counter() - t0
    onnx_path = export_girnet(net, size, args.out / "registration.onnx")
    score = make_scorer(test)
    timesteps = tuple(t for t in args.timesteps if t <= 64) or args.timesteps
    study = Study(
        NAME,
        onnx_path,
        train["x"][: 128 if args.quick else 256],
        test["x"],
        score,
        metric="lesion_dice",
        tolerance=0.02,
        timesteps=timesteps,
        calib_iterations=calib_iterations,
        finetune=None,
        out_dir=args.out,
    )
    record, model = run_study(study)
    record["finetune_not_applicable"] = FINETUNE_NOTE
    record["smallest_T_dice_and_epe"] = smallest_both(record)
    record.update(
        {
            "task": TASK,
            "data": {
                "image": "nilearn MNI152 T1 (real), deformations and lesions planted",
                "size": size,
                "train_pairs": n_train,
                "test_pairs": n_test,
                "epochs": epochs,
                "width": width,
                "seed": args.seed,
            },
            "warp": "torch grid_sample on the predicted flow, outside the compiled network (snnc has no GridSample op)",
            "train_seconds": round(train_s, 2),
            "train_threads": 1,
        }
    )
    record["seconds"] = round(time.perf_counter() - start, 1)
    if not args.json:
        print(f"trained {n_train} pairs ({size}x{size}), {epochs} epochs in {train_s:.1f} s; test {n_test} pairs")
        print_study(record)
        _print_registration(record)
        t_show = 32 if "32" in record["snn"] else list(record["snn"])[-1]
        ann_out = np.asarray(model.ann(test["x"][:3]))
        snn_out = np.asarray(model.run(test["x"][:3], int(t_show)))
        figure = save_registration_figure(
            _figure_dir(args) / ("quick.png" if args.quick else "pairs.png"), test, ann_out, snn_out, f"SNN T={t_show}"
        )
        print(f"wrote {figure}")
    write_json(record, args.results)
    return record


def _print_registration(record: dict) -> None:
    """Endpoint error and warped-image error per T and route, beside the identity baseline."""
    ann = record["ann"]
    print(
        f"endpoint error outside the lesion (pixels): no registration {ann['epe_identity']:.3f}, "
        f"ANN {ann['epe_outside']:.3f} (warped MSE {ann['warped_mse_outside']:.5f})"
    )
    print(f"{'T':>4}  {'EPE none':>9}  {'EPE adv.':>9}  {'MSE none':>9}")
    for t, s in record["snn"].items():
        adv = record["advanced"].get(t)
        print(
            f"{t:>4}  {s['epe_outside']:9.3f}  {adv['epe_outside'] if adv else float('nan'):9.3f}  "
            f"{s['warped_mse_outside']:9.5f}"
        )
    best = record["smallest_T_dice_and_epe"]
    if best:
        print(
            f"smallest T within 0.02 Dice and {EPE_TOLERANCE} px EPE of the ANN: T={best['T']} ({best['route']}), "
            f"energy {best.get('energy_ratio_fp32', float('nan')):.3f}× the ANN's in fp32"
        )
    print(f"fine-tuning: {FINETUNE_NOTE}")


if __name__ == "__main__":
    main()
