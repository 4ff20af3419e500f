"""The GIRNet-style registration app (apps/medical/registration): the planted geometry against
independent implementations (scipy's map_coordinates vs torch's grid_sample), the slice loaders on
files the test writes, the metrics, and a smoke-size run of the whole app with floors from measurements."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("nilearn")
pytest.importorskip("nibabel")

from apps.medical.registration import __main__ as app
from apps.medical.registration.task import (
    inverse_flow,
    load_slice,
    registration_pairs,
    registration_scores,
    sample_at,
    smooth_field,
    warp,
)
from snncompiler.errors import SnncError


def test_warp_matches_scipy_sampling():
    rng = np.random.default_rng(0)
    image = rng.random((24, 24)).astype(np.float32)
    flow = smooth_field(rng, 24, 1.5)
    by_scipy = sample_at(image, flow)
    by_torch = warp(torch.from_numpy(image)[None, None], torch.from_numpy(flow)[None]).numpy()[0, 0]
    inner = np.s_[4:-4, 4:-4]  # away from the border, where zero padding differs in detail
    np.testing.assert_allclose(by_torch[inner], by_scipy[inner], atol=1e-5)


def test_inverse_flow_undoes_the_field():
    rng = np.random.default_rng(1)
    field = smooth_field(rng, 32, 1.6)
    phi = inverse_flow(field)
    # x + phi(x) + field(x + phi(x)) = x
    residual = phi + sample_at(field, phi, mode="nearest")
    inner = np.s_[:, 3:-3, 3:-3]
    assert np.abs(residual[inner]).max() < 0.05 < np.abs(field).max()


def test_pairs_register_with_the_true_flow_outside_the_lesion():
    data = registration_pairs(6, seed=0, size=32)
    assert data["x"].shape == (6, 2, 32, 32) and data["flow"].shape == (6, 2, 32, 32)
    fixed, moving = data["x"][:, 0], torch.from_numpy(data["x"][:, 1:2])
    # away from the image border: the brain reaches it at 32 px, and there the warp samples the
    # zero padding (with the border, per-pair ratios ranged 0.16-1.09 across these six pairs)
    interior = np.zeros((32, 32), bool)
    interior[4:-4, 4:-4] = True
    region = (data["brain"] > 0.5) & (data["lesion_fixed"] < 0.5) & interior
    warped = warp(moving, torch.from_numpy(data["flow"])).numpy()[:, 0]
    before = ((data["x"][:, 1] - fixed)[region] ** 2).mean()
    after = ((warped - fixed)[region] ** 2).mean()
    assert after < 0.2 * before  # measured 0.037 (per pair 0.01-0.10): interpolation is what remains
    assert (data["lesion_moving"].reshape(6, -1).max(1) == 1).all()
    # the lesion has no counterpart in the fixed image: inside it the warped moving image differs
    inside = data["lesion_fixed"] > 0.9
    assert ((warped - fixed)[inside] ** 2).mean() > 5 * after


def test_scores_of_the_truth_and_of_no_registration():
    data = registration_pairs(4, seed=2, size=32)
    truth = np.concatenate([data["flow"], np.where(data["lesion_moving"][:, None] > 0.5, 3.0, -3.0)], 1)
    perfect = registration_scores(truth, data)
    assert perfect["epe_outside"] == 0 and perfect["lesion_dice"] == 1
    none = registration_scores(np.concatenate([np.zeros_like(data["flow"]), -np.ones_like(truth[:, 2:])], 1), data)
    assert none["epe_outside"] == pytest.approx(none["epe_identity"]) and none["epe_identity"] > 0.5
    assert none["lesion_dice"] == 0


def test_load_slice_reads_nifti_and_png_and_names_a_bad_file(tmp_path):
    import nibabel as nib
    from PIL import Image

    volume = np.zeros((20, 24, 9), np.float32)
    volume[5:15, 6:18, 4] = 100.0
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(tmp_path / "brain.nii.gz"))
    image = load_slice(tmp_path / "brain.nii.gz", size=16)
    assert image.shape == (16, 16) and image.max() == pytest.approx(1.0) and image.min() == 0
    Image.fromarray((volume[:, :, 4] * 2).astype(np.uint8)).save(tmp_path / "slice.png")
    np.testing.assert_allclose(load_slice(tmp_path / "slice.png", size=16), image, atol=1e-6)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(SnncError, match="bad.png"):
        load_slice(tmp_path / "bad.png")
    (tmp_path / "bad.nii").write_bytes(b"not a volume")
    with pytest.raises(SnncError, match="bad.nii"):
        load_slice(tmp_path / "bad.nii")


def test_smoke_run_registers_segments_and_converts(tmp_path, monkeypatch, capsys):
    # smaller than --quick: size, train pairs, test pairs, epochs, width, calibration iterations
    monkeypatch.setitem(app.CONFIGS, "quick", (32, 192, 32, 10, 12, 20))
    app.main(["--quick", "--json", "--out", str(tmp_path), "--timesteps", "1,4,32"])
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) >= {"task", "metric", "ann", "snn", "seconds"} and summary["metric"] == "lesion_dice"
    record = json.loads((tmp_path / "results.json").read_text())
    ann, snn32 = record["ann"], record["snn"]["32"]
    # measured at this size: see the floors' comments
    assert ann["lesion_dice"] > 0.5
    assert ann["epe_outside"] < 0.8 * ann["epe_identity"]
    assert snn32["lesion_dice"] >= ann["lesion_dice"] - 0.03
    assert snn32["epe_outside"] <= ann["epe_outside"] + 0.1
    assert record["finetune"] == {} and "not applicable" in record["finetune_not_applicable"]
    assert set(record["advanced"]) == {"1", "2", "4"}
    assert record["energy"]["32"]["energy_ratio_fp32"] > record["energy"]["1"]["energy_ratio_fp32"] > 0
