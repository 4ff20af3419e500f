"""IR → IR passes: one file per pass, each ``run(graph, ctx) -> graph``, pure and logged.

Order in :func:`snncompiler.compiler.compile`: fold BN → activation statistics → thresholds →
neuronize (→ calibration, in a later pipeline).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..ir import Graph

log = logging.getLogger("snncompiler.passes")


@dataclass
class PassContext:
    """What passes share: options, calibration data, and a record of what each pass did."""

    options: dict[str, Any] = field(default_factory=dict)
    calib: Any = None  # snncompiler.data.Dataset
    report: dict[str, Any] = field(default_factory=dict)

    def note(self, pass_name: str, message: str) -> None:
        """Log and remember one line about what a pass changed."""
        log.info("%s: %s", pass_name, message)
        self.report.setdefault(pass_name, []).append(message)


def run_pipeline(graph: Graph, ctx: PassContext, passes) -> Graph:
    """Run passes in order; each gets and returns a graph (inputs are never mutated)."""
    for p in passes:
        graph = p.run(graph.copy(), ctx).validate()
    return graph
