"""The package's import graph follows the layer order of the architecture (README, "Architecture").

Every import counts, function-local ones included: a deferred import that points up the layers
is still a dependency running against the flow, it is only hidden. The graph is built from the
source with ``ast`` (nothing is imported), so a violation is reported even in code no test runs.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "snncompiler"

#: Bottom to top. A module may import its own layer or any layer below it, never one above.
LAYERS = [
    ["snncompiler.errors", "snncompiler._version"],
    ["snncompiler.limits", "snncompiler.fileio", "snncompiler.progress", "snncompiler.ir", "snncompiler.distributed"],
    ["snncompiler.options", "snncompiler.data"],
    ["snncompiler.kernels"],
    ["snncompiler.runtime"],
    ["snncompiler.formats"],
    ["snncompiler.passes"],
    ["snncompiler.analysis", "snncompiler.environment"],
    ["snncompiler.model"],
    ["snncompiler.compiler"],
    ["snncompiler.train"],
    ["snncompiler"],  # the face: __init__.py
    ["snncompiler.cli"],
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def extension_modules() -> set[str]:
    """The compiled extensions setup.py declares (``from . import _lif_cpu`` names a module)."""
    return set(re.findall(r'"(snncompiler(?:\.\w+)+)"', (ROOT / "setup.py").read_text()))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules ``name`` imports (absolute names), at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    type_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and _is_type_checking(block.test)
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in type_only:  # `if TYPE_CHECKING:` imports exist for annotations only, never at run time
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {f"{target}.{alias.name}" for alias in node.names} & known
            found |= submodules  # `from . import submodule` imports the submodule, not the package's names
            if len(submodules) < len(node.names):
                found.add(target)
    return found


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    if rank is None:
        raise AssertionError(f"{module} is in no layer of LAYERS: place it")
    return rank


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods) | extension_modules()
    return {name: {t for t in imports_of(name, path, known) if t in mods and t != name} for name, path in mods.items()}


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_no_import_points_up_the_layers():
    upward = [
        f"{src} (layer {layer_of(src)}) imports {dst} (layer {layer_of(dst)})"
        for src, targets in graph().items()
        for dst in sorted(targets)
        if layer_of(dst) > layer_of(src)
    ]
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_import_graph_has_no_cycles():
    edges = graph()
    # package __init__ files re-export their children: parent -> child edges are structure, and a
    # child importing a sibling through its parent package is the only way such a pair cycles
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_library_never_imports_examples_apps_or_tests():
    mods = modules()
    bad = [
        f"{name} imports {target}"
        for name, path in mods.items()
        for target in imports_of(name, path, set(mods))
        if target.split(".")[0] in ("examples", "apps", "benchmarks", "tests")
    ]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_violation(tmp_path):
    """The checks above can fail: an upward import and a cycle in a synthetic package are found."""
    fake = tmp_path / "snncompiler"
    (fake / "ir").mkdir(parents=True)
    (fake / "ir" / "__init__.py").write_text("from ..compiler import compile\n")
    (fake / "compiler.py").write_text("def f():\n    from .ir import Graph\n")
    known = {"snncompiler.ir", "snncompiler.compiler"}
    ir_imports = imports_of("snncompiler.ir", fake / "ir" / "__init__.py", known)
    assert "snncompiler.compiler" in ir_imports
    assert layer_of("snncompiler.compiler") > layer_of("snncompiler.ir")
    assert "snncompiler.ir" in imports_of("snncompiler.compiler", fake / "compiler.py", known)
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("elsewhere.module")
