"""Wall time of the command line's quick answers: `snnc --help`, `snnc compile --help`, `snnc --version`
and `snnc env` (median of N fresh processes each).

    python -m benchmarks.cli_startup                      # this checkout, 15 runs each
    python -m benchmarks.cli_startup --runs 30 --baseline OLD_CHECKOUT

Each run is a new ``python -m snncompiler.cli ...`` process with ``PYTHONPATH`` set to the
checkout measured, so the numbers include the interpreter's own start (``python -c pass`` is
measured too, as the floor, and ``python -c 'import torch'``, the floor of ``snnc env``, which
reports torch's threads and CUDA and so must import it). ``--baseline DIR`` times another checkout of the project (the code
before a change, with its extensions built) in the same session, interleaved run by run with
this one so both see the same machine load. Results go to ``benchmarks/results/cli_startup.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from snncompiler.fileio import write_text

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -c pass": None,
    "snnc --help": ["--help"],
    "snnc compile --help": ["compile", "--help"],
    "snnc --version": ["--version"],
    "snnc env": ["env"],
    # what `snnc env` cannot avoid: the rest of its time is snnc's own
    "python -c 'import torch'": ["-c", "import torch"],
}


def once(root: Path, args: list[str] | None) -> float | None:
    """Seconds one fresh process takes to answer (``args`` None: an empty interpreter; starting with
    ``-c``: that Python code, not snnc); None when the command fails there (a baseline without
    ``--version``)."""
    env = dict(os.environ, PYTHONPATH=str(root), TQDM_DISABLE="1")
    if args is None:
        argv = [sys.executable, "-c", "pass"]
    elif args[0] == "-c":
        argv = [sys.executable, *args]
    else:
        argv = [sys.executable, "-m", "snncompiler.cli", *args]
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=root)
    seconds = time.perf_counter() - t0
    return seconds if done.returncode == 0 else None


def measure(roots: dict[str, Path], runs: int) -> dict:
    """{checkout label: {command: {median_s, min_s, max_s, runs}}}, runs interleaved across checkouts."""
    times: dict[str, dict[str, list[float]]] = {label: {c: [] for c in COMMANDS} for label in roots}
    for root in roots.values():  # warm the file cache and the .pyc files first
        for args in COMMANDS.values():
            once(root, args)
    for _ in range(runs):
        for command, args in COMMANDS.items():
            for label, root in roots.items():
                times[label][command].append(once(root, args))
    return {
        label: {
            c: (
                {
                    "median_s": round(statistics.median(v), 4),
                    "min_s": round(min(v), 4),
                    "max_s": round(max(v), 4),
                    "runs": len(v),
                }
                if None not in v
                else {"error": "command failed"}
            )
            for c, v in per.items()
        }
        for label, per in times.items()
    }


def main(argv=None) -> int:
    """Measure and write the JSON; print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15, help="processes per command and checkout (default 15)")
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout to time beside this one")
    ap.add_argument(
        "-o",
        "--output",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "cli_startup.json",
        help="where to write the results (default benchmarks/results/cli_startup.json)",
    )
    args = ap.parse_args(argv)
    roots = {"this checkout": ROOT}
    if args.baseline is not None:
        roots["baseline"] = args.baseline.resolve()
    results = measure(roots, args.runs)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    record = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": load,
        "runs": args.runs,
        "command": "python -m snncompiler.cli ARGS (fresh process, PYTHONPATH=checkout)",
        "baseline": str(args.baseline) if args.baseline else None,
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.output, json.dumps(record, indent=1) + "\n")
    print(f"median of {args.runs} fresh processes (load average {load})")
    for label, per in results.items():
        print(label)
        for command, r in per.items():
            print(
                f"  {command:<26} "
                + (
                    f"{r['median_s']:7.3f} s  (min {r['min_s']:.3f}, max {r['max_s']:.3f})"
                    if "error" not in r
                    else "    failed"
                )
            )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
