"""Smoke test of benchmarks/finetune_speed.py: the quick run times both tools' fine-tuning step
on the digits CNN and writes the rows (the figures themselves are the benchmark's, not a test's)."""

import json

from benchmarks import finetune_speed


def test_quick_finetune_speed(tmp_path, capsys):
    out = tmp_path / "finetune_speed.json"
    result = finetune_speed.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text())["workloads"] == result["workloads"]
    rows = result["workloads"]["digits_cnn"]["rows"]
    assert set(rows) == {"snnc finetune", "SpikingJelly (converted)"}
    assert all(r["median_s"] > 0 and r["samples"] >= 3 for r in rows.values())
    speedup = result["workloads"]["digits_cnn"]["speedup"]
    assert speedup == rows["SpikingJelly (converted)"]["median_s"] / rows["snnc finetune"]["median_s"]
    assert "| digits_cnn |" in capsys.readouterr().out
