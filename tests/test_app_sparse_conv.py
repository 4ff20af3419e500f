"""The sparse-convolution app, in its quick configuration: weight masks learned, exported as
zeros, compiled, and fewer synaptic operations than the same network trained dense."""
from __future__ import annotations

import json

from apps.sparse_conv.__main__ import main


def test_sparse_conv_app(tmp_path):
    record = main(["--quick", "--out", str(tmp_path), "--timesteps", "1,8,32"])
    assert json.loads((tmp_path / "results.json").read_text())["sparse"]["snn"].keys() == {"1", "8", "32"}
    for variant in ("sparse", "dense"):
        rec = record[variant]
        assert rec["export_matches_training_form"]
        assert rec["ann"]["accuracy"] >= 0.9
        assert abs(rec["snn"]["32"]["accuracy"] - rec["ann"]["accuracy"]) <= 0.03
        assert rec["ann_mode"]["accuracy"] >= rec["ann"]["accuracy"] - 0.02
    sparse = record["sparse"]
    # the masks learned something, and the artifact carries the zeros (measured on the compiled graph)
    assert max(sparse["conv_weight_density"][1:]) < 0.9
    kept = [r["weight_density"] for r in sparse["synaptic_ops"]["layers"][:3]]
    assert kept == [round(d, 6) for d in sparse["conv_weight_density"]] or \
        all(abs(a - b) < 1e-6 for a, b in zip(kept, sparse["conv_weight_density"]))
    assert record["sparse_over_dense"]["snn_acs"] < 0.95
    assert record["dense"]["synaptic_ops"]["layers"][1]["weight_density"] == 1.0
