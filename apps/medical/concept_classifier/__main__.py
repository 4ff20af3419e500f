"""Concept-bottleneck diagnosis of choroid tumours on the real fundus photograph (Wu et al., Nat.
Commun. 2025), compiled to a spiking network: macro-F1, per-concept AUC, and how well the SNN's
concept-layer firing rates read as the ANN's concept scores.

    python -m apps.medical.concept_classifier           # full run: table, PNG and results.json beside the app
    python -m apps.medical.concept_classifier --quick   # the small configuration (under 3 minutes on 2 cores)
    python -m apps.medical.concept_classifier --json    # one JSON object on stdout
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import snncompiler as snnc
from apps.common import app_args, torch_threads, write_json
from apps.medical.common import Study, json_summary, print_study, run_study
from apps.medical.concept_classifier.task import (
    CLASSES,
    CONCEPT_TABLE,
    CONCEPTS,
    ConceptBottleneck,
    auc,
    export_bottleneck,
    fundus_cases,
    macro_f1,
    ort_outputs,
    standardize,
    train_bottleneck,
)
from snncompiler.fileio import write_bytes

NAME = "medical.concept_classifier"
TASK = (
    "3-class choroid-tumour diagnosis (melanoma / haemangioma / metastasis) through 6 concepts, "
    "lesions planted on crops of the real fundus photograph retina.jpg; metric macro-F1"
)
#: (train cases, test cases, epochs, fine-tuning epochs, calibration iterations)
CONFIGS = {"full": (2000, 600, 15, 3, 100), "quick": (800, 300, 8, 2, 40)}


def concept_scorer(test_y: np.ndarray, test_c: np.ndarray, ann_concepts: np.ndarray | None):
    """The one metric function: macro-F1 and accuracy of the diagnosis; with the concept output
    also per-concept AUC against the planted concepts and, once ``ann_concepts`` (onnxruntime) is
    known, each concept's Pearson correlation with the ANN's score for it."""

    def score(outputs) -> dict:
        logits, concepts = outputs if isinstance(outputs, tuple) else (outputs, None)
        predicted = np.asarray(logits).argmax(1)
        result = {"macro_f1": macro_f1(predicted, test_y), "accuracy": float((predicted == test_y).mean())}
        if concepts is None:
            return result
        aucs = [auc(concepts[:, k], test_c[:, k]) for k in range(len(CONCEPTS))]
        result.update({f"auc_{name}": a for name, a in zip(CONCEPTS, aucs)}, mean_concept_auc=float(np.mean(aucs)))
        if ann_concepts is not None:
            corrs = [_pearson(concepts[:, k], ann_concepts[:, k]) for k in range(len(CONCEPTS))]
            result.update(
                {f"corr_{name}": c for name, c in zip(CONCEPTS, corrs)}, mean_concept_corr=float(np.nanmean(corrs))
            )
        return result

    return score


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def concept_thresholds(model) -> list[float]:
    """θ of the neurons that produce the 'concepts' output (one per concept, or one shared): the
    SNN's concept score is firing rate × θ."""
    graph = model.graph
    producer = {out: node for node in graph.nodes for out in node.outputs}
    node = producer[graph.outputs[1].name]
    while node.op != "neuron":  # a reshape or identity may sit between the neuron and the output
        node = producer[node.inputs[0]]
    theta = node.params["theta"].reshape(-1).float().numpy()
    return [float(v) for v in np.broadcast_to(theta, (len(CONCEPTS),))]


def save_concept_figure(path: Path, images, labels, concepts, ann, snn, snn_label: str) -> Path:
    """A PNG with one row per case: the input, the planted concepts and class, the ANN's and the
    SNN's concept scores (bars) and diagnoses."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(images)
    fig, axes = plt.subplots(rows, 4, figsize=(10, 1.9 * rows + 0.4), squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(images[r].transpose(1, 2, 0))
        axes[r, 0].set_xticks([]), axes[r, 0].set_yticks([])
        for c, (scores, label, title) in enumerate(
            (
                (concepts[r], labels[r], "ground truth"),
                (ann[1][r], ann[0][r].argmax(), "ANN"),
                (snn[1][r], snn[0][r].argmax(), snn_label),
            ),
            start=1,
        ):
            ax = axes[r, c]
            ax.barh(range(len(CONCEPTS)), scores, color="tab:orange" if c == 1 else "tab:blue")
            ax.set_xlim(0, 1.05), ax.set_yticks(range(len(CONCEPTS)))
            ax.set_yticklabels(CONCEPTS if c == 1 else [], fontsize=7)
            ax.invert_yaxis(), ax.tick_params(axis="x", labelsize=7)
            ax.set_title(f"{title}: {CLASSES[int(label)]}" if r == 0 else CLASSES[int(label)], fontsize=8)
        if r == 0:
            axes[r, 0].set_title("input", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, buffer.getvalue())
    return path


def main(argv=None) -> dict:
    """Build the data, train, export, compile and study; print the table (or the JSON) and
    write results.json and the PNG; return the record."""
    args = app_args(__doc__.splitlines()[0], NAME, argv)
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
        record = _run(args)
    if args.json:
        print(json.dumps(json_summary(TASK, record, record["seconds"])), file=out)
    return record


def _figure_dir(args) -> Path:
    """results/ beside the app for the full run (the README shows it); --out for --quick runs."""
    return args.out if args.quick else Path(__file__).parent / "results"


def _run(args) -> dict:
    start = time.perf_counter()
    n_train, n_test, epochs, ft_epochs, calib_iterations = CONFIGS["quick" if args.quick else "full"]
    raw_train, train_y, train_c = fundus_cases(n_train, seed=1000 + args.seed)
    raw_test, test_y, test_c = fundus_cases(n_test, seed=2000 + args.seed)
    train_x, test_x = standardize(raw_train), standardize(raw_test)

    t0 = time.perf_counter()
    with torch_threads(1):
        torch.manual_seed(args.seed)
        net = train_bottleneck(ConceptBottleneck(), train_x, train_y, train_c, epochs=epochs, seed=args.seed)
    train_s = time.perf_counter() - t0
    onnx_path = export_bottleneck(net, args.out / "concept_classifier.onnx")
    ann_logits, ann_concepts = ort_outputs(onnx_path, test_x)
    score = concept_scorer(test_y, test_c, ann_concepts)

    def finetune(model, t):
        with torch_threads(1):
            return snnc.train.finetune(
                model,
                (train_x, train_y),
                timesteps=t,
                epochs=ft_epochs,
                lr=5e-4,
                batch_size=64,
                seed=args.seed,
                progress=False,
            )

    timesteps = tuple(t for t in args.timesteps if t <= 64) or args.timesteps
    study = Study(
        NAME,
        onnx_path,
        train_x[: 256 if args.quick else 512],
        test_x,
        score,
        metric="macro_f1",
        tolerance=0.01,
        timesteps=timesteps,
        calib_iterations=calib_iterations,
        finetune=finetune,
        out_dir=args.out,
    )
    record, model = run_study(study)
    # onnxruntime's wrapper returns the first output only: the ANN row is rescored on both outputs
    record["ann"] = score((ann_logits, ann_concepts))
    record["smallest_T"] = _smallest(record)
    thetas = concept_thresholds(model)
    t_show = 32 if 32 in timesteps else timesteps[-1]
    snn_show = model.run(test_x, t_show)
    rates = snn_show[1] / np.asarray(thetas)
    record.update(
        {
            "task": TASK,
            "data": {
                "image": "skimage retina.jpg (real), lesions planted",
                "size": 32,
                "train_cases": n_train,
                "test_cases": n_test,
                "epochs": epochs,
                "finetune_epochs": ft_epochs,
                "seed": args.seed,
                "concept_table": CONCEPT_TABLE.tolist(),
                "classes": list(CLASSES),
                "concepts": list(CONCEPTS),
            },
            "train_seconds": round(train_s, 2),
            "train_threads": 1,
            "concept_theta": dict(zip(CONCEPTS, thetas)),
            "concept_firing_rate_mean": {f"T={t_show}": dict(zip(CONCEPTS, rates.mean(0).tolist()))},
            "concept_rate_corr": {
                f"T={t_show}": {name: _pearson(rates[:, k], ann_concepts[:, k]) for k, name in enumerate(CONCEPTS)}
            },
        }
    )
    record["seconds"] = round(time.perf_counter() - start, 1)
    if not args.json:
        print(f"trained {n_train} cases, {epochs} epochs in {train_s:.1f} s; test {n_test} cases")
        print_study(record)
        _print_concepts(record)
        figure = save_concept_figure(
            _figure_dir(args) / ("quick.png" if args.quick else "cases.png"),
            raw_test[:4],
            test_y[:4],
            test_c[:4],
            (ann_logits[:4], ann_concepts[:4]),
            (snn_show[0][:4], snn_show[1][:4]),
            f"SNN T={t_show}",
        )
        print(f"wrote {figure}")
    write_json(record, args.results)
    return record


def _smallest(record: dict) -> dict | None:
    from apps.medical.common import smallest_t

    return smallest_t(record, record["metric"], record["tolerance"])


def _print_concepts(record: dict) -> None:
    """Per-concept AUC (ANN, SNN at each T) and correlation of the SNN's concept outputs with the ANN's."""
    print(f"{'concept AUC':<18}" + "".join(f"{name:>11}" for name in CONCEPTS))
    rows = [("ANN", record["ann"])] + [(f"SNN T={t}", s) for t, s in record["snn"].items()]
    for label, scores in rows:
        print(f"{label:<18}" + "".join(f"{scores[f'auc_{name}']:11.3f}" for name in CONCEPTS))
    print(f"{'corr. with ANN':<18}" + "".join(f"{name:>11}" for name in CONCEPTS))
    for route in ("snn", "advanced", "finetune"):
        for t, scores in record[route].items():
            label = f"SNN T={t}" + ("" if route == "snn" else f" {route}")
            print(f"{label:<18}" + "".join(f"{scores[f'corr_{name}']:11.3f}" for name in CONCEPTS))


if __name__ == "__main__":
    main()
