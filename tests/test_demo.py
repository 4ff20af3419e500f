"""`python -m examples.demo` after a plain `pip install .`: a missing demo requirement is one line
naming the package and the install command, exit status 2, no traceback; pyproject.toml's `demo`
extra declares every requirement the demo checks."""

from __future__ import annotations

import builtins
import re
import subprocess
import sys
from pathlib import Path

import pytest

from examples import demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_sklearn(monkeypatch):
    """Make `import sklearn` fail as it does where scikit-learn is not installed."""
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "sklearn" or name.startswith("sklearn."):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "sklearn", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_missing_requirement_is_one_line_and_exit_2(no_sklearn, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(demo, "main", lambda *a: ran.append(a))
    assert demo.run([]) == 2
    err = capsys.readouterr().err
    assert not ran, "the demo must stop before doing any work"
    assert err.count("\n") == 1 and "scikit-learn" in err and "pip install 'snncompiler[demo]'" in err, err


def test_requirements_present_runs_the_demo(monkeypatch):
    ran = []
    monkeypatch.setattr(demo, "missing_requirement", lambda: None)
    monkeypatch.setattr(demo, "main", lambda *a: ran.append(a))
    assert demo.run(["out"]) == 0 and ran == [("out",)]


def test_module_entry_point_without_sklearn_has_no_traceback():
    # a fresh interpreter in which `import sklearn` fails (a None entry in sys.modules), running
    # the module exactly as `make demo` does
    code = "import runpy, sys; sys.modules['sklearn'] = None; runpy.run_module('examples.demo', run_name='__main__')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr and r.stdout == "", r
    assert r.stderr.strip().splitlines() == [
        "demo: error: the demo needs scikit-learn, which is not installed; run: pip install 'snncompiler[demo]'"
    ]


def test_demo_extra_declares_every_requirement():
    text = (ROOT / "pyproject.toml").read_text()
    line = re.search(r"^demo = \[(.*)\]$", text, re.M)
    assert line, "pyproject.toml has no `demo` extra"
    declared = {re.split(r"[<>=!~\[ ]", d.strip().strip('"'))[0] for d in line.group(1).split(",") if d.strip()}
    assert {dist for _, dist in demo.DEMO_REQUIREMENTS} <= declared
