"""Smoke test of benchmarks/population_speed.py: the quick run times every row and writes them
(the figures themselves are the benchmark's, not a test's)."""

import json

from benchmarks import population_speed


def test_quick_population_speed(tmp_path, capsys):
    out = tmp_path / "population_speed.json"
    result = population_speed.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text())["op"] == result["op"]
    assert [r["population"] for r in result["op"]] == [2, 4]
    assert all(r["fused_ms"] > 0 and r["composed_ms"] > 0 and r["plain_ms"] > 0 for r in result["op"])
    assert [r["population"] for r in result["train"]] == [2, 4]
    assert all(r["fused_ms"] > 0 and r["composed_ms"] > 0 and r["plain_ms"] > 0 for r in result["train"])
    assert [(r["workload"], r["population"]) for r in result["models"]] == [("digits_cnn", b) for b in (1, 2, 4)]
    assert result["models"][0]["over_b1"] == 1.0
    assert "| digits_cnn | 4 |" in capsys.readouterr().out
