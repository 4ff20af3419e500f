"""The one route to few timesteps (`snnc compile --finetune`, `snnc.compile(..., finetune=E)`):
every stage is judged on held-out data, the returned model is the last kept stage, options are
checked before any work, and the CLI reports the stages."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import snncompiler as snnc
from snncompiler.analysis.metrics import accuracy
from snncompiler.data import Dataset, save_npz
from snncompiler.errors import OptionError
from snncompiler.model import first_output
from snncompiler.options import FINETUNE_LR
from snncompiler.train import pipeline


def test_pipeline_keeps_only_stages_that_raise_heldout_accuracy(small_digits_cnn):
    path, train, test = small_digits_cnn
    data = Dataset(train.x[:400], train.y[:400])
    model = snnc.compile(str(path), data, timesteps=2, calibration="light", finetune=2, seed=0)
    report = model.report["pipeline"]
    stages = report["stages"]
    assert [s["stage"] for s in stages] == [
        "conversion (layer-wise θ)",
        "conversion (channel-wise θ)",
        "calibration (light)",
        "finetune",
    ]
    # one conversion goes on, the better on held-out data, and its granularity is the model's
    assert [s["kept"] for s in stages[:2]].count(True) == 1
    winner = stages[0] if stages[0]["kept"] else stages[1]
    assert winner["channelwise"] == report["channelwise"] == model.options["channelwise"]
    assert report["heldout_samples"] == 80 and report["fit_samples"] == 320 and report["timesteps"] == 2
    # the returned model scores, on the held-out split, what the last kept stage reported
    _, judge = pipeline._split(data, pipeline.PIPELINE_HOLDOUT, 0)
    final = accuracy(first_output(model.run(judge.x, 2)), judge.y)
    kept = [s for s in stages if s["kept"]]
    assert final == pytest.approx(kept[-1]["heldout_accuracy"])
    # a stage is kept only if it beat the best before it: accuracy first, then the loss
    best = stages[0]
    for stage in stages[1:]:
        key = (stage["heldout_accuracy"], -stage["heldout_loss"])
        assert stage["kept"] == (key > (best["heldout_accuracy"], -best["heldout_loss"]))
        best = stage if stage["kept"] else best
    assert model.options["timesteps"] == 2


def test_a_failed_finetune_is_dropped_and_reported(small_digits_cnn, monkeypatch):
    """Fine-tuning that fails mid-way (training drove a θ below zero) drops that stage only:
    the pipeline returns the last kept stage and records the reason."""
    path, train, _ = small_digits_cnn

    def failing(*args, **kwargs):
        raise snnc.SnncError("node 'relu': fine-tuning drove θ to -0.003; lower --lr or pass --no-learn-theta")

    monkeypatch.setattr(pipeline, "finetune_model", failing)
    model = snnc.compile(str(path), Dataset(train.x[:200], train.y[:200]), timesteps=2, finetune=1, seed=0)
    stages = model.report["pipeline"]["stages"]
    assert stages[-1]["stage"] == "finetune" and not stages[-1]["kept"] and "drove θ" in stages[-1]["failed"]
    assert "finetune" not in model.report  # no fine-tuned model came back to describe
    kept = [s for s in stages if s["kept"]]
    assert len(kept) == 1 and kept[0]["stage"].startswith("conversion")


@pytest.mark.parametrize("channelwise", [False, True])
def test_pipeline_converts_once_when_the_granularity_is_given(small_digits_cnn, channelwise):
    path, train, _ = small_digits_cnn
    data = Dataset(train.x[:200], train.y[:200])
    model = snnc.compile(str(path), data, timesteps=2, finetune=1, channelwise=channelwise, seed=0)
    report = model.report["pipeline"]
    assert [s["stage"] for s in report["stages"]] == ["conversion", "finetune"]
    assert report["channelwise"] is channelwise and model.options["channelwise"] is channelwise


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(finetune=0), "^finetune: must be a number of epochs"),
        (dict(finetune=2, threshold="p200"), "^threshold: "),
        (dict(finetune=2, encoding="rate"), "^finetune: rate-encoded"),
        (dict(finetune=2, distill=1.5), "^distill: must lie in"),
        (dict(distill=0.5), "^distill: .*needs finetune"),
    ],
)
def test_pipeline_options_are_checked_before_any_work(small_digits_cnn, monkeypatch, bad, match):
    path, train, _ = small_digits_cnn

    def never(*args, **kwargs):
        raise AssertionError("the pipeline started before its options were checked")

    monkeypatch.setattr(pipeline, "convert", never)
    with pytest.raises(snnc.SnncError, match=match):
        snnc.compile(str(path), Dataset(train.x[:50], train.y[:50]), **bad)


def test_pipeline_needs_labels(small_digits_cnn):
    path, train, _ = small_digits_cnn
    with pytest.raises(OptionError, match="labelled calibration data"):
        snnc.compile(str(path), Dataset(train.x[:50]), finetune=1)


def test_cli_compile_finetune_reports_each_stage(small_digits_cnn, tmp_path):
    path, train, test = small_digits_cnn
    calib = save_npz(tmp_path / "calib.npz", train.x[:200], train.y[:200])
    out = tmp_path / "m.snn.onnx"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "snncompiler.cli",
            "compile",
            str(path),
            "--calib",
            str(calib),
            "-o",
            str(out),
            "--timesteps",
            "2",
            "--finetune",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "pipeline at T=2 (held-out accuracy and cross-entropy on 40 labelled" in done.stdout
    assert "conversion" in done.stdout and "finetune" in done.stdout
    reloaded = snnc.load(str(out))
    assert [s["stage"] for s in reloaded.report["pipeline"]["stages"]] == [
        "conversion (layer-wise θ)",
        "conversion (channel-wise θ)",
        "finetune",
    ]
    unlabelled = save_npz(tmp_path / "x.npz", train.x[:50])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "snncompiler.cli",
            "compile",
            str(path),
            "--calib",
            str(unlabelled),
            "-o",
            str(tmp_path / "n.snn.onnx"),
            "--finetune",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "--finetune: needs labelled calibration data" in done.stderr
    assert not (tmp_path / "n.snn.onnx").exists()
    np.testing.assert_array_equal(reloaded.graph.inputs[0].shape[1:], (1, 8, 8))


@pytest.fixture
def adam_lrs(monkeypatch):
    """The learning rate of every Adam optimizer built while the test runs (issue #19: the value
    must reach the optimizer, not just the report)."""
    import torch

    seen = []
    real = torch.optim.Adam

    def recording(params, *args, **kwargs):
        opt = real(params, *args, **kwargs)
        seen.append(opt.param_groups[0]["lr"])
        return opt

    monkeypatch.setattr(torch.optim, "Adam", recording)
    return seen


def test_pipeline_lr_reaches_the_optimizer(small_digits_cnn, adam_lrs):
    path, train, _ = small_digits_cnn
    data = Dataset(train.x[:100], train.y[:100])
    snnc.compile(str(path), data, timesteps=2, calibration="none", finetune=1, finetune_lr=0.0123, seed=0)
    assert adam_lrs == [0.0123]
    adam_lrs.clear()
    snnc.compile(str(path), data, timesteps=2, calibration="none", finetune=1, seed=0)
    assert adam_lrs == [FINETUNE_LR]  # the default of `snnc finetune --lr` too


def test_pipeline_lr_is_checked(small_digits_cnn):
    path, train, _ = small_digits_cnn
    data = Dataset(train.x[:50], train.y[:50])
    with pytest.raises(OptionError, match="^lr: must be a finite number > 0"):
        snnc.compile(str(path), data, finetune=1, finetune_lr=-1.0)
    with pytest.raises(OptionError, match="^finetune_lr: .*needs finetune"):
        snnc.compile(str(path), data, finetune_lr=1e-3)


def test_cli_compile_lr_reaches_the_optimizer(small_digits_cnn, tmp_path, adam_lrs, capsys):
    from snncompiler.cli.main import main

    path, train, _ = small_digits_cnn
    calib = save_npz(tmp_path / "calib.npz", train.x[:100], train.y[:100])
    out = tmp_path / "m.snn.onnx"
    base = ["compile", str(path), "--calib", str(calib), "-o", str(out), "--timesteps", "2", "--calibration", "none"]
    assert main([*base, "--finetune", "1", "--lr", "0.0042"]) == 0
    assert adam_lrs == [0.0042]
    capsys.readouterr()
    assert main([*base, "--lr", "0.0042"]) == 2  # without --finetune it would do nothing: refused
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("snnc: error: --lr: ") and "--finetune" in err, err


def test_pipeline_distill_reaches_finetuning(small_digits_cnn):
    path, train, _ = small_digits_cnn
    data = Dataset(train.x[:100], train.y[:100])
    model = snnc.compile(str(path), data, timesteps=2, calibration="none", finetune=1, distill=0.5, seed=0)
    assert model.report["pipeline"]["distill"] == 0.5 and model.report["pipeline"]["finetune_lr"] == FINETUNE_LR
    assert model.report["finetune"]["distill"] == 0.5  # fit's own record: the teacher was used


def test_cli_compile_distill_needs_finetune(small_digits_cnn, tmp_path, capsys):
    from snncompiler.cli.main import main

    path, train, _ = small_digits_cnn
    calib = save_npz(tmp_path / "calib.npz", train.x[:100], train.y[:100])
    base = ["compile", str(path), "--calib", str(calib), "-o", str(tmp_path / "m.snn.onnx")]
    assert main([*base, "--distill", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("snnc: error: --distill: ") and "--finetune" in err, err
    with pytest.raises(SystemExit) as exited:  # argparse's own refusal of the value
        main([*base, "--finetune", "1", "--distill", "2"])
    assert exited.value.code == 2 and "--distill: must lie in [0, 1]" in capsys.readouterr().err
