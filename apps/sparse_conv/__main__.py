"""Sparse convolution: weight sparsity from learnable-threshold masks, multiplied by spike sparsity.

Trains the same small CNN on scikit-learn's digits twice — with masked convolutions (thresholds
learned per filter, as in SD-Conv's sparsification) and dense — exports both to ONNX, compiles
both with snncompiler, and reports accuracy at every T and the synaptic operations an
event-driven engine would perform, against the ANN's dense multiply-accumulates.
"""
from __future__ import annotations

import time

import torch

from apps.common import app_args, compare, print_table, write_json
from apps.sparse_conv.task import MaskedConv2d, export_form, sparse_cnn, train_sparse
from snncompiler.metrics import accuracy, format_synaptic_operations
from snncompiler.workloads import digits, export_onnx

NAME = "sparse_conv"


def _train(train, *, masked: bool, epochs: int, alpha: float, threshold_lr: float, seed: int):
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = train_sparse(sparse_cnn(masked=masked), train, epochs=epochs, alpha=alpha,
                         threshold_lr=threshold_lr, seed=seed)
    return model, time.perf_counter() - t0


def main(argv=None) -> dict:
    """Train, export, compile and compare; returns the JSON record (also written to disk)."""
    args = app_args(__doc__.splitlines()[0], NAME, argv)
    epochs = 6 if args.quick else 40
    alpha, threshold_lr = 5e-3, 2e-2
    train, test = digits(seed=args.seed)
    if args.quick:
        test = type(test)(test.x[:200], test.y[:200])
    sops_t = min(32, max(args.timesteps))

    def score(logits):
        return {"accuracy": accuracy(logits, test.y)}

    record = {"task": "scikit-learn digits, 8×8, 10 classes", "epochs": epochs, "alpha": alpha,
              "threshold_lr": threshold_lr}
    for variant, masked in (("sparse", True), ("dense", False)):
        model, seconds = _train(train, masked=masked, epochs=epochs, alpha=alpha, threshold_lr=threshold_lr,
                                seed=args.seed)
        densities = [m.density() for m in model if isinstance(m, MaskedConv2d)]
        plain = export_form(model)
        with torch.no_grad():  # the exported form must compute what was trained
            same = bool(torch.allclose(plain(torch.from_numpy(test.x)), model(torch.from_numpy(test.x)), atol=1e-5))
        onnx_path = export_onnx(plain, train.x.shape[1:], args.out / f"{NAME}_{variant}.onnx")
        print(f"\n== {variant}: trained in {seconds:.1f} s; conv weight density "
              f"{', '.join(f'{d:.3f}' for d in densities) if densities else '1 (dense)'}")
        rec = compare(f"{NAME}_{variant}", onnx_path, train.x[:256], test.x, score, timesteps=args.timesteps,
                      out_dir=args.out)
        print_table(rec)
        from snncompiler import load

        sops = load(rec["artifact"]).synaptic_operations(test.x, sops_t)
        print(f"\n{variant}: " + format_synaptic_operations(sops))
        rec.update(train_seconds=round(seconds, 2), conv_weight_density=densities or [1.0, 1.0, 1.0],
                   export_matches_training_form=same, synaptic_ops=sops)
        record[variant] = rec
    s, d = record["sparse"]["synaptic_ops"], record["dense"]["synaptic_ops"]
    record["sparse_over_dense"] = {"snn_acs": s["snn_acs"] / d["snn_acs"],
                                   "snn_energy": s["energy_pj"]["snn"] / d["energy_pj"]["snn"]}
    print(f"\nsparse vs dense SNN at T={sops_t}: ACs ×{record['sparse_over_dense']['snn_acs']:.3f}, "
          f"energy ×{record['sparse_over_dense']['snn_energy']:.3f}")
    write_json(record, args.results)
    return record


if __name__ == "__main__":
    main()
