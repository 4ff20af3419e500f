"""Self-supervised pretext tasks on imaging planes (Zhang et al., MedIA 2024) on the real MNI152 MRI:
pretrain an encoder to regress where anatomy-oriented planes cut an oblique slice (line heatmaps) and
where the slice sits in its parallel stack, then segment tissue from a few labelled slices; Dice with
and without pretraining over seeds, and the segmenter compiled with snnc (ANN vs SNN at every T).

    python -m apps.medical.imaging_planes            # full run: writes apps/medical/imaging_planes/results/
    python -m apps.medical.imaging_planes --quick    # smaller (the CI test runs a smaller one still)
    python -m apps.medical.imaging_planes --json     # one JSON object on stdout
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from apps.common import app_args, write_json
from apps.medical.common import (
    TIMESTEPS,
    TISSUES,
    Study,
    add_smoke,
    dice,
    finetune_segmentation,
    json_summary,
    print_study,
    run_study,
    save_figure,
)
from apps.medical.imaging_planes.task import (
    CLASSES,
    PRETEXTS,
    PlaneNet,
    labelled_data,
    pretext_quality,
    pretrain,
    unlabelled_data,
)
from apps.medical.imaging_planes.task import finetune_segmentation as train_target
from examples.workloads import export_onnx

NAME = "medical.imaging_planes"
RESULTS = Path(__file__).parent / "results"
SLICES_PER_LABELLED_SUBJECT = 4
CONFIGS = {
    "full": dict(
        size=32,
        spacing=5.0,
        seeds=(0, 1, 2),
        labelled_subjects=(1, 3),
        variants=tuple(PRETEXTS),
        pretext_subjects=4,
        pretext_slices=40,
        pretrain_iterations=250,
        target_iterations=150,
        test_subjects=3,
        test_slices=16,
        calib_iterations=60,
        finetune_epochs=2,
        study="both",
    ),
    "quick": dict(
        size=32,
        spacing=5.0,
        seeds=(0,),
        labelled_subjects=(1,),
        variants=("none", "both"),
        pretext_subjects=4,
        pretext_slices=32,
        pretrain_iterations=150,
        target_iterations=120,
        test_subjects=2,
        test_slices=12,
        calib_iterations=30,
        finetune_epochs=2,
        study="both",
    ),
    "smoke": dict(
        size=32,
        spacing=5.0,
        seeds=(0,),
        labelled_subjects=(1,),
        variants=("none", "both"),
        pretext_subjects=3,
        pretext_slices=24,
        pretrain_iterations=80,
        target_iterations=100,
        test_subjects=2,
        test_slices=8,
        calib_iterations=20,
        finetune_epochs=1,
        study="both",
    ),
}


def pretraining_study(cfg: dict) -> tuple[dict, dict]:
    """Dice of the target task per (variant, labelled subjects, seed); returns (record, the
    models of the first seed keyed by (variant, subjects), with their labelled data)."""
    size, spacing = cfg["size"], cfg["spacing"]
    test_x, test_y = labelled_data(0, cfg["test_subjects"], cfg["test_slices"], size, spacing, offset=50_000)
    held_out = unlabelled_data(500, 2, 16, size, spacing)
    table, models, quality = {}, {}, {}
    for seed in cfg["seeds"]:
        pretext = unlabelled_data(seed, cfg["pretext_subjects"], cfg["pretext_slices"], size, spacing)
        label_x, label_y = labelled_data(
            seed, max(cfg["labelled_subjects"]), SLICES_PER_LABELLED_SUBJECT, size, spacing
        )
        for variant in cfg["variants"]:
            torch.manual_seed(seed)
            net = PlaneNet()
            if PRETEXTS[variant]:
                pretrain(net, pretext, PRETEXTS[variant], iterations=cfg["pretrain_iterations"], seed=seed)
                quality.setdefault(variant, {})[str(seed)] = pretext_quality(net, held_out)
            for subjects in cfg["labelled_subjects"]:
                n = subjects * SLICES_PER_LABELLED_SUBJECT
                model = train_target(
                    copy.deepcopy(net), label_x[:n], label_y[:n], iterations=cfg["target_iterations"], seed=seed
                )
                with torch.no_grad():
                    scores = dice(model(torch.from_numpy(test_x)).argmax(1).numpy(), test_y, CLASSES, TISSUES)
                table.setdefault(variant, {}).setdefault(str(subjects), {})[str(seed)] = scores
                if seed == cfg["seeds"][0]:
                    models[(variant, subjects)] = (model, label_x[:n], label_y[:n], pretext[0])
    summary = {}
    for variant, by_subjects in table.items():
        for subjects, by_seed in by_subjects.items():
            values = np.array([s["mean_dice"] for s in by_seed.values()])
            scratch = np.array([s["mean_dice"] for s in table["none"][subjects].values()])
            gain = values - scratch
            summary.setdefault(variant, {})[subjects] = {
                "mean_dice": float(values.mean()),
                "std": float(values.std()),
                "gain_over_scratch": float(gain.mean()),
                "gain_std": float(gain.std()),
                "seeds_better_than_scratch": int((gain > 0).sum()),
                "seeds": len(values),
            }
    return {"per_seed": table, "summary": summary, "pretext_quality": quality, "test_slices": int(len(test_x))}, {
        "models": models,
        "test": (test_x, test_y),
    }


def main(argv=None) -> dict:
    """Run the pretraining study, compile the first seed's pretrained segmenter, print the tables
    (or one JSON object) and write results/; return the record."""
    started = time.perf_counter()
    args = app_args(__doc__.splitlines()[0], NAME, argv, timesteps=TIMESTEPS, configure=add_smoke)
    size = "smoke" if args.smoke else ("quick" if args.quick else "full")
    cfg = CONFIGS[size]
    results_dir = args.out if args.quick or args.smoke else RESULTS
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        pretraining, kept = pretraining_study(cfg)
        print_pretraining(pretraining, len(cfg["seeds"]))  # before the SNN study: the long part is done
        test_x, test_y = kept["test"]
        subjects = max(cfg["labelled_subjects"])
        model, label_x, label_y, unlabelled_x = kept["models"][(cfg["study"], subjects)]
        onnx_path = export_onnx(model, test_x.shape[1:], args.out / "imaging_planes.onnx")

        def score(outputs: np.ndarray) -> dict:
            return dice(outputs.argmax(1), test_y, CLASSES, TISSUES)

        cut = max(1, len(label_x) // 4)

        def finetune(compiled, timesteps):
            return finetune_segmentation(
                compiled,
                label_x[cut:],
                label_y[cut:],
                timesteps,
                score=lambda o: dice(o.argmax(1), label_y[:cut], CLASSES, TISSUES),
                metric="mean_dice",
                val=(label_x[:cut], label_y[:cut]),
                epochs=cfg["finetune_epochs"],
                batch=4,
            )

        # calibration needs no labels: the unlabelled pretext slices
        study = Study(
            "imaging_planes",
            onnx_path,
            unlabelled_x[:128],
            test_x,
            score,
            timesteps=args.timesteps,
            calib_iterations=cfg["calib_iterations"],
            finetune=finetune,
            out_dir=args.out,
        )
        record, compiled = run_study(study)
        seconds = time.perf_counter() - started
        record.update(
            {
                "task": "3-class tissue segmentation (background, grey, white matter) of oblique "
                f"{cfg['size']}x{cfg['size']} slices ({cfg['spacing']} mm pixels) of the real MNI152 MRI from "
                f"{SLICES_PER_LABELLED_SUBJECT} labelled slices per subject, with and without imaging-plane "
                "pretext pretraining (intersection-line heatmaps, relative slice location); metric: mean Dice of "
                "grey and white matter",
                "config": dict(
                    cfg,
                    size_name=size,
                    slices_per_labelled_subject=SLICES_PER_LABELLED_SUBJECT,
                    seeds=list(cfg["seeds"]),
                ),
                "pretraining": pretraining,
                "compiled_model": f"seed {cfg['seeds'][0]}, pretext '{cfg['study']}', {subjects} labelled subject(s)",
                "seconds": round(seconds, 1),
            }
        )
        snn_t = "32" if "32" in record["snn"] else max(record["snn"], key=int)
        snn_pred = compiled.run(test_x[:4], int(snn_t)).argmax(1)
        with torch.no_grad():
            ann_pred = model(torch.from_numpy(test_x[:4])).argmax(1).numpy()
        save_figure(
            results_dir / "imaging_planes.png",
            test_x[:4, 0],
            test_y[:4],
            ann_pred,
            snn_pred,
            f"SNN T={snn_t}",
            "tissue segmentation after pretext pretraining (0 background, 1 grey, 2 white)",
        )
        write_json(record, results_dir / "results.json")
        if not args.json:
            print(f"compiled: {record['compiled_model']}")
            print_study(record)
    if args.json:
        summary = json_summary(record["task"], record, seconds)
        summary["pretraining"] = pretraining["summary"]
        print(json.dumps(summary))
    return record


def print_pretraining(pretraining: dict, seeds: int) -> None:
    """Dice with and without pretraining (mean ± std over seeds) and the pretext tasks' quality."""
    summary = pretraining["summary"]
    print(f"target-task mean Dice over {seeds} seed(s), {pretraining['test_slices']} test slices of unseen subjects:")
    print(f"{'pretraining':>12}  " + "  ".join(f"{s + ' subj.':>26}" for s in next(iter(summary.values()))))
    for variant, by_subjects in summary.items():
        cells = [
            f"{r['mean_dice']:.4f}±{r['std']:.4f} ({r['gain_over_scratch']:+.4f}, {r['seeds_better_than_scratch']}/{r['seeds']})"
            for r in by_subjects.values()
        ]
        print(f"{variant:>12}  " + "  ".join(f"{c:>26}" for c in cells))
    print("(in brackets: mean gain over training from scratch, seeds where pretraining beat scratch)")
    for variant, by_seed in pretraining["pretext_quality"].items():
        q = {k: np.mean([s[k] for s in by_seed.values()]) for k in next(iter(by_seed.values()))}
        print(
            f"pretext '{variant}' on held-out slices: location R² {q['location_r2']:.3f}, "
            f"line-heatmap R² {q['line_heatmap_r2']:.3f}"
        )


if __name__ == "__main__":
    main()
