"""Smoke test of benchmarks/energy.py (accuracy vs energy under a rate penalty): its quick mode
runs end to end and writes the JSON the README table is copied from (about 10 s on 2 cores)."""

import json

from benchmarks import energy


def test_energy_quick(tmp_path, capsys):
    out = tmp_path / "energy.json"
    assert energy.main(["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    res = result["workloads"]["digits_cnn"]
    seed = res["per_seed"]["0"]
    assert set(seed["finetuned"]) == {"T2_lam0", "T2_lam2"}
    for point in [seed["conversion"], *seed["finetuned"].values()]:
        assert set(point["accuracy"]) == {"1", "2", "4"}
        assert all(0 < e < 2 for e in point["energy_fp32"].values())  # SNN energy as a fraction of the ANN's
        # energy grows with T: more steps, more synaptic operations
        assert point["energy_fp32"]["1"] < point["energy_fp32"]["2"] < point["energy_fp32"]["4"]
    assert "conversion (no fine-tuning)" in capsys.readouterr().out
