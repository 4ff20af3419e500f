"""One route to few timesteps: conversion → calibration → fine-tuning at T, each stage kept only
if it raises held-out accuracy (``snnc compile --finetune EPOCHS``, ``snnc.compile(..., finetune=E)``).

The labelled calibration data is split once (seeded): the stages fit on one part and are judged
on the other, which none of them sees. Conversion comes first (no calibration), with one
threshold per layer and with one per channel unless ``channelwise`` was given (the better on
held-out data is kept, and the later stages use its thresholds' granularity: per channel won on
both digits workloads at T ≤ 4, per layer on others, docs/benchmarks.md), then the
calibration pipeline asked for (kept if its held-out accuracy at T is higher), then fine-tuning
of whichever model won, with surrogate gradients at T (kept if higher again; potential
offsets and hard-reset gains stay as calibration set them). Equal accuracies (a small held-out
set is often at 100 %) are decided by the held-out cross-entropy of the outputs at T, lower
wins. The compile report's ``pipeline`` entry lists every stage with its held-out accuracy and
loss and whether it was kept.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..analysis.metrics import accuracy
from ..compiler import compile as convert
from ..data import Dataset
from ..errors import OptionError, SnncError
from ..model import CompiledModel, first_output
from ..options import FINETUNE_LR, CompileOptions, check_distill_weight
from .finetune import finetune as finetune_model
from .trainer import as_dataset

#: Share of the labelled calibration data held out to judge each stage.
PIPELINE_HOLDOUT = 0.2


def _split(data: Dataset, holdout: float, seed: int) -> tuple[Dataset, Dataset]:
    held = max(1, int(round(len(data) * holdout)))
    if len(data) - held < 1:
        raise SnncError(f"--calib: {len(data)} labelled samples are too few to hold {held} out for the pipeline")
    order = np.random.default_rng(seed).permutation(len(data))  # files may be sorted by class
    fit, judge = order[:-held], order[-held:]
    return Dataset(data.x[fit], data.y[fit]), Dataset(data.x[judge], data.y[judge])


def compile_and_finetune(
    model,
    data,
    *,
    finetune: int,
    holdout: float = PIPELINE_HOLDOUT,
    lr: float | None = None,
    distill: float = 0.0,
    progress: bool = False,
    **options,
) -> CompiledModel:
    """Compile ``model`` (an ONNX path/bytes/ModelProto or IR Graph) at ``options["timesteps"]``
    through conversion, the calibration pipeline of ``options["calibration"]`` and ``finetune``
    epochs of fine-tuning, keeping each stage only where it raises the accuracy at T on the
    held-out share of ``data`` (labelled: a Dataset or an (x, y) pair). ``lr`` is fine-tuning's
    learning rate (default :data:`~snncompiler.options.FINETUNE_LR`); ``distill`` > 0 distils the
    ANN into the SNN while it fine-tunes (:func:`~snncompiler.train.finetune`). Every option is checked
    before any work."""
    if isinstance(finetune, bool) or not isinstance(finetune, int) or finetune < 1:
        raise OptionError("finetune", f"must be a number of epochs ≥ 1, got {finetune!r}")
    if not 0 < holdout < 1:
        raise OptionError("holdout", f"must lie in (0, 1), got {holdout!r}")
    if lr is not None and not (
        isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0
    ):
        raise OptionError("lr", f"must be a finite number > 0, got {lr!r}")
    check_distill_weight(distill)
    checked = CompileOptions.from_mapping(options)
    if checked.encoding == "rate":
        raise OptionError("finetune", "rate-encoded inputs are random at every step; use --encoding direct")
    if isinstance(data, Dataset) and data.y is None:
        raise OptionError("finetune", "needs labelled calibration data (a 'y' array beside 'x' in --calib)")
    labelled = as_dataset(data, "calibration data")
    steps = checked.timesteps
    fit, judge = _split(labelled, holdout, checked.seed)

    def judged(stage: str, m: CompiledModel, **extra) -> dict:
        out = first_output(m.run(judge.x, steps))
        right = accuracy(out, judge.y)  # first: it checks the labels index the outputs
        loss = torch.nn.functional.cross_entropy(
            torch.as_tensor(np.asarray(out, np.float32)), torch.as_tensor(judge.y, dtype=torch.int64)
        )
        return {"stage": stage, **extra, "heldout_accuracy": right, "heldout_loss": float(loss)}

    def better(new: dict, old: dict) -> bool:
        return (new["heldout_accuracy"], -new["heldout_loss"]) > (old["heldout_accuracy"], -old["heldout_loss"])

    quiet = {**options, "quiet": True}
    chosen = options.get("channelwise")
    granularities = [bool(chosen)] if chosen is not None else [False, True]
    stages, best, leader = [], None, None
    for channelwise in granularities:
        converted = convert(model, fit, **{**quiet, "calibration": "none", "channelwise": channelwise})
        name = (
            f"conversion ({'channel' if channelwise else 'layer'}-wise θ)" if len(granularities) > 1 else "conversion"
        )
        stage = judged(name, converted, channelwise=channelwise)
        stage["kept"] = leader is None or better(stage, leader)
        if stage["kept"]:
            if leader is not None:
                leader["kept"] = False  # only one conversion goes on
            best, leader = converted, stage
        stages.append(stage)
    quiet["channelwise"] = leader["channelwise"]
    if checked.calibration != "none":
        calibrated = convert(model, fit, **quiet)
        stage = judged(f"calibration ({checked.calibration})", calibrated)
        stage["kept"] = better(stage, leader)
        stages.append(stage)
        if stage["kept"]:
            best, leader = calibrated, stage
    try:
        tuned = finetune_model(
            best,
            (fit.x, fit.y),
            val=(judge.x, judge.y),
            timesteps=steps,
            epochs=finetune,
            keep_if_better=False,
            seed=checked.seed,
            progress=progress,
            distill=distill,
            **({"lr": lr} if lr is not None else {}),
        )
    except SnncError as exc:  # e.g. training drove a θ below zero: the stage failed, the earlier ones stand
        tuned = None
        stage = {"stage": "finetune", "epochs": finetune, "kept": False, "failed": str(exc)}
    else:
        stage = judged("finetune", tuned, epochs=finetune)
        stage["kept"] = better(stage, leader)
    stages.append(stage)
    result = tuned if stage["kept"] else best
    result.report = {
        **result.report,
        "pipeline": {
            "timesteps": steps,
            "fit_samples": len(fit),
            "heldout_samples": len(judge),
            "finetune_lr": lr if lr is not None else FINETUNE_LR,
            "distill": distill,
            "channelwise": quiet["channelwise"],  # the thresholds' granularity every later stage used
            "stages": stages,
        },
    }
    if tuned is not None and not stage["kept"]:  # the fine-tuning tried and dropped, as finetune records it
        result.report["finetune"] = {**tuned.report["finetune"], "kept": False}
    return result
