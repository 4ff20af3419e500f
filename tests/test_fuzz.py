"""The fuzz suite's default run: 300 seeded mutations of an ONNX model, an artifact, an .npz and a
.nir file, each run through the CLI in its own process under a memory limit and a timeout
(tests/fuzz/driver.py). Every case must end with exit 0 and a sane output, or exit 2 and exactly
one stderr line. `make fuzz` runs 3,000."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DRIVER = Path(__file__).resolve().parent / "fuzz" / "driver.py"


def test_fuzz_300_cases(tmp_path):
    result_path = tmp_path / "fuzz.json"
    proc = subprocess.run(
        [sys.executable, str(DRIVER), "--cases", "300", "--seed", "0", "--jobs", "2", "--json", str(result_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result_path.exists(), proc.stderr[-3000:]
    result = json.loads(result_path.read_text())
    assert sum(sum(row.values()) for row in result["table"].values()) == 300
    report = "\n".join(
        f"{f['kind']} case {f['index']} {f['outcome']}: {' '.join(f['argv'])}\n{f['stderr'][-800:]}"
        for f in result["failures"][:10]
    )
    assert not result["failures"], f"{len(result['failures'])} failing case(s):\n{report}"
    assert proc.returncode == 0, proc.stdout[-3000:]
    # both passing outcomes occur: the mutations reach past the first parse, and some are refused
    totals = {}
    for row in result["table"].values():
        for outcome, n in row.items():
            totals[outcome] = totals.get(outcome, 0) + n
    assert totals.get("exit 0", 0) > 0 and totals.get("exit 2", 0) > 0, totals
