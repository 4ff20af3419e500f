"""One-shot organ segmentation: train on ONE synthetic subject (cosine-mixture head, Cui et al.,
TMI 2021), export the spike-friendly form to ONNX, compile it and compare ANN and SNN Dice at every T.

    python -m apps.medical            # full run: 50 test subjects, writes apps/medical/results.json
    python -m apps.medical --quick    # a few test subjects, fewer iterations (the test)
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn

from apps.common import app_args, compare, print_table, write_json
from apps.medical.task import (CLASSES, ORGANS, Encoder, MaxHead, MixtureHead, abdomen, augment, dice_scores,
                               standardize, train_segmenter)
from snncompiler.workloads import export_onnx

SIZE = 32
MODES = 3
SCALE = 10.0


def main(argv=None) -> dict:
    """Train, export, compile and compare; print the table and write the results JSON; return the record."""
    args = app_args(__doc__.splitlines()[0], "medical", argv)
    iterations, n_test = (150, 10) if args.quick else (600, 50)
    train_x, train_y = abdomen(1, seed=1000 + args.seed, size=SIZE)
    raw_test_x, test_y = abdomen(n_test, seed=2000 + args.seed, size=SIZE)
    test_x = standardize(raw_test_x)

    def score(outputs: np.ndarray) -> dict:
        return dice_scores(outputs.argmax(1), test_y)

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    model = train_segmenter(nn.Sequential(Encoder(), MixtureHead(modes=MODES, scale=SCALE)), train_x, train_y,
                            iterations=iterations, seed=args.seed)
    train_s = time.perf_counter() - t0
    exported = nn.Sequential(model[0], MaxHead(model[1])).eval()
    with torch.no_grad():
        xt = torch.from_numpy(test_x)
        train_form, export_form = model(xt).argmax(1).numpy(), exported(xt).argmax(1).numpy()
    onnx_path = export_onnx(exported, test_x.shape[1:], args.out / "medical.onnx")

    # calibration sees only what training saw: augmented copies of the one training subject
    calib_x, _ = augment(torch.from_numpy(train_x), torch.from_numpy(train_y), 64,
                         torch.Generator().manual_seed(3000 + args.seed))
    record = compare("medical", onnx_path, calib_x.numpy(), test_x, score, timesteps=args.timesteps,
                     out_dir=args.out)

    # the plain linear 1x1 head, same encoder and training: what the mixture head costs here
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    linear = train_segmenter(nn.Sequential(Encoder(), nn.Conv2d(16, CLASSES, 1)), train_x, train_y,
                             iterations=iterations, seed=args.seed)
    with torch.no_grad():
        baseline = dict(score(linear(xt).numpy()), train_seconds=round(time.perf_counter() - t0, 2))
    record.update({
        "task": "one-shot 4-class segmentation (background/body + " + ", ".join(o[0] for o in ORGANS)
                + f") of synthetic {SIZE}x{SIZE} abdomen images; metrics: per-organ Dice (mean over subjects), "
                  "their mean, pixel accuracy",
        "data": {"size": SIZE, "train_subjects": 1, "test_subjects": n_test, "calib_images": len(calib_x),
                 "iterations": iterations, "batch": 8, "seed": args.seed},
        "train_threads": 1,
        "head": {"modes": MODES, "scale": SCALE, "classes": CLASSES},
        "train_seconds": round(train_s, 2),
        "torch_train_form": dice_scores(train_form, test_y),
        "torch_export_form": dice_scores(export_form, test_y),
        "export_argmax_agreement": float((train_form == export_form).mean()),
        "linear_head_torch": baseline,
    })
    print(f"trained on 1 subject ({iterations} iterations) in {train_s:.1f} s; train-form (softmax mixture, "
          f"cosine) mean Dice {record['torch_train_form']['mean_dice']:.4f}, export form (hard max, no "
          f"embedding norm) {record['torch_export_form']['mean_dice']:.4f}, argmax agreement "
          f"{100 * record['export_argmax_agreement']:.2f}% of test pixels")
    print(f"linear 1x1 head, same encoder and training: mean Dice {baseline['mean_dice']:.4f}")
    print_table(record, [o[0] for o in ORGANS] + ["mean_dice", "pixel_acc"])
    write_json(record, args.results)
    return record


if __name__ == "__main__":
    main()
