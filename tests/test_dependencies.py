"""Every third-party module the library imports is declared in pyproject.toml: a runtime
dependency, or an optional extra for the feature that needs it (issue #20: onnx_ir and ml_dtypes
were imported but only arrived through onnxscript), and every runtime dependency says beside it
which API sets its lower bound."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the check is the same on every version

ROOT = Path(__file__).resolve().parents[1]

#: Imported, on purpose not declared: why.
UNDECLARED = {
    "triton": "the GPU backend; it ships with torch's CUDA builds and is imported only when present",
    "h5py": "the NIR reader's file check; the `nir` extra's nir package depends on it",
}


def _name(requirement: str) -> str:
    """A requirement's distribution name, normalised (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0]).lower()


def _imported_modules() -> dict[str, str]:
    """Top-level third-party modules imported anywhere in snncompiler/: {module: a file importing it}."""
    found = {}
    for path in sorted((ROOT / "snncompiler").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "snncompiler":
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_imported_module_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {_name(r) for r in project["dependencies"]}
    for extra, requirements in project["optional-dependencies"].items():
        if extra != "dev":  # dev is for the tests; a user never installs it
            declared |= {_name(r) for r in requirements}
    providers = metadata.packages_distributions()
    missing = []
    for module, where in _imported_modules().items():
        if module in UNDECLARED:
            continue
        distributions = {_name(d) for d in providers.get(module, [module])}
        if not distributions & declared:
            missing.append(f"{module} ({where}; distribution {', '.join(sorted(distributions))})")
    assert not missing, "imported but not declared in pyproject.toml: " + "; ".join(missing)


def test_every_runtime_dependency_names_what_sets_its_bound():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = text[text.index("dependencies = [") : text.index("]\n", text.index("dependencies = ["))]
    lines = block.splitlines()[1:]
    for i, line in enumerate(lines):
        if line.strip().startswith('"'):
            comment = []
            j = i - 1
            while j >= 0 and lines[j].strip().startswith("#"):
                comment.append(lines[j])
                j -= 1
            assert ">=" in line and comment, f"{line.strip()}: needs a lower bound and a comment above it saying why"
