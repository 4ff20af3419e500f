"""Wall time at 1 and 2 processes (torchrun, gloo on the CPU): compile with advanced calibration,
evaluation, and one fine-tuning epoch under DistributedDataParallel.

    python -m benchmarks.scaling                    # digits CNN; writes benchmarks/results/scaling.json
    python -m benchmarks.scaling --runs 1x1,2x1,4x1 # other runs: PROCESSESxTHREADS (threads per process)

The inputs (the benchmarks' DigitsCNN trained on the digits train split, exported to ONNX; 512
calibration samples, the 539-sample test split, the 1258-sample train split) are prepared once.
Each run (by default 1 process × 1 thread, 2 × 1, and 1 × 2 to tell the processes' share from
the threads') then runs as ``torchrun --standalone --nproc_per_node N -m benchmarks.scaling
--worker DIR``: every process times each phase between barriers (rank 0 records it), so the
figures are the phases' own wall times, without interpreter start-up and process-group set-up,
which are recorded separately (``launch_seconds``: the whole torchrun command). The results are
from whatever machine runs this: on a shared, loaded VM the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scaling.json"
COMPILE = {"calibration": "advanced", "timesteps": 4, "quiet": True}
EVAL_T = [1, 2, 4, 8, 16, 32]
EPOCH = {"timesteps": 4, "epochs": 1, "batch_size": 64, "lr": 1e-3, "progress": False, "seed": 0}


def prepare(out: Path, epochs: int) -> None:
    """Train the digits CNN once and write model.onnx, calib.npz, test.npz, train.npz."""
    import numpy as np
    import torch

    from examples.workloads import digits_cnn_bench, export_onnx

    torch.manual_seed(0)
    work = digits_cnn_bench(seed=0, epochs=epochs)
    export_onnx(work.model, work.input_shape, out / "model.onnx")
    np.savez(out / "calib.npz", x=work.calib.x)
    np.savez(out / "test.npz", x=work.test.x, y=work.test.y)
    np.savez(out / "train.npz", x=work.train.x, y=work.train.y)


def worker(src: Path) -> None:
    """One process of a torchrun group: time compile, evaluate and one training epoch."""
    import numpy as np
    import torch

    import snncompiler as snnc
    from snncompiler import distributed
    from snncompiler.fileio import write_text
    from snncompiler.train import fit
    from snncompiler.train.finetune import GraphNet

    distributed.init_from_env("cpu")
    timings = {}

    def timed(name, fn):
        distributed.barrier()
        t0 = time.perf_counter()
        value = fn()
        distributed.barrier()
        timings[name] = round(time.perf_counter() - t0, 3)
        return value

    calib = np.load(src / "calib.npz")["x"]
    test, train = np.load(src / "test.npz"), np.load(src / "train.npz")
    model = timed("compile_advanced", lambda: snnc.compile(str(src / "model.onnx"), calib, **COMPILE))
    result = timed("eval", lambda: model.evaluate(test["x"], test["y"], EVAL_T))
    plain = snnc.compile(str(src / "model.onnx"), calib, timesteps=4, quiet=True)  # no v_init: trainable
    net = GraphNet(plain.graph)
    timed("train_epoch", lambda: fit(net, (train["x"], train["y"]), **EPOCH))
    if distributed.is_main():
        record = {
            "world_size": distributed.world_size(),
            "threads_per_process": torch.get_num_threads(),
            "seconds": timings,
            "eval": result,
            "calibration_kept": model.report.get("calibration_check", {}).get("kept"),
        }
        write_text(src / f"world{distributed.world_size()}.json", json.dumps(record))
    distributed.shutdown()


def main() -> None:
    """Prepare the inputs, run every world size under torchrun, write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs",
        default="1x1,2x1,1x2",
        help="PROCESSESxTHREADS per run, comma-separated (default 1x1,2x1,1x2); speed-ups are against the first",
    )
    parser.add_argument("--train-epochs", type=int, default=10, help="epochs of the ANN that is converted")
    parser.add_argument("--worker", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker))
        return
    from snncompiler.fileio import write_text

    cores = os.cpu_count() or 1
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp)
        prepare(src, args.train_epochs)
        for spec in args.runs.split(","):
            n, threads = (int(v) for v in spec.lower().split("x"))
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={n}",
                "-m",
                "benchmarks.scaling",
                "--worker",
                str(src),
            ]
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            subprocess.run(command, check=True, env=env, cwd=ROOT)
            record = json.loads((src / f"world{n}.json").read_text())
            (src / f"world{n}.json").unlink()
            record.update(
                launch_seconds=round(time.perf_counter() - t0, 3),
                load_average_before=round(load, 2),
                omp_num_threads=threads,
            )
            runs.append(record)
            print(f"{n} process(es) x {threads} thread(s): {record['seconds']} (load {load:.1f})", flush=True)
    base = runs[0]["seconds"]
    for record in runs:
        record["speedup"] = {k: round(base[k] / v, 3) for k, v in record["seconds"].items()}
    out = {
        "command": "python -m benchmarks.scaling --runs " + args.runs,
        "cpu_cores": cores,
        "machine": f"{cores}-core VM shared with other jobs (load average recorded per run)",
        "workload": "digits CNN: compile --calibration advanced --timesteps 4 on 512 calibration samples; "
        f"evaluate 539 test samples at T={EVAL_T}; one fine-tuning epoch (T=4, global batch 64) "
        "on 1258 samples under DistributedDataParallel",
        "runs": runs,
    }
    write_text(RESULTS, json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
