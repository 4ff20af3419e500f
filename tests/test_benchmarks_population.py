"""Smoke test of benchmarks/population.py: the quick grid runs end to end, records every row, and
a population of two costs more energy than one neuron per unit (its spikes are counted as such)."""

import json

from benchmarks import population


def test_quick_population_grid(tmp_path, capsys):
    out = tmp_path / "population.json"
    result = population.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text())["workloads"].keys() == {"digits_cnn"}
    rows = result["workloads"]["digits_cnn"]["rows"]
    assert [r["population"] for r in rows] == [1, 2]
    assert all(0.5 < r["accuracy"] <= 1.0 for r in rows)
    one, two = rows
    assert two["energy_over_ann"] > 1.2 * one["energy_over_ann"]
    assert "| 2 | none |" in capsys.readouterr().out
