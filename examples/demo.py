"""`make demo`: train a small CNN on scikit-learn's digits, export it to ONNX, then inspect and
evaluate it, compile it into a spiking network and measure its accuracy at every T, with the
`snnc` command line exactly as a user would.

Beyond the runtime dependencies it needs the ``demo`` extra (scikit-learn, for the digits);
without it the demo says so in one line and exits with status 2.
"""

from __future__ import annotations

import importlib
import shlex
import subprocess
import sys
from pathlib import Path

from examples.workloads import digits_cnn_workload

#: (module imported, distribution that provides it): what the demo needs beyond `pip install .`;
#: pyproject.toml's `demo` extra lists the same distributions.
DEMO_REQUIREMENTS = (("sklearn", "scikit-learn"),)
INSTALL_HINT = "pip install 'snncompiler[demo]'"


def missing_requirement() -> str | None:
    """The first distribution of :data:`DEMO_REQUIREMENTS` that cannot be imported, or None."""
    for module, distribution in DEMO_REQUIREMENTS:
        try:
            importlib.import_module(module)
        except ImportError:
            return distribution
    return None


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


def run(argv: list[str]) -> int:
    """The `python -m examples.demo [OUT_DIR]` entry point: checks the demo's requirements first
    (one line and status 2 when one is missing, not a traceback halfway through), then runs it."""
    absent = missing_requirement()
    if absent is not None:
        print(f"demo: error: the demo needs {absent}, which is not installed; run: {INSTALL_HINT}", file=sys.stderr)
        return 2
    main(*argv)
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
