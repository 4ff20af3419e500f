"""``snnc inspect``: a per-node table of a model and how each node will convert."""
from __future__ import annotations

import math

from .ir import Graph
from .runtime.executor import infer_shapes
from .runtime.ops import CORE_OPS


def node_rows(graph: Graph) -> list[dict]:
    """One dict per IR node (and per ONNX node the frontend removed) with shape, params, MACs, kind."""
    shapes_known = all(v.shape is not None for v in graph.inputs) and not graph.find("unsupported")
    if shapes_known:
        infer_shapes(graph)
    rows = []
    for node in graph.nodes:
        spec = CORE_OPS[node.op]
        in_shapes = [graph.shape(i) for i in node.inputs]
        out_shapes = [graph.shape(o) for o in node.outputs]
        macs = 0
        if spec.macs is not None and all(s is not None for s in out_shapes + in_shapes):
            macs = int(spec.macs(node, in_shapes, out_shapes))
        rows.append({
            "name": node.name,
            "op": node.source_op,
            "core_op": node.op,
            "output_shape": list(out_shapes[0]) if out_shapes and out_shapes[0] is not None else None,
            "params": node.param_count(),
            "macs": macs,
            "conversion": _kind_label(spec.conversion_kind(node)),
            "detail": _detail(node),
        })
    for name, op_type, why in graph.removed:
        rows.append({"name": name, "op": op_type, "core_op": "-", "output_shape": None, "params": 0, "macs": 0,
                     "conversion": "folded", "detail": why})
    return rows


def _kind_label(kind: str) -> str:
    return {"analog": "analog island"}.get(kind, kind)


def _detail(node) -> str:
    if node.op == "neuron":
        th = node.params.get("theta")
        if th is not None:
            return f"θ={float(th.reshape(-1)[0]):.4g}" if th.numel() == 1 else f"θ per channel ({th.numel()}), mean {float(th.mean()):.4g}"
    if node.op == "unsupported":
        return f"no converter for {node.attrs.get('op_type')}"
    return ""


def summary(graph: Graph, rows: list[dict]) -> dict:
    """Totals: parameters, MACs per sample, and node counts per conversion kind."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["conversion"]] = counts.get(r["conversion"], 0) + 1
    return {"nodes": len(graph.nodes), "parameters": graph.param_count(),
            "macs_per_sample": int(sum(r["macs"] for r in rows)), "conversion_counts": counts,
            "inputs": {v.name: list(v.shape) if v.shape else None for v in graph.inputs},
            "outputs": {v.name: list(graph.shape(v.name)) if graph.shape(v.name) else None for v in graph.outputs}}


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Render dict rows as an aligned text table."""
    cells = [[title for _, title in columns]]
    for r in rows:
        cells.append([_fmt(r.get(key)) for key, _ in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths).rstrip())
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return "x".join(map(str, v))
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 10000:
        return f"{v:,}"
    return str(v)


def human(n: float) -> str:
    """1234567 → '1.23M'."""
    if n == 0:
        return "0"
    k = min(int(math.log10(abs(n)) // 3), 4)
    return f"{n / 10 ** (3 * k):.3g}{['', 'k', 'M', 'G', 'T'][k]}"
