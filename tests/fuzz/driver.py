"""Fuzz driver: seeded mutations of snnc's inputs, each run through the CLI in its own process.

    python tests/fuzz/driver.py --cases 3000 [--seed 0] [--jobs 2] [--timeout 120] [--json out.json]

Seeds: a small conv net (ONNX), its compiled artifact, its NIR export and a labelled .npz, built
once. Each case mutates one of them (tests/fuzz/mutators.py) and runs one ``snnc`` command on it.
The driver imports snncompiler once and ``fork``s a child per case, which runs
``snncompiler.cli.main(argv)`` exactly as ``python -m snncompiler.cli`` would, with stdout and
stderr on files, under ``RLIMIT_AS`` (the warm interpreter's address space plus ``--memory``,
3 GiB by default) and a per-case wall-clock timeout after which it is killed. Forking saves the
2-5 s interpreter start per case; each case still has its own process, memory limit and timeout.

Outcomes: ``exit 0`` (with a sane output: the file written and readable, the report printed),
``exit 2`` (exactly one stderr line, no traceback) are passes; ``internal`` (exit 1),
``traceback``, ``memory`` (MemoryError / bad_alloc under the limit), ``multi-line`` (exit 2 with
more than one stderr line), ``bad output`` (exit 0 without a sane output), ``signal``,
``timeout`` and any other exit status are failures. The table of case kind × outcome is
printed; the exit status is 1 if any case failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import mutators

PASSES = ("exit 0", "exit 2")
#: (seed file, command) → weight: how often each kind of case is drawn.
KINDS = {
    "onnx:inspect": 3,
    "onnx:eval": 3,
    "onnx:compile": 2,
    "artifact:eval": 3,
    "artifact:run": 2,
    "artifact:inspect": 1,
    "npz:eval": 3,
    "npz:run": 2,
    "nir:run": 2,
    "nir:inspect": 1,
}
SAMPLES = 8


def build_seeds(root: Path) -> None:
    """The seed files, in ``root``: model.onnx, model.snn.onnx, model.nir, data.npz, calib.npz."""
    import logging

    import numpy as np
    import torch
    import torch.nn as nn

    import snncompiler as snnc
    from examples.workloads import export_onnx
    from snncompiler.data import Dataset

    logging.disable(logging.WARNING)  # the NIR export's notes on what NIR cannot represent
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))
    export_onnx(net, (1, 8, 8), root / "model.onnx")
    rng = np.random.default_rng(0)
    x = rng.random((SAMPLES, 1, 8, 8), dtype=np.float32)
    np.savez(root / "data.npz", x=x, y=rng.integers(0, 10, SAMPLES))
    np.savez(root / "calib.npz", x=x)
    model = snnc.compile(str(root / "model.onnx"), Dataset(x), timesteps=4, quiet=True)
    model.save(root / "model.snn.onnx")
    model.save_nir(root / "model.nir")


def _warm_imports() -> None:
    """Import what the commands import lazily, so that each forked case starts warm. Nothing here
    starts a thread (torch's and onnxruntime's pools start at first use, in the children)."""
    import h5py  # noqa: F401
    import nir  # noqa: F401
    import onnxruntime  # noqa: F401
    import onnxscript.optimizer  # noqa: F401

    import snncompiler.analysis.diagnostics
    import snncompiler.analysis.metrics
    import snncompiler.analysis.summary
    import snncompiler.cli.main
    import snncompiler.compiler
    import snncompiler.formats.nir.reader
    import snncompiler.formats.nir.writer
    import snncompiler.formats.onnx
    import snncompiler.formats.onnx.ort
    import snncompiler.formats.onnx.writer  # noqa: F401


def make_case(index: int, seed: int, seeds: Path, work: Path) -> dict:
    """Case ``index``: its kind, the mutated input written into ``work``, and the argv to run."""
    rng = random.Random(f"{seed}:{index}")
    kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
    source, command = kind.split(":")
    name = {"onnx": "model.onnx", "artifact": "model.snn.onnx", "npz": "data.npz", "nir": "model.nir"}[source]
    original = (seeds / name).read_bytes()
    target = work / ("case" + "".join(Path(name).suffixes))
    try:
        if source == "nir":
            mutators.mutate_nir(original, rng, target)
        else:
            mutate = mutators.mutate_npz if source == "npz" else mutators.mutate_onnx
            target.write_bytes(mutate(original, rng))
    except Exception:  # a mutation the editor itself cannot make: plain byte damage instead
        target.write_bytes(mutators.flip_bytes(original, rng))
    out = work / ("out.snn.onnx" if command == "compile" else "out.npz")
    data = str(seeds / "data.npz")
    model = {"npz": str(seeds / ("model.onnx" if command == "eval" else "model.snn.onnx"))}.get(source, str(target))
    if source == "npz":
        data = str(target)
    argv = {
        "inspect": ["inspect", model],
        "eval": ["eval", model, "--data", data] + (["--timesteps", "1,4"] if source in ("artifact", "nir") else []),
        "run": ["run", model, "--input", data, "-o", str(out)],
        "compile": ["compile", model, "--calib", str(seeds / "calib.npz"), "-o", str(out), "--timesteps", "4"],
    }[command]
    return {"index": index, "kind": kind, "argv": argv, "output": str(out), "work": str(work)}


def _child(case: dict, memory: int) -> None:
    """Runs in the forked process: the limits, stdout/stderr on files, then the CLI."""
    code = 1
    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        work = Path(case["work"])
        for fd, name in ((1, "stdout"), (2, "stderr")):
            handle = os.open(work / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        os.chdir(work)
        from snncompiler.cli.main import main

        code = main(case["argv"])
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 2
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(int(code) & 0xFF)


def _sane(case: dict, stdout: str) -> bool:
    """Whether an exit-0 case produced what its command promises."""
    command = case["argv"][0]
    if command == "inspect":
        return "nodes" in stdout
    if command == "eval":
        return "%" in stdout
    path = Path(case["output"])
    if not path.is_file():
        return False
    if command == "run":
        import numpy as np

        fed = case["argv"][case["argv"].index("--input") + 1]
        with np.load(fed, allow_pickle=False) as z:  # a mutation may change how many samples there are
            samples = z["x"].shape[0] if "x" in z.files else z[z.files[0]].shape[0]
        with np.load(path, allow_pickle=False) as z:
            return "y" in z.files and z["y"].shape[0] == samples and bool(np.isfinite(z["y"]).all())
    import onnx

    model = onnx.load(str(path))
    return any(p.key == "snncompiler.artifact" for p in model.metadata_props)


def classify(case: dict, status: int | None) -> tuple[str, str]:
    """(outcome, the stderr text) of a finished case; ``status`` None means it timed out."""
    work = Path(case["work"])
    err = (work / "stderr").read_text(errors="replace") if (work / "stderr").exists() else ""
    out = (work / "stdout").read_text(errors="replace") if (work / "stdout").exists() else ""
    if status is None:
        return "timeout", err
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}", err
    code = os.WEXITSTATUS(status)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if code == 0:
        try:
            return ("exit 0" if _sane(case, out) else "bad output"), err
        except Exception as exc:
            return "bad output", f"{err}\n{type(exc).__name__}: {exc}"
    if code == 2:
        ok = len(lines) == 1 and "Traceback" not in err and lines[0].startswith("snnc")
        return ("exit 2" if ok else "multi-line"), err
    if any(w in err for w in ("MemoryError", "Unable to allocate", "bad_alloc", "out of memory")):
        return "memory", err
    if "Traceback" in err:
        return "traceback", err
    return ("internal" if code == 1 else f"exit {code}"), err


def run(cases: int, seed: int, jobs: int, timeout: float, memory_extra: int, keep: Path | None) -> dict:
    """Run the cases; return {"table": {kind: {outcome: n}}, "failures": [...], "seconds": s}."""
    root = Path(tempfile.mkdtemp(prefix="snnc-fuzz-"))
    seeds = root / "seeds"
    seeds.mkdir()
    pid = os.fork()  # seeds are built in a child: this process never starts a thread pool
    if pid == 0:
        try:
            build_seeds(seeds)
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise SystemExit("fuzz: building the seed files failed")
    _warm_imports()
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    memory = vm + memory_extra
    table: dict[str, Counter] = defaultdict(Counter)
    failures = []
    running: dict[int, tuple[dict, float]] = {}
    todo = list(range(cases))
    t0 = time.perf_counter()
    while todo or running:
        while todo and len(running) < jobs:
            index = todo.pop(0)
            work = root / f"case{index}"
            work.mkdir()
            case = make_case(index, seed, seeds, work)
            sys.stdout.flush()
            sys.stderr.flush()
            child = os.fork()
            if child == 0:
                _child(case, memory)
            running[child] = (case, time.monotonic())
        finished = []
        done_pid, status = os.waitpid(-1, os.WNOHANG)
        if done_pid:
            finished.append((done_pid, status))
        for child, (_case, started) in list(running.items()):
            if child not in {p for p, _ in finished} and time.monotonic() - started > timeout:
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
                finished.append((child, None))
        if not finished:
            time.sleep(0.01)
        for child, status in finished:
            case, _ = running.pop(child)
            outcome, err = classify(case, status)
            table[case["kind"]][outcome] += 1
            if outcome not in PASSES:
                failures.append(
                    {
                        "index": case["index"],
                        "kind": case["kind"],
                        "outcome": outcome,
                        "argv": case["argv"],
                        "stderr": err[-2000:],
                    }
                )
                if keep is not None:
                    shutil.copytree(case["work"], keep / f"case{case['index']}", dirs_exist_ok=True)
            shutil.rmtree(case["work"], ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    return {
        "cases": cases,
        "seed": seed,
        "memory_limit_bytes": memory,
        "timeout_s": timeout,
        "seconds": round(time.perf_counter() - t0, 1),
        "table": {k: dict(v) for k, v in sorted(table.items())},
        "failures": failures,
    }


def format_table(result: dict) -> str:
    """The outcome table: one row per case kind, one column per outcome seen, with totals."""
    outcomes = list(PASSES) + sorted({o for row in result["table"].values() for o in row} - set(PASSES))
    header = ["case kind"] + outcomes + ["total"]
    rows = [
        [kind] + [str(counts.get(o, 0)) for o in outcomes] + [str(sum(counts.values()))]
        for kind, counts in result["table"].items()
    ]
    totals = Counter()
    for counts in result["table"].values():
        totals.update(counts)
    rows.append(["all"] + [str(totals.get(o, 0)) for o in outcomes] + [str(sum(totals.values()))])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: (
        "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |"
    )
    lines = [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Command line: run the cases, print the table (and failures), exit 1 on any failure."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per case before it counts as a hang")
    p.add_argument(
        "--memory", type=float, default=3.0, help="GiB of address space per case above the warm interpreter's"
    )
    p.add_argument("--json", help="write the result (table, failures) here")
    p.add_argument("--keep", help="copy the inputs of failing cases into this folder")
    args = p.parse_args(argv)
    keep = Path(args.keep) if args.keep else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    result = run(args.cases, args.seed, args.jobs, args.timeout, int(args.memory * (1 << 30)), keep)
    print(format_table(result))
    print(
        f"{result['cases']} cases (seed {result['seed']}) in {result['seconds']} s, "
        f"{len(result['failures'])} failure(s); per case: RLIMIT_AS {result['memory_limit_bytes'] / (1 << 30):.1f} GiB, "
        f"timeout {result['timeout_s']:g} s"
    )
    for failure in result["failures"][:20]:
        tail = " | ".join(ln for ln in failure["stderr"].splitlines() if ln.strip())[-600:]
        print(
            f"FAIL case {failure['index']} {failure['kind']} {failure['outcome']}: {' '.join(failure['argv'])}\n    {tail}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
