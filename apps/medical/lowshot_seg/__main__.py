"""One-shot tissue segmentation of real MRI slices: train on the oblique slices of ONE deformed MNI152
subject with a multimodal cosine-mixture head (Cui et al., TMI 2021) or a plain linear head, test on
other subjects; export the spike-friendly form, compile it with snnc and compare ANN and SNN Dice.

    python -m apps.medical.lowshot_seg            # full run: writes apps/medical/lowshot_seg/results/
    python -m apps.medical.lowshot_seg --quick    # smaller (the CI test runs a smaller one still)
    python -m apps.medical.lowshot_seg --json     # one JSON object on stdout
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

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
from apps.medical.lowshot_seg.task import (
    CASES,
    CLASSES,
    MixtureHead,
    ModeScores,
    encoder,
    mode_max,
    one_shot_data,
    train_segmenter,
)
from examples.workloads import export_onnx

NAME = "medical.lowshot_seg"
RESULTS = Path(__file__).parent / "results"
MODES = 3
SCALE = 10.0
CONFIGS = {  # size, spacing mm, train slices, test subjects × slices, iterations, seeds, calibration iterations
    "full": dict(
        size=32,
        spacing=5.0,
        train_slices=48,
        test_subjects=4,
        test_slices=12,
        iterations=250,
        seeds=(0, 1, 2, 3, 4),
        calib_iterations=60,
        finetune_epochs=2,
        cases=tuple(CASES),
    ),
    "quick": dict(
        size=32,
        spacing=5.0,
        train_slices=32,
        test_subjects=3,
        test_slices=8,
        iterations=200,
        seeds=(0,),
        calib_iterations=30,
        finetune_epochs=1,
        cases=("tissue", "multimodal_local"),
    ),
    "smoke": dict(
        size=32,
        spacing=5.0,
        train_slices=24,
        test_subjects=2,
        test_slices=6,
        iterations=150,
        seeds=(0,),
        calib_iterations=20,
        finetune_epochs=1,
        cases=("tissue", "multimodal_local"),
    ),
}


def head_comparison(case: str, cfg: dict, out: dict) -> dict:
    """Mean Dice of the mixture and the linear head (same encoder, data and training) per seed."""
    rows = {}
    for seed in cfg["seeds"]:
        train_x, train_y, test_x, test_y = one_shot_data(
            case,
            seed,
            size=cfg["size"],
            spacing=cfg["spacing"],
            train_slices=cfg["train_slices"],
            test_subjects=cfg["test_subjects"],
            slices_per_test_subject=cfg["test_slices"],
        )
        row = {}
        for head in ("mixture", "linear"):
            torch.manual_seed(seed)
            layer = MixtureHead(modes=MODES, scale=SCALE) if head == "mixture" else nn.Conv2d(16, CLASSES, 1)
            model = train_segmenter(
                nn.Sequential(encoder(CASES[case][1]), layer), train_x, train_y, iterations=cfg["iterations"], seed=seed
            )
            with torch.no_grad():
                row[head] = dice(model(torch.from_numpy(test_x)).argmax(1).numpy(), test_y, CLASSES, TISSUES)
            if case == "tissue" and seed == cfg["seeds"][0]:  # the model that is compiled
                out[head] = (model, train_x, train_y, test_x, test_y)
        rows[str(seed)] = row
    mix = [r["mixture"]["mean_dice"] for r in rows.values()]
    lin = [r["linear"]["mean_dice"] for r in rows.values()]
    diff = np.subtract(mix, lin)
    return {
        "seeds": rows,
        "mixture_mean": float(np.mean(mix)),
        "linear_mean": float(np.mean(lin)),
        "mixture_minus_linear": float(diff.mean()),
        "mixture_minus_linear_std": float(diff.std()),
        "mixture_wins": int((diff > 0).sum()),
        "seeds_run": len(diff),
    }


def main(argv=None) -> dict:
    """Compare the heads over seeds in both cases, compile the mixture model of seed 0, print the
    tables (or one JSON object) and write results/; return the record."""
    started = time.perf_counter()
    args = app_args(__doc__.splitlines()[0], NAME, argv, timesteps=TIMESTEPS, configure=add_smoke)
    size = "smoke" if args.smoke else ("quick" if args.quick else "full")
    cfg = CONFIGS[size]
    results_dir = args.out if args.quick or args.smoke else RESULTS
    log = sys.stderr if args.json else sys.stdout
    with contextlib.redirect_stdout(log):
        models: dict = {}
        cases = {case: head_comparison(case, cfg, models) for case in cfg["cases"]}
        model, train_x, train_y, test_x, test_y = models["mixture"]
        exported = nn.Sequential(model[0], ModeScores(model[1])).eval()
        with torch.no_grad():
            xt = torch.from_numpy(test_x)
            train_form, export_form = model(xt).argmax(1).numpy(), mode_max(exported(xt)).argmax(1).numpy()
        onnx_path = export_onnx(exported, test_x.shape[1:], args.out / "lowshot_seg.onnx")

        def score(outputs: np.ndarray) -> dict:
            return dice(mode_max(outputs).argmax(1), test_y, CLASSES, TISSUES)

        # fine-tuning and calibration see only the one training subject (its own slices)
        cut = max(1, len(train_x) // 4)

        def finetune(compiled, timesteps):
            return finetune_segmentation(
                compiled,
                train_x[cut:],
                train_y[cut:],
                timesteps,
                score=lambda o: dice(mode_max(o).argmax(1), train_y[:cut], CLASSES, TISSUES),
                metric="mean_dice",
                val=(train_x[:cut], train_y[:cut]),
                epochs=cfg["finetune_epochs"],
                readout=lambda z: mode_max(z),
            )

        study = Study(
            "lowshot_seg",
            onnx_path,
            train_x,
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
                "task": "one-shot 3-class tissue segmentation (background, grey matter, white matter) of oblique "
                f"{cfg['size']}x{cfg['size']} slices ({cfg['spacing']} mm pixels) of the real MNI152 MRI: trained on "
                "one deformed subject, tested on other subjects; metric: mean Dice of grey and white matter",
                "config": dict(
                    cfg,
                    size_name=size,
                    modes=MODES,
                    scale=SCALE,
                    seeds=list(cfg["seeds"]),
                    cases={c: {"gm_boost": CASES[c][0], "encoder": CASES[c][1]} for c in cfg["cases"]},
                ),
                "head_comparison": cases,
                "torch_train_form": dice(train_form, test_y, CLASSES, TISSUES),
                "torch_export_form": dice(export_form, test_y, CLASSES, TISSUES),
                "export_argmax_agreement": float((train_form == export_form).mean()),
                "seconds": round(seconds, 1),
            }
        )
        snn_t = "32" if "32" in record["snn"] else max(record["snn"], key=int)
        snn_pred = mode_max(compiled.run(test_x[:4], int(snn_t))).argmax(1)
        with torch.no_grad():
            ann_pred = mode_max(exported(torch.from_numpy(test_x[:4]))).argmax(1).numpy()
        save_figure(
            results_dir / "lowshot_seg.png",
            test_x[:4, 0],
            test_y[:4],
            ann_pred,
            snn_pred,
            f"SNN T={snn_t}",
            "one-shot tissue segmentation (0 background, 1 grey, 2 white matter)",
        )
        write_json(record, results_dir / "results.json")
        if not args.json:
            print_report(record)
    if args.json:
        summary = json_summary(record["task"], record, seconds)
        summary["head_comparison"] = {c: {k: v for k, v in r.items() if k != "seeds"} for c, r in cases.items()}
        print(json.dumps(summary))
    return record


def print_report(record: dict) -> None:
    """The head comparison per case, then the SNN study table."""
    for case, r in record["head_comparison"].items():
        per_seed = ", ".join(
            f"{s}: {v['mixture']['mean_dice']:.3f}/{v['linear']['mean_dice']:.3f}" for s, v in r["seeds"].items()
        )
        print(
            f"[{case}] mean Dice mixture {r['mixture_mean']:.4f} vs linear {r['linear_mean']:.4f} "
            f"(difference {r['mixture_minus_linear']:+.4f} ± {r['mixture_minus_linear_std']:.4f}, mixture wins "
            f"{r['mixture_wins']}/{r['seeds_run']} seeds; per seed mixture/linear {per_seed})"
        )
    print(
        f"export form (folded prototype norm, no embedding norm, max over modes after the network): argmax "
        f"agreement {100 * record['export_argmax_agreement']:.2f}% of test pixels"
    )
    print_study(record)


if __name__ == "__main__":
    main()
