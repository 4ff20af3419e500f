"""`snnc env`: what the installation runs on, for bug reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from snncompiler.kernels import available_backends, cpu


def snnc(*args, env=None):
    proc = subprocess.run(
        [sys.executable, "-m", "snncompiler.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_env_json_reports_the_kernels_in_use():
    rc, out, err = snnc("env", "--json", env={"SNNC_CPU_ISA": "baseline", "SNNC_CPU_STREAM_MB": "16"})
    assert rc == 0, err
    info = json.loads(out)
    assert info["packages"]["torch"] and info["packages"]["snncompiler"]
    assert info["neuron_backends"] == available_backends()
    if cpu.available():
        kernel = info["cpu_kernel"]
        assert kernel["isa"] == "baseline" and kernel["supported_isas"] == cpu.supported_isas()
        assert kernel["stream_min_bytes"] == 16 << 20
    assert info["env"]["SNNC_CPU_ISA"] == "baseline"


def test_env_text_is_one_line_per_fact():
    rc, out, err = snnc("env")
    assert rc == 0 and not err.strip(), err
    assert out.splitlines()[0].startswith("python: ")
    expected = f"C++ kernel: {cpu.isa()} " if cpu.available() else "C++ kernel: not built"
    assert any(line.startswith(expected) for line in out.splitlines()), out


def test_output_closed_early_is_not_an_error():
    """`snnc env --json | head -1`: the reader leaves; no traceback and no error status."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "snncompiler.cli", "env", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Error" not in err, err
