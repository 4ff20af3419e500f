"""The concept-bottleneck choroid-tumour app (apps/medical/concept_classifier): the fundus loader on
files the test writes, the planted data, the metrics against scikit-learn, and a smoke-size run of
the whole app (train, export, snnc compile/calibrate/finetune, --json) with floors from measurements."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("skimage")
from PIL import Image

from apps.medical.concept_classifier import __main__ as app
from apps.medical.concept_classifier.task import CONCEPTS, SIZE, auc, find_disc, fundus_cases, load_fundus, macro_f1
from snncompiler.errors import SnncError


def test_load_fundus_reads_rgb_and_grey_files_and_names_a_bad_one(tmp_path):
    rgb = np.zeros((80, 96, 3), np.uint8)
    rgb[..., 0], rgb[10:20, 30:40] = 200, 255
    Image.fromarray(rgb).save(tmp_path / "eye.png")
    Image.fromarray(rgb[..., 1]).save(tmp_path / "grey.jpg", quality=100)
    image = load_fundus(tmp_path / "eye.png")
    assert image.shape == (80, 96, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image, rgb / 255.0, atol=1e-6)
    grey = load_fundus(tmp_path / "grey.jpg")
    assert grey.shape == (80, 96, 3) and np.allclose(grey[..., 0], grey[..., 2])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(SnncError, match="broken.jpg"):
        load_fundus(tmp_path / "broken.jpg")
    Image.fromarray(rgb[:20, :20]).save(tmp_path / "tiny.png")
    with pytest.raises(SnncError, match="tiny.png"):
        load_fundus(tmp_path / "tiny.png")


def test_find_disc_locates_the_bright_region():
    image = np.full((200, 240, 3), 0.4, np.float32)
    image[120:150, 40:70] = 1.0
    row, col = find_disc(image)
    assert 120 <= row < 150 and 40 <= col < 70
    real = load_fundus()  # the bundled retina.jpg: its disc is left of centre, at mid height
    row, col = find_disc(real)
    assert 0.35 < row / real.shape[0] < 0.6 and col / real.shape[1] < 0.3


def test_planted_concepts_are_visible_in_the_images():
    x, y, c = fundus_cases(120, seed=3)
    again = fundus_cases(120, seed=3)
    np.testing.assert_array_equal(x, again[0])  # deterministic in the seed
    assert x.shape == (120, 3, SIZE, SIZE) and set(np.unique(y)) == {0, 1, 2} and c.shape == (120, len(CONCEPTS))
    # pigmented lesions put dark-brown pixels on the fundus (luminance 0.05-0.3: darker than
    # the vessels, brighter than the black rim); measured 9 % of the image with, 0.3 % without
    luminance = x.mean(1).reshape(120, -1)
    dark = ((luminance > 0.05) & (luminance < 0.3)).mean(1)
    pig = c[:, CONCEPTS.index("pigmented")] > 0
    assert dark[pig].mean() > 10 * dark[~pig].mean()


def test_metrics_match_scikit_learn():
    from sklearn.metrics import f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    labels, predicted = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    assert macro_f1(predicted, labels) == pytest.approx(f1_score(labels, predicted, average="macro"))
    positives, scores = rng.random(200) < 0.4, np.round(rng.random(200), 1)  # rounded: ties count one half
    assert auc(scores, positives) == pytest.approx(roc_auc_score(positives, scores))


def test_smoke_run_reports_f1_concepts_and_energy(tmp_path, monkeypatch, capsys):
    # smaller than --quick: train cases, test cases, epochs, fine-tuning epochs, calibration iterations
    monkeypatch.setitem(app.CONFIGS, "quick", (500, 200, 8, 1, 20))
    app.main(["--quick", "--json", "--out", str(tmp_path), "--timesteps", "1,2,4,8,32"])
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) >= {"task", "metric", "ann", "snn", "seconds"} and summary["metric"] == "macro_f1"
    record = json.loads((tmp_path / "results.json").read_text())
    ann, snn32 = record["ann"], record["snn"]["32"]
    # measured at this size: ANN macro-F1 0.80 (chance 0.33, Bayes limit of the concept table 0.89)
    assert ann["macro_f1"] > 0.6
    assert snn32["macro_f1"] >= ann["macro_f1"] - 0.02
    # the clearly drawn concepts are learned (measured AUC 0.95-1.0) and survive conversion
    for name in ("large", "pigmented", "orange"):
        assert ann[f"auc_{name}"] > 0.85 and snn32[f"auc_{name}"] > ann[f"auc_{name}"] - 0.03
    # the SNN's concept outputs read as the ANN's concept scores (measured ≥ 0.98 at T=32)
    assert min(snn32[f"corr_{name}"] for name in CONCEPTS) > 0.9
    assert record["snn"]["1"]["mean_concept_corr"] < snn32["mean_concept_corr"]
    assert set(record["advanced"]) == {"1", "2", "4"} and set(record["finetune"]) == {"1", "2", "4"}
    assert record["energy"]["32"]["energy_ratio_fp32"] > record["energy"]["1"]["energy_ratio_fp32"] > 0
    assert 0 < record["concept_theta"]["large"] <= 1.0  # Clip(0, 1) caps θ at 1
