"""Smoke test of benchmarks/pipeline.py (the one route to few timesteps): its quick mode runs the
pipeline over two seeds with distillation and prints each stage and the gap over the seeds."""

import re

from benchmarks import pipeline


def test_pipeline_quick_over_seeds(capsys):
    assert pipeline.main(["--quick", "--only", "digits_cnn", "--seeds", "0,1", "--distill", "0.5"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("digits_cnn ")]
    assert len(rows) == 2 and all("conversion" in r and "finetune" in r for r in rows), out
    assert re.search(r"digits_cnn: gap -?\d+\.\d\d pt \(min .*\) over 2 seeds", out), out
