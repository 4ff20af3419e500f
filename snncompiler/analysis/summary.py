"""``snnc inspect``: a per-node table of a model and how each node will convert."""

from __future__ import annotations

import math
from collections import Counter

from ..ir import Graph
from ..ir.ops import OPS, conversion_kind
from ..passes.signed_relu import SPLIT
from ..passes.spike_flow import MAC_LAYERS, mac_source, site_neurons, value_kinds
from ..runtime.executor import infer_shapes


def node_rows(graph: Graph) -> list[dict]:
    """One dict per IR node (and per ONNX node the frontend removed) with shape, params, MACs, kind."""
    shapes_known = all(v.shape is not None for v in graph.inputs) and not graph.find("unsupported")
    if shapes_known:
        infer_shapes(graph)
    rows = []
    for node in graph.nodes:
        spec = OPS[node.op]
        in_shapes = [graph.shape(i) for i in node.inputs]
        out_shapes = [graph.shape(o) for o in node.outputs]
        macs = 0
        if spec.macs is not None and all(s is not None for s in out_shapes + in_shapes):
            macs = int(spec.macs(node, in_shapes, out_shapes))
        rows.append(
            {
                "name": node.name,
                "op": node.source_op,
                "core_op": node.op,
                "output_shape": list(out_shapes[0]) if out_shapes and out_shapes[0] is not None else None,
                "params": node.param_count(),
                "macs": macs,
                "conversion": "spiking" if node.op in SPLIT else _kind_label(spec.conversion_kind(node)),
                "detail": _detail(node),
            }
        )
    for name, op_type, why in graph.removed:
        rows.append(
            {
                "name": name,
                "op": op_type,
                "core_op": "-",
                "output_shape": None,
                "params": 0,
                "macs": 0,
                "conversion": "folded",
                "detail": why,
            }
        )
    return rows


def _kind_label(kind: str) -> str:
    return {"analog": "analog island"}.get(kind, kind)


def _detail(node) -> str:
    if node.op == "neuron":
        th = node.params.get("theta")
        if th is not None:
            return (
                f"θ={float(th.reshape(-1)[0]):.4g}"
                if th.numel() == 1
                else f"θ per channel ({th.numel()}), mean {float(th.mean()):.4g}"
            )
    if node.op == "unsupported":
        return f"no converter for {node.attrs.get('op_type')}"
    if node.op in SPLIT:
        return "2 neurons: ReLU(x) − α·ReLU(−x)"
    return ""


def summary(graph: Graph, rows: list[dict]) -> dict:
    """Totals: parameters, MACs per sample, and node counts per conversion kind."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["conversion"]] = counts.get(r["conversion"], 0) + 1
    return {
        "nodes": len(graph.nodes),
        "parameters": graph.param_count(),
        "macs_per_sample": int(sum(r["macs"] for r in rows)),
        "conversion_counts": counts,
        "inputs": {v.name: list(v.shape) if v.shape else None for v in graph.inputs},
        "outputs": {v.name: list(graph.shape(v.name)) if graph.shape(v.name) else None for v in graph.outputs},
    }


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


#: Below this share of spike-driven MACs (after the input layers) a network counts as analog-heavy.
MIN_SPIKING_SHARE = 0.5


def _values_feeding_computation(graph: Graph) -> set[str]:
    """Values that a neuron or a MAC layer reads, directly or through any chain of other ops."""
    feeds: set[str] = set()
    for node in reversed(graph.nodes):
        if site_neurons(node) or node.op in MAC_LAYERS or any(o in feeds for o in node.outputs):
            feeds.update(node.inputs)
    return feeds


def spiking_share(graph: Graph, rows: list[dict] | None = None) -> dict:
    """How much of the network spikes: neuron layers (ReLU/Clip sites in an ANN), analog islands
    by activation, and the MACs of conv/linear/matmul by what their input is
    (:func:`value_kinds`, :func:`mac_source`).

    MACs of layers reading ``input`` are the encoding layer's (direct encoding: analog in any
    SNN); ``spiking_share`` is the share of the other MACs whose input is spikes. Products of
    two activations count as analog MACs.

    An island is a *readout* (``readout_islands``) when no neuron and no MAC layer reads its
    output, directly or through other ops: a final Softmax, ArgMax or TopK decodes the
    network's answer (off-chip on neuromorphic hardware) instead of computing inside it.
    """
    from ..passes.substitute import silu_pairs

    rows = rows if rows is not None else node_rows(graph)
    macs = {r["name"]: r["macs"] for r in rows}
    kinds = value_kinds(graph)
    silu_muls = {id(mul) for _, mul in silu_pairs(graph)}
    silu_sigmoids = {id(sig) for sig, _ in silu_pairs(graph)}
    totals = {"input": 0, "spikes": 0, "dense": 0}
    neurons, islands, island_nodes = 0, Counter(), []
    for node in graph.nodes:
        neurons += site_neurons(node)
        if not site_neurons(node) and conversion_kind(node) == "analog" and id(node) not in silu_sigmoids:
            key = "SiLU" if id(node) in silu_muls else node.source_op  # a SiLU's sigmoid and product: one
            islands[key] += 1
            island_nodes.append((node, key))
        if node.op in MAC_LAYERS:
            totals[mac_source(node, kinds)] += macs.get(node.name, 0)
    after_input = totals["spikes"] + totals["dense"]
    feeds = _values_feeding_computation(graph)
    readouts = Counter(key for node, key in island_nodes if not any(o in feeds for o in node.outputs))
    return {
        "neurons": neurons,
        "analog_islands": sum(islands.values()),
        "readout_islands": sum(readouts.values()),
        "islands_by_activation": dict(islands.most_common()),
        "readout_by_activation": dict(readouts.most_common()),
        "macs": sum(totals.values()),
        "encoding_macs": totals["input"],
        "spiking_macs": totals["spikes"],
        "analog_macs": totals["dense"],
        "spiking_share": (totals["spikes"] / after_input) if after_input else None,
    }


def share_line(share: dict) -> str:
    """One line: neuron layers, analog islands, spike-driven share of the MACs."""
    text = f"{share['neurons']} neuron layers, {share['analog_islands']} analog islands"
    if share.get("readout_islands"):
        text += f" ({share['readout_islands']} in the readout)"
    if share["spiking_share"] is None:
        return text + "; no MACs after the input layer"
    return (
        text + f"; {100 * share['spiking_share']:.1f}% of the MACs after the input layer read spikes "
        f"({human(share['spiking_macs'])} of {human(share['spiking_macs'] + share['analog_macs'])} per sample)"
    )


def analog_heavy_warning(share: dict, graph: Graph, label: str) -> str | None:
    """The one-line warning for a network that barely spikes, or None.

    The rule: no neuron at all, or under :data:`MIN_SPIKING_SHARE` of the MACs after the
    input layer driven by spikes. It names the activations responsible and the option to try.
    """
    low = share["spiking_share"] is not None and share["spiking_share"] < MIN_SPIKING_SHARE
    if share["neurons"] and not low:
        return None
    from ..passes.substitute import substitutable

    what = ", ".join(f"{op} ×{k}" for op, k in share["islands_by_activation"].items()) or "no activation at all"
    head = (
        f"{label}: 0 neurons, nothing spikes"
        if not share["neurons"]
        else f"{label}: analog-heavy, only {100 * share['spiking_share']:.0f}% of the MACs after the input layer "
        f"read spikes"
    )
    if share["neurons"] and not share["analog_islands"]:  # the analog MACs read activation-free values
        from ..passes.fuse_linear import fusible_layers

        fusible = len(fusible_layers(graph))
        exact = (
            f"--fuse-linear (exact: {fusible} 1x1/linear layers read the spikes through composed weights) or "
            if fusible
            else ""
        )
        return (
            f"{head}: the others read values no activation bounds (linear bottlenecks, residual sums without "
            f"ReLU); try {exact}--signed-spikes (each such value read as spikes of two neurons, ReLU(x) - ReLU(-x))"
        )
    swap = substitutable(graph)
    hint = (
        f"try --substitute relu ({', '.join(swap)} become spiking ReLUs; then snnc finetune)"
        if swap
        else "replace these activations by ReLU in the model and retrain"
    )
    return f"{head}: {share['analog_islands']} analog islands ({what}); {hint}"
