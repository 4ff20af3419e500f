"""Accuracy vs timesteps: the ANN, SpikingJelly's ann2snn converter and snnc, on the same models and data.

    python -m benchmarks.timestep_accuracy            # full run (≈19 min on 2 cores)
    python -m benchmarks.timestep_accuracy --quick    # smoke run
    python -m benchmarks.timestep_accuracy --workloads digits_cnn,vgg_shapes --variants

Every workload is built here (examples.workloads.BENCH_WORKLOADS): trained digits CNN / ResNet,
breast-cancer MLP, a VGG on a generated texture-and-shape task, and a random-init ResNet-18 scored by
agreement with its own argmax. Each method converts the same torch model with the same calibration
batch; every T comes from one T_max run, except the calibrated rows: calibration is specific to the
T it is run at, so those rows compile (and calibrate) once per T ≤ 64 and score that T.
Writes benchmarks/results/timestep_accuracy.{json,png} and prints a table per workload and a
"floors" section.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # SpikingJelly's calibration loop shows a tqdm bar

import numpy as np
import torch

import snncompiler as snnc
from examples.workloads import BENCH_WORKLOADS, export_onnx
from snncompiler.data import Dataset
from snncompiler.fileio import atomic_write, write_text

T_FULL = [1, 2, 4, 8, 16, 32, 64, 128, 256]
T_QUICK = [1, 4, 16, 32]

# Test samples per workload: the SNN costs samples × T_max forward passes per method, so the big
# image models get fewer (full, quick). None = the whole test split. ResNet-18 agreement needs
# 512: on 64 samples light-vs-none at one T swung by ±9 points between draws of the test set.
SIZES = {
    "digits_cnn": (None, 128),
    "digits_resnet": (None, 128),
    "digits_mobilenet": (None, 128),
    "breast_cancer_mlp": (None, None),
    "vgg_shapes": (384, 32),
    "resnet18_agreement": (512, 16),
}
QUICK_TRAIN = {
    "digits_cnn": {"epochs": 5},
    "digits_resnet": {"epochs": 5},
    "digits_mobilenet": {"epochs": 5},
    "breast_cancer_mlp": {"epochs": 20},
    "vgg_shapes": {"train_samples": 4000, "epochs": 2},
}

# Method specs: (label, SpikingJelly mode) and (label, snnc.compile kwargs). Rows are added by
# appending specs; "(default)" marks the row the floors use.
SJ_METHODS = [("SJ max", "Max"), ("SJ 99.9%", "99.9%"), ("SJ 0.5×max", 0.5)]
SNNC_DEFAULT = "snnc p99.9 (default)"
SNNC_METHODS = [
    ("snnc max", {"threshold": "max"}),
    ("snnc p99.99", {"threshold": "p99.99"}),
    (SNNC_DEFAULT, {}),
    ("snnc mse", {"threshold": "mse"}),
    # the spiking max-pooling strategies side by side (identical rows where there is no MaxPool)
    ("snnc maxpool=gated", {"maxpool": "gated"}),
    ("snnc maxpool=output", {"maxpool": "output"}),
    ("snnc maxpool=input", {"maxpool": "input"}),
]
# --variants: single-setting departures from the defaults, to see which knob a missed floor needs.
SNNC_VARIANTS = [
    ("snnc channelwise", {"channelwise": True}),
    ("snnc v0=zero", {"v0": "zero"}),
    ("snnc p99.9 channelwise", {"threshold": "p99.9", "channelwise": True}),
    ("snnc mse channelwise", {"threshold": "mse", "channelwise": True}),
    ("snnc v0=zero p99.9 channelwise", {"v0": "zero", "threshold": "p99.9", "channelwise": True}),
    ("snnc v0=zero mse channelwise", {"v0": "zero", "threshold": "mse", "channelwise": True}),
    ("snnc p99.9 ch maxpool=output", {"threshold": "p99.9", "channelwise": True, "maxpool": "output"}),
    ("snnc mse ch maxpool=output", {"threshold": "mse", "channelwise": True, "maxpool": "output"}),
]
# --calibration light|advanced: rows for snnc's post-conversion calibration (compile option
# `calibration`, not available yet: until it is, these rows report the compile error).
# Calibrated rows: compiled and calibrated at each T ≤ CALIBRATED_T_MAX, scored at that T.
SNNC_CALIBRATION = {
    level: [(f"snnc calibration={level}", {"calibration": level, "per_t": True})] for level in ("light", "advanced")
}
CALIBRATED_T_MAX = 64
# --hard-reset: only these rows, written to hard_reset.{json,png}: reset to zero from v0 = 0, the
# settings whose NIR file means the same in every reader (README, "Hard reset" and "NIR export").
SNNC_HARD_RESET = [
    ("snnc hard v0=zero", {"reset": "hard", "v0": "zero"}),
    ("snnc hard v0=zero light", {"reset": "hard", "v0": "zero", "calibration": "light", "per_t": True}),
]
# --lif: only these rows, written to lif.{json,png}: LIF neurons (tau 2, the default: half the
# membrane leaks away each step) without and with each calibration pipeline.
SNNC_LIF = [
    ("snnc lif none", {"neuron": "lif", "calibration": "none"}),  # LIF compiles default to light
    ("snnc lif light", {"neuron": "lif", "calibration": "light", "per_t": True}),
    ("snnc lif advanced", {"neuron": "lif", "calibration": "advanced", "per_t": True}),
]
# --bottlenecks: only these rows, written to bottlenecks.{json,png}: the plain conversion, whose
# layers after a linear bottleneck read analog values, against the two ways of making them read
# spikes (signed_spikes: two neurons per value; fuse_linear: composed weights, exact), each
# calibrated or not.
SNNC_BOTTLENECKS = [
    (label + suffix, {**k, **extra})
    for suffix, extra in (
        ("", {}),
        (" signed", {"signed_spikes": True}),
        (" fuse-linear", {"fuse_linear": True}),
    )
    for label, k in (
        ("snnc", {}),
        ("snnc p99", {"threshold": "p99"}),
        ("snnc light", {"calibration": "light", "per_t": True}),
        ("snnc advanced", {"calibration": "advanced", "per_t": True}),
    )
]
#: The modes that run only their own rows, by the stem of the files they write.
ROW_MODES = {"hard_reset": SNNC_HARD_RESET, "lif": SNNC_LIF, "bottlenecks": SNNC_BOTTLENECKS}
#: The workloads a run covers unless --workloads names others: timestep_accuracy.json's, and the
#: one with linear bottlenecks for --bottlenecks.
DEFAULT_WORKLOADS = [n for n in BENCH_WORKLOADS if n != "digits_mobilenet"]
MODE_WORKLOADS = {"bottlenecks": ["digits_mobilenet"]}


def log(msg: str) -> None:
    print(msg, flush=True)


def accuracy_curve(logits_sum_at: dict, y: np.ndarray) -> dict:
    return {str(t): float((v.argmax(1) == y).mean()) for t, v in logits_sum_at.items()}


def run_spikingjelly(model, calib: Dataset, test: Dataset, mode, ts, batch_size: int) -> dict:
    """Convert with SpikingJelly's RateCodingRecipe and simulate single-step for max(ts) steps.

    The calibration set goes in as ONE batch: VoltageHook keeps an EMA over batches (momentum 0.1),
    so a single batch makes its "Max"/percentile the plain statistic over the same data snnc sees.
    """
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.ann2snn import Converter, RateCodingRecipe

    t0 = time.perf_counter()
    batch = [(torch.from_numpy(calib.x), torch.zeros(len(calib.x)))]
    snn = Converter(RateCodingRecipe(batch, mode=mode)).convert(copy.deepcopy(model).eval())
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sums = {t: [] for t in ts}
    with torch.no_grad():
        for start in range(0, len(test.x), batch_size):
            x = torch.from_numpy(test.x[start : start + batch_size])
            functional.reset_net(snn)
            acc = 0
            for t in range(1, max(ts) + 1):
                acc = acc + snn(x)
                if t in sums:
                    sums[t].append(acc.numpy().copy())
    return {
        "accuracy": accuracy_curve({t: np.concatenate(v) for t, v in sums.items()}, test.y),
        "compile_s": compile_s,
        "run_s": time.perf_counter() - t0,
    }


def run_snnc(onnx_path, calib: Dataset, test: Dataset, kwargs: dict, ts, batch_size: int) -> dict:
    """snnc.compile with ``kwargs`` over the defaults, then one max(ts) run scored at every T."""
    t0 = time.perf_counter()
    model = snnc.compile(onnx_path, Dataset(calib.x), **kwargs)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = model.evaluate(test.x, test.y, ts, batch_size=batch_size)
    return {
        "accuracy": res["snn_accuracy"],
        "clipped_ann_accuracy": res["ann_accuracy"],
        "firing_rate": res["firing_rate"],
        "compile_s": compile_s,
        "run_s": time.perf_counter() - t0,
        "spiking": spiking_summary(model),
    }


def run_snnc_per_t(onnx_path, calib: Dataset, test: Dataset, kwargs: dict, ts, batch_size: int) -> dict:
    """Compile (and calibrate) at each T ≤ CALIBRATED_T_MAX and score that T alone."""
    kwargs = {k: v for k, v in kwargs.items() if k != "per_t"}
    acc, compile_s, run_s = {}, {}, 0.0
    for t in [t for t in ts if t <= CALIBRATED_T_MAX]:
        t0 = time.perf_counter()
        model = snnc.compile(onnx_path, Dataset(calib.x), timesteps=t, quiet=True, **kwargs)
        compile_s[str(t)] = time.perf_counter() - t0
        t0 = time.perf_counter()
        acc[str(t)] = model.evaluate(test.x, test.y, [t], batch_size=batch_size)["snn_accuracy"][str(t)]
        run_s += time.perf_counter() - t0
    return {
        "accuracy": acc,
        "compile_s_per_t": compile_s,
        "compile_s": sum(compile_s.values()),
        "run_s": run_s,
        "spiking": spiking_summary(model),
    }


def spiking_summary(model) -> dict:
    """Neuron layers, MACs per sample and their spike-driven share, from the compile report."""
    share = model.report["spiking"]
    return {k: share[k] for k in ("neurons", "macs", "spiking_macs", "analog_macs", "spiking_share")}


def ann_accuracy(model, test: Dataset) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(test.x)).argmax(1).numpy() == test.y).mean())


def row_mode(args) -> str | None:
    """The mode that runs only its own rows (a key of :data:`ROW_MODES`), or None."""
    return "hard_reset" if args.hard_reset else "lif" if args.lif else "bottlenecks" if args.bottlenecks else None


def run_workload(name: str, args, ts, tmp: Path) -> dict:
    quick = args.quick
    n_test = args.test_samples or SIZES[name][1 if quick else 0]
    kwargs = {"seed": args.seed}
    if n_test is not None:
        kwargs["test_samples"] = n_test
    if quick:
        kwargs.update(QUICK_TRAIN.get(name, {}))
    t0 = time.perf_counter()
    log(f"\n[{name}] building (train / generate) ...")
    w = BENCH_WORKLOADS[name](**kwargs)
    ann = ann_accuracy(w.model, w.test)
    log(
        f"[{name}] {w.note}; {len(w.test.x)} test, {len(w.calib.x)} calibration samples; "
        f"ANN {100 * ann:.2f}% (built in {time.perf_counter() - t0:.1f} s)"
    )
    onnx_path = export_onnx(w.model, w.input_shape, tmp / f"{name}.onnx")
    methods = {}
    specs = [("sj", label, mode) for label, mode in SJ_METHODS] + [("snnc", label, k) for label, k in SNNC_METHODS]
    mode = row_mode(args)
    if mode:
        specs = [("snnc", label, k) for label, k in ROW_MODES[mode]]
    elif args.variants:
        specs += [("snnc", label, k) for label, k in SNNC_VARIANTS]
    for level in (
        [] if args.calibration == "none" or mode else [args.calibration] if args.calibration else SNNC_CALIBRATION
    ):
        specs += [("snnc", label, k) for label, k in SNNC_CALIBRATION[level]]
    if args.rows:  # e.g. --rows snnc: re-run only some methods (investigations)
        specs = [s for s in specs if any(r.strip() in s[1] for r in args.rows.split(","))]
    for kind, label, spec in specs:
        try:
            if kind == "sj":
                r = run_spikingjelly(w.model, w.calib, w.test, spec, ts, args.batch_size)
            elif spec.get("per_t"):
                r = run_snnc_per_t(onnx_path, w.calib, w.test, spec, ts, args.batch_size)
            else:
                r = run_snnc(onnx_path, w.calib, w.test, spec, ts, args.batch_size)
        except Exception as exc:  # a failing method is a result too (e.g. an option that does not exist yet)
            log(f"[{name}] {label}: FAILED {type(exc).__name__}: {exc}")
            methods[label] = {"error": f"{type(exc).__name__}: {exc}", "settings": spec}
            continue
        r["settings"] = spec
        methods[label] = r
        acc = r["accuracy"]
        last = max(acc, key=int)
        log(
            f"[{name}] {label:<26} T={last}: {100 * acc[last]:.2f}%  T=16: "
            f"{100 * acc.get('16', float('nan')):.2f}%  ({r['compile_s']:.1f} s + {r['run_s']:.1f} s)"
        )
    return {
        "note": w.note,
        "trained": w.trained,
        "ann_accuracy": ann,
        "test_samples": len(w.test.x),
        "calib_samples": len(w.calib.x),
        "train_s": w.train_seconds,
        "total_s": time.perf_counter() - t0,
        "methods": methods,
    }


def table(name: str, r: dict, ts) -> str:
    head = (
        f"{name}: {r['note']} | {r['test_samples']} test samples, {r['calib_samples']} calibration"
        f" | ANN {100 * r['ann_accuracy']:.2f}%"
    )
    lines = [head, f"{'method':<28}" + "".join(f"{'T=' + str(t):>8}" for t in ts)]
    lines.append(f"{'ANN':<28}" + "".join(f"{100 * r['ann_accuracy']:>8.2f}" for _ in ts))
    for label, m in r["methods"].items():
        cells = (
            "".join(f"{100 * m['accuracy'][str(t)]:>8.2f}" if str(t) in m["accuracy"] else f"{'-':>8}" for t in ts)
            if "accuracy" in m
            else "  n/a"
        )
        lines.append(f"{label:<28}" + cells)
    return "\n".join(lines)


def floors(results: dict, ts) -> dict:
    """The acceptance floors for the default snnc row (no calibration):

    * T=32: within 1.0 point of the ANN (trained workloads only; agreement is 100% for the ANN);
    * T=16: ≥ the best SpikingJelly mode, or within 0.5 point of the ANN when SpikingJelly beats the ANN.
    """
    out = {}
    for name, r in results.items():
        m, ann = r["methods"].get(SNNC_DEFAULT, {}), 100 * r["ann_accuracy"]
        f = {}
        if "accuracy" not in m:
            out[name] = {"error": "default row missing"}
            continue
        acc = {t: 100 * v for t, v in m["accuracy"].items()}
        if "32" in acc and r["trained"]:
            f["T32_within_1pt_of_ANN"] = {"pass": acc["32"] >= ann - 1.0, "snnc": acc["32"], "ann": ann}
        if "16" in acc:
            sj = [100 * v["accuracy"]["16"] for k, v in r["methods"].items() if k.startswith("SJ") and "accuracy" in v]
            if sj:  # (absent when --rows left SpikingJelly out)
                best = max(sj)
                ok = acc["16"] >= best or (best > ann and acc["16"] >= ann - 0.5)
                f["T16_at_least_best_SJ"] = {"pass": bool(ok), "snnc": acc["16"], "best_sj": best, "ann": ann}
        out[name] = f
    return out


def calibration_floors(results: dict) -> dict:
    """The calibration acceptance checks, for the rows that ran:

    * advanced at T=8 within 2.0 points of the ANN (trained workloads);
    * advanced at T=4 ≥ the best SpikingJelly mode at T=4, or within 1 point of the ANN;
    * light ≥ none (the default row) at every T ≤ 32;
    * ResNet-18 agreement at T=64: advanced ≥ 2 × SpikingJelly's best;
    * cost on ResNet-18 at T=32: light ≤ 30 s, advanced ≤ 180 s.
    """
    out = {}
    for name, r in results.items():
        m, ann, f = r["methods"], 100 * r["ann_accuracy"], {}
        adv = m.get("snnc calibration=advanced", {}).get("accuracy", {})
        light = m.get("snnc calibration=light", {}).get("accuracy", {})
        none = m.get(SNNC_DEFAULT, {}).get("accuracy", {})
        sj = lambda t: max(
            (100 * v["accuracy"][t] for k, v in m.items() if k.startswith("SJ") and t in v.get("accuracy", {})),
            default=None,
        )
        if "8" in adv and r["trained"]:
            f["advanced_T8_within_2pt"] = {"pass": 100 * adv["8"] >= ann - 2.0, "snnc": 100 * adv["8"], "ann": ann}
        if "4" in adv and sj("4") is not None:
            ok = 100 * adv["4"] >= sj("4") or (r["trained"] and 100 * adv["4"] >= ann - 1.0)
            f["advanced_T4_beats_SJ"] = {"pass": bool(ok), "snnc": 100 * adv["4"], "best_sj": sj("4"), "ann": ann}
        common = [t for t in light if t in none and int(t) <= 32]
        if common:
            worse = [t for t in common if light[t] < none[t]]
            f["light_ge_none_T_le_32"] = {
                "pass": not worse,
                "snnc": 100 * min(light[t] - none[t] for t in common),
                "ann": ann,
                "worse_at": worse,
            }
        if not r["trained"] and "64" in adv and sj("64") is not None:
            f["advanced_T64_2x_SJ"] = {
                "pass": 100 * adv["64"] >= 2 * sj("64"),
                "snnc": 100 * adv["64"],
                "best_sj": sj("64"),
                "ann": ann,
            }
        if name.startswith("resnet18"):
            for level, limit in (("light", 30.0), ("advanced", 180.0)):
                cs = m.get(f"snnc calibration={level}", {}).get("compile_s_per_t", {}).get("32")
                if cs is not None:
                    f[f"{level}_cost_T32_s"] = {"pass": cs <= limit, "snnc": cs, "ann": ann, "limit_s": limit}
        out[name] = f
    return out


def hard_reset_floors(results: dict) -> dict:
    """The hard-reset acceptance checks (issue 15), at T=32 on trained workloads: ``--reset hard
    --v0 zero`` within 5 points of the ANN without calibration, within 3 with light calibration."""
    out = {}
    for name, r in results.items():
        ann, f = 100 * r["ann_accuracy"], {}
        for (label, _), limit in zip(SNNC_HARD_RESET, (5.0, 3.0)):
            acc = r["methods"].get(label, {}).get("accuracy", {})
            if "32" in acc and r["trained"]:
                f[f"{label} T32 within {limit:g}pt"] = {
                    "pass": 100 * acc["32"] >= ann - limit,
                    "snnc": 100 * acc["32"],
                    "ann": ann,
                }
        out[name] = f
    return out


def plot(results: dict, ts, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(label for r in results.values() for label in r["methods"]))
    colours = {label: plt.get_cmap("tab20")(i % 20) for i, label in enumerate(labels)}  # one colour per method
    cols = 3
    rows = (len(results) + 1 + cols - 1) // cols  # one spare cell holds the legend
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    axes = axes.ravel()
    for ax, (name, r) in zip(axes, results.items()):
        ax.axhline(100 * r["ann_accuracy"], color="k", ls="--", lw=1, label="ANN")
        for label, m in r["methods"].items():
            if "accuracy" not in m:
                continue
            style = "--" if label.startswith("SJ") else "-"
            tm = [t for t in ts if str(t) in m["accuracy"]]
            ax.plot(
                tm,
                [100 * m["accuracy"][str(t)] for t in tm],
                style,
                marker=".",
                color=colours[label],
                lw=2.4 if label == SNNC_DEFAULT else 1.1,
                label=label,
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(ts, [str(t) for t in ts])
        ax.set_title(f"{name} ({r['test_samples']} test)", fontsize=9)
        ax.set_xlabel("timesteps T")
        ax.set_ylabel("agreement with ANN (%)" if not r["trained"] else "accuracy (%)")
        ax.set_ylim(max(0, 100 * r["ann_accuracy"] - 40) if r["trained"] else 0, 100.5)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[len(results) :]:
        ax.axis("off")
    axes[len(results)].legend(handles, labels, fontsize=8, loc="center")
    fig.tight_layout()
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format=Path(path).suffix.lstrip("."), dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few samples, T in {1,4,16,32}, short training")
    p.add_argument(
        "--workloads",
        help=f"comma list of {', '.join(BENCH_WORKLOADS)} (default: {', '.join(DEFAULT_WORKLOADS)}; "
        f"with --bottlenecks: {', '.join(MODE_WORKLOADS['bottlenecks'])})",
    )
    p.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", action="store_true", help="also run snnc setting variants (extra rows)")
    p.add_argument(
        "--calibration",
        choices=sorted(SNNC_CALIBRATION) + ["none"],
        help="calibrated rows to run (default: light and advanced)",
    )
    p.add_argument(
        "--hard-reset",
        action="store_true",
        help="run only the --reset hard --v0 zero rows (with and without light calibration); "
        "writes hard_reset.{json,png} in --out",
    )
    p.add_argument(
        "--lif",
        action="store_true",
        help="run only the --neuron lif rows (no, light and advanced calibration); writes lif.{json,png} in --out",
    )
    p.add_argument(
        "--bottlenecks",
        action="store_true",
        help="run only the linear-bottleneck rows (plain, --signed-spikes and --fuse-linear, each with p99.9 "
        "and p99 θ, light and advanced calibration) on the MobileNet; writes bottlenecks.{json,png} in --out",
    )
    p.add_argument("--replot", action="store_true", help="only redraw the PNG from an existing JSON in --out")
    p.add_argument("--rows", help="comma list of substrings: run only methods whose label contains one")
    p.add_argument("--timesteps", help="comma list of T (default: 1,2,...,256; quick: 1,4,16,32)")
    p.add_argument("--test-samples", type=int, help="test samples for every workload (default: per workload)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads (2 = the target machine; use 1 on a CPU shared with other jobs, where "
        "two-thread parallel regions stall on descheduled threads)",
    )
    args = p.parse_args(argv)
    if args.replot:
        doc = json.loads((Path(args.out) / "timestep_accuracy.json").read_text())
        plot(doc["workloads"], doc["timesteps"], Path(args.out) / "timestep_accuracy.png")
        return 0
    torch.set_num_threads(args.threads)  # fixed, so both simulators get the same cores
    torch.manual_seed(args.seed)
    workloads = args.workloads or ",".join(MODE_WORKLOADS.get(row_mode(args), DEFAULT_WORKLOADS))
    names = [n.strip() for n in workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCH_WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {unknown}; choose from {list(BENCH_WORKLOADS)}")
    ts = sorted(int(t) for t in args.timesteps.split(",")) if args.timesteps else T_QUICK if args.quick else T_FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            results[name] = run_workload(name, args, ts, Path(tmp))
    total = time.perf_counter() - t0
    log("\n" + "=" * 100)
    for name, r in results.items():
        log("\n" + table(name, r, ts))
    stem = row_mode(args)
    if stem:
        extra = {}
        if stem == "hard_reset":
            extra["hard_reset_floors"] = hard = hard_reset_floors(results)
            log("\nfloors (hard reset, v0 = 0):")
            for name, f in hard.items():
                for key, v in f.items():
                    log(
                        f"  {name:<20} {key:<34} {'PASS' if v['pass'] else 'FAIL'}  snnc {v['snnc']:.2f}% vs ANN {v['ann']:.2f}%"
                    )
        doc = {
            "timesteps": ts,
            "seed": args.seed,
            "quick": args.quick,
            "torch_threads": torch.get_num_threads(),
            "total_s": time.perf_counter() - t0,
            "workloads": results,
            **extra,
        }
        write_text(out / f"{stem}.json", json.dumps(doc, indent=1, default=str))
        plot(results, ts, out / f"{stem}.png")
        log(f"wrote {out / (stem + '.json')} and {out / (stem + '.png')}")
        return 0
    fl = floors(results, ts)
    log("\nfloors (snnc defaults, no calibration):")
    for name, f in fl.items():
        for key, v in f.items():
            if key == "error":
                log(f"  {name:<20} ERROR {v}")
                continue
            ref = f"best SJ {v['best_sj']:.2f}%" if "best_sj" in v else f"ANN {v['ann']:.2f}%"
            log(
                f"  {name:<20} {key:<24} {'PASS' if v['pass'] else 'FAIL'}  snnc {v['snnc']:.2f}% vs {ref}"
                f" (ANN {v['ann']:.2f}%)"
            )
    cal = calibration_floors(results)
    log("\nfloors (calibration):")
    for name, f in cal.items():
        for key, v in f.items():
            detail = (
                f"{v['snnc']:.1f} s (limit {v['limit_s']:.0f} s)"
                if "limit_s" in v
                else f"min(light − none) {v['snnc']:.2f} points"
                if key.startswith("light")
                else f"snnc {v['snnc']:.2f}% vs "
                + (f"best SJ {v['best_sj']:.2f}%" if "best_sj" in v else f"ANN {v['ann']:.2f}%")
            )
            log(f"  {name:<20} {key:<24} {'PASS' if v['pass'] else 'FAIL'}  {detail}")
    log(f"\ntotal {total:.0f} s")
    doc = {
        "timesteps": ts,
        "seed": args.seed,
        "quick": args.quick,
        "torch_threads": torch.get_num_threads(),
        "total_s": total,
        "workloads": results,
        "floors": fl,
        "calibration_floors": cal,
    }
    write_text(out / "timestep_accuracy.json", json.dumps(doc, indent=1, default=str))
    plot(results, ts, out / "timestep_accuracy.png")
    log(f"wrote {out / 'timestep_accuracy.json'} and {out / 'timestep_accuracy.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
