"""`make demo`: train a small CNN on scikit-learn's digits, export it to ONNX, then inspect and
evaluate it, compile it into a spiking network and measure its accuracy at every T, with the
`snnc` command line exactly as a user would."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from examples.workloads import digits_cnn_workload


def _snnc(*args: str) -> None:
    cmd = [sys.executable, "-m", "snncompiler.cli", *args]
    print(f"\n$ snnc {shlex.join(args)}", flush=True)
    subprocess.run(cmd, check=True)


def main(out_dir: str = "demo_out") -> None:
    """Run the demo end to end, writing files under ``out_dir``."""
    work = digits_cnn_workload(Path(out_dir))
    _snnc("inspect", str(work["onnx"]))
    _snnc("eval", str(work["onnx"]), "--data", str(work["test"]))
    snn = Path(out_dir) / "digits_cnn.snn.onnx"
    _snnc("compile", str(work["onnx"]), "--calib", str(work["calib"]), "-o", str(snn))
    _snnc("eval", str(snn), "--data", str(work["test"]), "--timesteps", "1,2,4,8,16,32,64")


if __name__ == "__main__":
    main(*sys.argv[1:])
