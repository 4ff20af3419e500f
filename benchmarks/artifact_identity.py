"""Byte-for-byte identity of compiled artifacts across a refactor.

    python -m benchmarks.artifact_identity prepare DIR     # train + export the inputs once
    python -m benchmarks.artifact_identity hash DIR OUT.json   # compile each input, hash, evaluate

``prepare`` writes three ONNX models with their calibration and test sets: the demo's digits CNN,
and the digits CNN and digits ResNet of benchmarks/timestep_accuracy.py. ``hash`` compiles each
through the ``snnc`` command line (the demo's default settings, and the advanced calibration at
T=4) and records the SHA-256 of every artifact and its ``snnc eval`` accuracies. Run ``hash`` with
the code before and after a change on the same DIR and compare the two JSON files: equal hashes
mean the change kept behaviour bit for bit. Only ``prepare`` imports the example workloads, so
``hash`` works with either package layout.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from snncompiler.fileio import write_bytes, write_text

COMPILES = {
    "default": [],
    "advanced_T4": ["--timesteps", "4", "--calibration", "advanced"],
    "lif_T8": ["--timesteps", "8", "--neuron", "lif", "--calibration", "light"],
}


def prepare(out: Path) -> None:
    """Train the three workloads once and write ``NAME.onnx``, ``NAME.calib.npz``, ``NAME.test.npz``."""
    try:
        from snncompiler.examples.workloads import (
            digits_cnn_bench,
            digits_cnn_workload,
            digits_resnet_bench,
            export_onnx,
        )
    except ImportError:
        from examples.workloads import digits_cnn_bench, digits_cnn_workload, digits_resnet_bench, export_onnx
    from snncompiler.data import save_npz

    out.mkdir(parents=True, exist_ok=True)
    demo = digits_cnn_workload(out / "demo", verbose=False)
    for suffix, src in (("onnx", demo["onnx"]), ("calib.npz", demo["calib"]), ("test.npz", demo["test"])):
        write_bytes(out / f"demo.{suffix}", Path(src).read_bytes())
    for name, make in (("digits_cnn", digits_cnn_bench), ("digits_resnet", digits_resnet_bench)):
        work = make(seed=0)
        export_onnx(work.model, work.input_shape, out / f"{name}.onnx")
        save_npz(out / f"{name}.calib.npz", work.calib.x, work.calib.y)
        save_npz(out / f"{name}.test.npz", work.test.x, work.test.y)


def _snnc(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "snncompiler.cli", *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"snnc {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def hash_all(src: Path, out_json: Path) -> dict:
    """Compile every prepared model under every setting of :data:`COMPILES`; hash and evaluate."""
    result = {}
    for model in sorted(p.name[: -len(".onnx")] for p in src.glob("*.onnx") if not p.name.endswith(".snn.onnx")):
        for setting, flags in COMPILES.items():
            art = src / f"{model}.{setting}.snn.onnx"
            art.unlink(missing_ok=True)
            _snnc(
                "compile",
                str(src / f"{model}.onnx"),
                "--calib",
                str(src / f"{model}.calib.npz"),
                "-o",
                str(art),
                *flags,
            )
            evaluation = _snnc(
                "eval", str(art), "--data", str(src / f"{model}.test.npz"), "--timesteps", "1,4,32", "--json"
            )
            result[f"{model}/{setting}"] = {
                "sha256": hashlib.sha256(art.read_bytes()).hexdigest(),
                "eval": json.loads(evaluation),
            }
            print(f"{model}/{setting}: {result[f'{model}/{setting}']['sha256'][:16]}", flush=True)
    write_text(out_json, json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "prepare":
        prepare(Path(rest[0]))
    elif command == "hash":
        hash_all(Path(rest[0]), Path(rest[1]))
    else:
        sys.exit(f"unknown command {command!r}: prepare DIR | hash DIR OUT.json")
