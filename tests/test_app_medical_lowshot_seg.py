"""The medical app (one-shot organ segmentation) end to end in its --quick configuration."""
import json

import numpy as np

from apps.medical.__main__ import main
from apps.medical.task import abdomen, dice_scores


def test_medical_quick(tmp_path):
    record = main(["--quick", "--out", str(tmp_path), "--timesteps", "1,16,64"])

    # predicting all background/body scores 0 on every organ: the ANN must be far above that
    _, labels = abdomen(4, seed=0, size=32)
    assert dice_scores(np.zeros_like(labels), labels)["mean_dice"] == 0.0
    ann = record["ann"]["mean_dice"]
    assert ann >= 0.6, record["ann"]
    assert min(record["ann"][organ] for organ in ("liver", "kidney", "spleen")) >= 0.4, record["ann"]

    # the export form (folded weight norm, no embedding norm, hard max over modes) keeps the argmax,
    # and the ONNX file computes what the torch export form does
    assert record["export_argmax_agreement"] >= 0.99
    assert abs(record["torch_export_form"]["mean_dice"] - ann) <= 0.01

    # the spiking model converges to the ANN: within 0.05 mean Dice at T=64, far better than at T=1
    snn = record["snn"]
    assert abs(snn["64"]["mean_dice"] - ann) <= 0.05, snn
    assert snn["64"]["mean_dice"] >= snn["1"]["mean_dice"] + 0.2, snn
    assert snn["64"]["mean_dice"] >= snn["16"]["mean_dice"] - 0.01, snn
    assert record["analog_islands"], "the max over modes (ONNX Max of two activations) is an analog island"

    saved = json.loads((tmp_path / "results.json").read_text())
    assert {"ann", "snn", "ann_mode", "linear_head_torch", "torch_train_form"} <= set(saved)
    assert (tmp_path / "medical.snn.onnx").exists()
