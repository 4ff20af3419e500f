"""The finance example app (apps/finance): quick run end to end, ANN vs SNN and the baselines."""
from __future__ import annotations

import json

from apps.finance.__main__ import main


def test_finance_quick(tmp_path):
    record = main(["--quick", "--out", str(tmp_path), "--timesteps", "1,8,32"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {"ann", "snn", "ann_mode", "torch", "data"} <= set(saved)
    assert set(saved["snn"]) == {"1", "8", "32"}
    assert (tmp_path / "finance.snn.onnx").exists()

    ann = record["ann"]["accuracy"]
    torch_acc = {name: s["accuracy"] for name, s in record["torch"].items()}
    # the exported ONNX is the trained torch model (one near-tie sample may flip)
    assert abs(ann - torch_acc["credibility"]) <= 1.5 / record["samples"]
    # the planted ordering: credibility gate > uniform sum of posts > price only, all above chance
    assert ann >= 0.58
    assert ann >= torch_acc["uniform_posts"] + 0.01
    assert torch_acc["uniform_posts"] >= torch_acc["price_only"] + 0.02
    assert record["ann"]["mcc"] > 0.15 and record["ann"]["long_short_return"] > 0
    # the gate learned the hidden reputation from the identity features
    assert record["gate_reputation_corr"] > 0.7

    # the Hardtanh gate became a neuron; only gate × sentiment stays analog
    assert record["analog_islands"] == ["/Mul"]
    snn = record["snn"]["32"]["accuracy"]
    assert abs(snn - ann) <= 0.03
    assert snn > record["snn"]["1"]["accuracy"]
