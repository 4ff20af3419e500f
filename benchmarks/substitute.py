"""What `--substitute relu` gives on analog-heavy networks: MobileNetV3-small and EfficientNet-B0.

    python -m benchmarks.substitute            # ≈ 5-10 min on 2 shared cores
    python -m benchmarks.substitute --quick    # smoke run

Each torchvision architecture (untrained weights) is trained briefly on the generated 10-class
textured-shapes task at 32×32 (examples.workloads.textured_shapes), exported to ONNX, and
scored on a held-out test split at T=32:

* ``ann``: the trained ANN;
* ``snn``: compiled as is (HardSwish / SiLU stay analog islands);
* ``snn_substitute``: compiled with ``substitute="relu"`` (HardSwish, SiLU → clipped ReLU
  neurons, no retraining; ``ann_substitute`` is that compiled model's own ANN mode);
* ``finetune``: ``snnc.train.finetune`` of the substituted model, or the reason it refused;
* ``retrained``: the ANN with those activations replaced by ReLU in torch and trained a few
  more epochs, then compiled (the way back when finetune cannot run).

Writes benchmarks/results/substitute.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import snncompiler as snnc
from examples.workloads import evaluate, export_onnx, textured_shapes, train_classifier
from snncompiler.fileio import write_text
from snncompiler.train.finetune import finetune

ARCHS = ("mobilenet_v3_small", "efficientnet_b0")
T = 32


def _relu_everywhere(model: nn.Module) -> nn.Module:
    """A copy with every HardSwish / SiLU module replaced by ReLU (what --substitute relu does)."""
    model = copy.deepcopy(model)
    for module in model.modules():  # an in-place dropout after a ReLU would break its backward
        if hasattr(module, "inplace"):
            module.inplace = False
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, (nn.Hardswish, nn.SiLU)):
                setattr(parent, name, nn.ReLU())
    return model


def _compile_and_score(path, calib, test, **options) -> tuple[snnc.model.CompiledModel, dict]:
    model = snnc.compile(str(path), calib.x, quiet=True, **options)
    result = model.evaluate(test.x, test.y, [T], batch_size=100)
    share = model.report["spiking"]
    return model, {
        "snn": result["snn_accuracy"][str(T)],
        "ann_mode": result["ann_accuracy"],
        "neuron_layers": share["neurons"],
        "analog_islands": share["analog_islands"],
        "spiking_share": share["spiking_share"],
    }


def run(arch: str, quick: bool) -> dict:
    """Train, compile with and without substitution, fine-tune / retrain, score at T=32."""
    import torchvision

    n_train, n_test, epochs = (600, 100, 1) if quick else (3000, 300, 8)
    train, test = textured_shapes(n_train, seed=0), textured_shapes(n_test, seed=1)
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None, num_classes=10)
    for module in net.modules():
        # MobileNetV3's BatchNorm momentum is 0.01 (tuned for ImageNet-length runs): after a few
        # hundred steps its running statistics are still near their initial values and the
        # eval-mode ANN scores at chance (8.0 % measured), so every row would compare noise
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    t0 = time.perf_counter()
    net = train_classifier(net, train, epochs=epochs, lr=2e-3)
    row = {
        "arch": arch,
        "train_samples": n_train,
        "test_samples": n_test,
        "epochs": epochs,
        "ann": evaluate(net, test),
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(net, (3, 32, 32), Path(tmp) / f"{arch}.onnx")
        _, row["plain"] = _compile_and_score(path, train, test)
        substituted, row["substitute"] = _compile_and_score(path, train, test, substitute="relu")
        row["substituted"] = substituted.report.get("substituted")
        try:
            tuned = finetune(substituted, train, timesteps=4, epochs=1 if quick else 3, progress=False)
            row["finetune"] = {
                "snn": tuned.evaluate(test.x, test.y, [T])["snn_accuracy"][str(T)],
                "kept": tuned.report["finetune"]["kept"],
            }
        except snnc.SnncError as exc:
            row["finetune"] = {"refused": str(exc)[:300]}
        relu_net = train_classifier(_relu_everywhere(net), train, epochs=max(1, epochs // 2), lr=1e-3, seed=1)
        row["retrained_ann"] = evaluate(relu_net, test)
        relu_path = export_onnx(relu_net, (3, 32, 32), Path(tmp) / f"{arch}_relu.onnx")
        _, row["retrained"] = _compile_and_score(relu_path, train, test)
    return row


def main(argv=None) -> None:
    """Run both architectures, print a table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/substitute.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    logging.disable(logging.WARNING)  # the analog-heavy warnings are what this measures
    rows = []
    for arch in ARCHS:
        row = run(arch, args.quick)
        rows.append(row)
        ft = row["finetune"]
        print(
            f"{arch}: ANN {100 * row['ann']:.1f}% | SNN T={T} {100 * row['plain']['snn']:.1f}% "
            f"({row['plain']['neuron_layers']} neuron layers, {row['plain']['analog_islands']} islands) | "
            f"substitute relu: ANN mode {100 * row['substitute']['ann_mode']:.1f}%, SNN "
            f"{100 * row['substitute']['snn']:.1f}% ({row['substitute']['analog_islands']} islands) | finetune: "
            + (f"{100 * ft['snn']:.1f}%" if "snn" in ft else f"refused ({ft['refused'][:80]}...)")
            + f" | ReLU-retrained ANN {100 * row['retrained_ann']:.1f}%, SNN {100 * row['retrained']['snn']:.1f}%"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, json.dumps({"timesteps": T, "quick": args.quick, "results": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
