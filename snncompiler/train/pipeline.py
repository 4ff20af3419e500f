"""One route to few timesteps: conversion → calibration → fine-tuning at T, each stage kept only
if it raises held-out accuracy (``snnc compile --finetune EPOCHS``, ``snnc.compile(..., finetune=E)``).

The labelled calibration data is split once (seeded): the stages fit on one part and are judged
on the other, which none of them sees. Conversion comes first (no calibration), then the
calibration pipeline asked for (kept if its held-out accuracy at T is higher), then fine-tuning
of whichever model won, with surrogate gradients at T (kept if higher again; potential
offsets and hard-reset gains stay as calibration set them). The compile report's ``pipeline``
entry lists every stage with its held-out accuracy and whether it was kept.
"""
from __future__ import annotations

import numpy as np

from ..analysis.metrics import accuracy
from ..compiler import compile as convert
from ..data import Dataset
from ..errors import OptionError, SnncError
from ..model import CompiledModel, first_output
from ..options import CompileOptions
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


def compile_and_finetune(model, data, *, finetune: int, holdout: float = PIPELINE_HOLDOUT, lr: float | None = None,
                         progress: bool = False, **options) -> CompiledModel:
    """Compile ``model`` (an ONNX path/bytes/ModelProto or IR Graph) at ``options["timesteps"]``
    through conversion, the calibration pipeline of ``options["calibration"]`` and ``finetune``
    epochs of fine-tuning, keeping each stage only where it raises the accuracy at T on the
    held-out share of ``data`` (labelled: a Dataset or an (x, y) pair). ``lr`` is fine-tuning's
    learning rate (default :data:`~snncompiler.options.FINETUNE_LR`). Every option is checked
    before any work."""
    if isinstance(finetune, bool) or not isinstance(finetune, int) or finetune < 1:
        raise OptionError("finetune", f"must be a number of epochs ≥ 1, got {finetune!r}")
    if not 0 < holdout < 1:
        raise OptionError("holdout", f"must lie in (0, 1), got {holdout!r}")
    checked = CompileOptions.from_mapping(options)
    if checked.encoding == "rate":
        raise OptionError("finetune", "rate-encoded inputs are random at every step; use --encoding direct")
    if isinstance(data, Dataset) and data.y is None:
        raise OptionError("finetune", "needs labelled calibration data (a 'y' array beside 'x' in --calib)")
    labelled = as_dataset(data, "calibration data")
    steps = checked.timesteps
    fit, judge = _split(labelled, holdout, checked.seed)

    def heldout_accuracy(m: CompiledModel) -> float:
        return accuracy(first_output(m.run(judge.x, steps)), judge.y)

    quiet = {**options, "quiet": True}
    best = convert(model, fit, **{**quiet, "calibration": "none"})
    stages = [{"stage": "conversion", "heldout_accuracy": heldout_accuracy(best), "kept": True}]
    if checked.calibration != "none":
        calibrated = convert(model, fit, **quiet)
        score = heldout_accuracy(calibrated)
        kept = score > stages[0]["heldout_accuracy"]
        stages.append({"stage": f"calibration ({checked.calibration})", "heldout_accuracy": score, "kept": kept})
        if kept:
            best = calibrated
    tuned = finetune_model(best, (fit.x, fit.y), val=(judge.x, judge.y), timesteps=steps, epochs=finetune,
                           seed=checked.seed, progress=progress, **({"lr": lr} if lr is not None else {}))
    note = tuned.report["finetune"]
    stages.append({"stage": "finetune", "epochs": finetune, "heldout_accuracy": note["val_accuracy_after"],
                   "kept": bool(note["kept"])})
    tuned.report["pipeline"] = {"timesteps": steps, "fit_samples": len(fit), "heldout_samples": len(judge),
                                "stages": stages}
    return tuned
