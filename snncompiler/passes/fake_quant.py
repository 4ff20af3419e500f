"""Fake quantization: rewrite each quantize → dequantize pair on an activation before conversion.

A quantized ONNX model (the QDQ format of onnxruntime's quantizer, PyTorch's QAT export, or the
QOperator layers lowered by formats/onnx/converters/quantization.py) rounds every activation to
its integer grid: y = s·(clamp(round(x/s) + z, qmin, qmax) − z). Left as they are, these pairs are
analog islands rounding rate-decoded values, which need many steps to settle; and the quantizer
has usually removed the ReLUs, since a grid that starts at 0 (z = qmin) clips negatives itself.
A spiking neuron quantizes in time anyway (T + 1 levels), so each pair becomes what it bounds:

* z = qmin on a value that can be negative (a layer's output, a sum, a difference):
  clip(x, 0, (qmax − z)·s), which the conversion turns into a neuron with θ at most the grid's
  top (the ReLU the quantizer removed);
* z = qmin right after a ReLU or Clip(0, c) read by nothing else: that activation takes the
  grid's top as its cap, and the pair goes;
* z = qmin on a value that is never negative (:func:`non_negative`: a pooled or reshaped neuron
  output, a sigmoid, a softmax; and the graph input, where a grid from 0 means the quantizer saw
  no negative input and no quantizer removed a ReLU): removed, as is any grid that spans both
  signs (z > qmin), which bounds a linear value only where calibration saw none.

Rounding to the grid is dropped in every case: the SNN approximates the float network with the
quantized weights (which fold into float weights when the model is read). A pair whose scale
varies per channel with z = qmin keeps a plain ReLU (clip has one bound).

A Clip on the integers between the two (QCDQ: Brevitas's low-bit export, torch's 0…127 grid)
narrows the grid (:func:`narrowed_grids`), as do the 4-bit types. However coarse, a grid keeps
the calibrated θ capped at its top rather than θ = its top: a post-training grid's top is the
calibration maximum (onnxruntime writes 4-bit grids too; on its 4-bit digits CNN and ResNet,
θ = top lost tens of points at T ≤ 4), while a trained grid's activations reach its top often
enough that the percentile is the top anyway.

A quantization-aware ANN trained for few timesteps writes its activation as arithmetic instead:
QCFS (Bu et al., ICLR 2022) trains y = λ·clamp(floor(x·L/λ + ½)/L, 0, 1) with a learnt λ per
layer and L levels (4 or 8), which torch exports as Div, Clip, Mul, Add, Floor, Div, Mul, in
either order. Every chain of scalar elementwise ops around a Floor/Round/Ceil is probed as a
function of its input (:func:`staircase`); one that is a uniform staircase from 0 to a top θ in L
steps, y = θ/L·clamp(floor(x·L/θ + δ), 0, L), becomes Clip(0, θ) marked with its ``levels``: a
neuron whose θ is the trained top, not a calibrated percentile (passes/thresholds.py). With
v0 = θ/2 an IF neuron computes exactly this staircase with δ = ½ from a constant input in T = L
steps, which is why such networks convert well at T ≈ L; passes/neuronize.py starts a neuron at
δ·θ where δ is another shift.
"""

from __future__ import annotations

import math

import torch

from ..ir import Graph, Node
from ..runtime.executor import run_node
from . import PassContext
from .spike_flow import ROUTING, is_site
from .thresholds import staircase_rate

NAME = "fake_quant"


def _same_grid(q: Node, dq: Node) -> bool:
    return (
        q.attrs.get("axis") == dq.attrs.get("axis")
        and torch.equal(q.params["scale"], dq.params["scale"])
        and torch.equal(q.params["zero_point"].to(torch.int32), dq.params["zero_point"].to(torch.int32))
    )


#: Ops whose output is never negative, whatever their input.
NON_NEGATIVE_OPS = {
    "relu",
    "neuron",
    "sigmoid",
    "hardsigmoid",
    "softmax",
    "hardmax",
    "abs",
    "exp",
    "sqrt",
    "softplus",
    "reduce_l1",
    "reduce_l2",
    "reduce_sum_square",
}
#: Ops that keep values non-negative: spike_flow's routing ops (they move, pick, pool, add or
#: multiply values; a constant operand must be non-negative too) but those that subtract or
#: negate, and Pad and Resize, which are checked on their own (a pad value, cubic weights).
KEEPS_NON_NEGATIVE = (ROUTING - {"sub", "neg", "pad", "resize"}) | {"reduce_max", "reduce_min"}


def non_negative(graph: Graph) -> set[str]:
    """Values that cannot be negative: the graph input (see the module docstring), outputs of
    :data:`NON_NEGATIVE_OPS` and Clip(≥ 0, ·), and :data:`KEEPS_NON_NEGATIVE` ops of those."""
    known = {v.name for v in graph.inputs}
    for node in graph.nodes:
        if node.op in NON_NEGATIVE_OPS or (
            node.op == "clip" and node.attrs.get("min") is not None and node.attrs["min"] >= 0.0
        ):
            ok = True
        elif node.op in KEEPS_NON_NEGATIVE or (node.op == "pad" and node.attrs.get("value", 0.0) >= 0.0):
            constants_ok = all(bool((t >= 0).all()) for t in node.params.values() if t.is_floating_point())
            ok = constants_ok and all(i in known for i in node.inputs)
        elif node.op == "resize" and node.attrs.get("mode") != "cubic":  # cubic weights overshoot below 0
            ok = all(i in known for i in node.inputs)
        else:
            ok = False
        if ok:
            known.update(node.outputs)
    return known


def _dequantized_only(graph: Graph, q: Node, value: str) -> list[Node]:
    """The readers of ``value`` when it is no graph output and every reader dequantizes it on
    ``q``'s grid; else []."""
    readers = graph.consumers(value)
    if value in {v.name for v in graph.outputs} or not readers:
        return []
    return readers if all(r.op == "dequantize" and _same_grid(q, r) for r in readers) else []


def pairs(graph: Graph) -> list[tuple[Node, list[Node]]]:
    """(quantize, its dequantizes) for every quantize whose output only dequantizes on the same grid."""
    return [(q, readers) for q in graph.find("quantize") if (readers := _dequantized_only(graph, q, q.outputs[0]))]


def grid_range(q: Node) -> tuple[int, int]:
    """The integers a quantize can give: its type's range, or the narrower ``qmin``/``qmax`` a
    Clip between it and its dequantize set (:func:`narrowed_grids`)."""
    info = torch.iinfo(getattr(torch, q.attrs["dtype"]))
    return int(q.attrs.get("qmin", info.min)), int(q.attrs.get("qmax", info.max))


def _grid_top(q: Node) -> tuple[bool, float | None]:
    """(whether the grid starts at 0, its top value if it is one number)."""
    qmin, qmax = grid_range(q)
    zero = q.params["zero_point"].to(torch.int64)
    starts_at_zero = bool(torch.all(zero == qmin))
    tops = (qmax - zero).double() * q.params["scale"].double()
    return starts_at_zero, (float(tops.reshape(-1)[0]) if torch.all(tops == tops.reshape(-1)[0]) else None)


def narrowed_grids(graph: Graph, ctx: PassContext) -> Graph:
    """Fold each Clip between a quantize and its dequantizes into the quantize's ``qmin``/``qmax``.

    This is the QCDQ form: Brevitas writes a grid narrower than its integer type (4 bits in
    uint8, say) as QuantizeLinear → Clip → DequantizeLinear, and torch exports its 0…127
    activation grid (``reduce_range``) the same way; left alone the three are analog islands."""
    outputs = {v.name for v in graph.outputs}
    drop = set()
    for clip in graph.find("clip"):
        q = graph.producer(clip.inputs[0])
        if q is None or q.op != "quantize" or q.outputs[0] in outputs or len(graph.consumers(q.outputs[0])) != 1:
            continue
        readers = _dequantized_only(graph, q, clip.outputs[0])
        if not readers:
            continue
        qmin, qmax = grid_range(q)
        lo, hi = clip.attrs.get("min"), clip.attrs.get("max")
        qmin, qmax = (
            max(qmin, math.ceil(lo)) if lo is not None else qmin,
            min(qmax, math.floor(hi)) if hi is not None else qmax,
        )
        if qmin >= qmax:  # a grid of one value is a constant, not an activation
            continue
        q.attrs = {**q.attrs, "qmin": qmin, "qmax": qmax}
        for r in readers:
            r.inputs = [q.outputs[0]]
        drop.add(clip.name)
        graph.removed.append((clip.name, clip.source_op, f"narrows the grid of {q.name} to {qmin}…{qmax}"))
        ctx.note(NAME, f"{clip.name}: narrows {q.name}'s {q.attrs['dtype']} grid to {qmin}…{qmax}")
    graph.nodes = [n for n in graph.nodes if n.name not in drop]
    return graph


#: Ops a chain around a rounding op may hold: one activation input, constants of one element.
STAIRCASE_OPS = {"mul", "div", "add", "sub", "neg", "relu", "clip", "max", "min", "identity"}
ROUNDING_OPS = {"floor", "ceil", "round"}
#: Most levels a trained staircase is read with; finer grids are left to calibration.
MAX_LEVELS = 1024


def _scalar_elementwise(node: Node) -> bool:
    if node.op not in STAIRCASE_OPS | ROUNDING_OPS or len(node.inputs) != 1 or len(node.outputs) != 1:
        return False
    return all(t.numel() == 1 and t.is_floating_point() for t in node.params.values())


def _evaluate(chain: list[Node], x: torch.Tensor) -> torch.Tensor:
    for node in chain:
        if node.op == "clip" and "levels" in node.attrs:  # a staircase read already: as the model computes it
            x = staircase_rate(x, node.attrs["max"], node.attrs["levels"], node.attrs["shift"])
        else:
            (x,) = run_node(node, [x])
    return x


def staircase(chain: list[Node]) -> tuple[float, int, float] | None:
    """(θ, L, δ) when the chain computes θ/L·clamp(floor(x·L/θ + δ), 0, L) for every x (probed
    densely in float32, as the model runs), else None."""
    with torch.no_grad():
        tails = _evaluate(chain, torch.tensor([-1e6, -1e3, -10.0, -1.0, -1e-3, 0.0, 1e3, 1e6]))
        top = float(tails[-1])
        if not (bool((tails[:6] == 0).all()) and float(tails[-2]) == top and 0 < top < float("inf")):
            return None
        xs = torch.linspace(-0.25 * top, 1.25 * top, 300_001)
        ys = _evaluate(chain, xs)
        if not bool((ys.diff() >= 0).all()) or float(ys[0]) != 0 or float(ys[-1]) != top:
            return None
        levels = torch.unique(ys).double()
        steps = len(levels) - 1
        if not 1 <= steps <= MAX_LEVELS:
            return None
        if float((levels - torch.arange(steps + 1, dtype=torch.float64) * top / steps).abs().max()) > 1e-5 * top:
            return None
        rises = torch.nonzero(ys.diff() > 0).flatten()
        if len(rises) != steps:  # each step one level: a uniform grid has no skipped level
            return None
        at = (xs[rises].double() + xs[rises + 1].double()) / 2
        shifts = torch.arange(1, steps + 1, dtype=torch.float64) - at * steps / top
        spacing = float(xs[1] - xs[0]) * steps / top
        if float(shifts.max() - shifts.min()) > 2 * spacing + 1e-4:
            return None
        return top, steps, float(shifts.mean().clamp(0.0, 1.0))


def _chains_around(graph: Graph, rounding: Node) -> list[list[Node]]:
    """The scalar elementwise chains through ``rounding``, longest first, each intermediate value
    read only by the next node."""
    outputs = {v.name for v in graph.outputs}

    def alone(node: Node) -> bool:
        return node.outputs[0] not in outputs and len(graph.consumers(node.outputs[0])) == 1

    before = []
    while True:
        p = graph.producer((before[0] if before else rounding).inputs[0])
        if p is None or not _scalar_elementwise(p) or p.op in ROUNDING_OPS or not alone(p):
            break
        before.insert(0, p)
    after, last = [], rounding
    while alone(last):
        (c,) = graph.consumers(last.outputs[0])
        if not _scalar_elementwise(c) or c.op in ROUNDING_OPS:
            break
        after.append(c)
        last = c
    spans = [(i, j) for i in range(len(before) + 1) for j in range(len(after) + 1)]
    spans.sort(key=lambda s: (len(before) - s[0]) + s[1], reverse=True)
    return [before[i:] + [rounding] + after[:j] for i, j in spans]


def trained_staircases(graph: Graph, ctx: PassContext) -> Graph:
    """Rewrite each trained quantized activation (see the module docstring) into a Clip(0, θ)
    site carrying ``levels`` (L) and ``shift`` (δ); ``ctx.report['quantized_activations']``."""
    found = {}
    # a chain stops at any other rounding op, so no rewrite removes a rounding node still to visit
    for rounding in [n for n in graph.nodes if n.op in ROUNDING_OPS and _scalar_elementwise(n)]:
        fit = next(((c, f) for c in _chains_around(graph, rounding) if (f := staircase(c)) is not None), None)
        if fit is None:
            continue
        chain, (top, steps, shift) = fit
        last = chain[-1]
        for node in chain[:-1]:
            graph.removed.append((node.name, node.source_op, f"quantized activation: part of {last.name}"))
        gone = {n.name for n in chain[:-1]}
        graph.nodes = [n for n in graph.nodes if n.name not in gone]
        ops = ", ".join(n.op for n in chain)
        last.op, last.inputs, last.params = "clip", [chain[0].inputs[0]], {}
        last.attrs = {"min": 0.0, "max": top, "levels": steps, "shift": round(shift, 4)}
        for node in chain[:-1]:  # a staircase read already, composed into this one
            found.pop(node.name, None)
        found[last.name] = steps
        ctx.note(
            NAME,
            f"{last.name}: {len(chain)} ops ({ops}) are a {steps}-level staircase from 0 to {top:.4g} "
            f"(shift {shift:.2f}): a neuron with θ = {top:.4g}",
        )
    if found:
        ctx.report["quantized_activations"] = {"count": len(found), "levels": sorted(set(found.values()))}
    return graph


def run(graph: Graph, ctx: PassContext) -> Graph:
    """Replace each fake-quantization pair and trained quantized activation (see the module
    docstring); note what became of each."""
    graph = narrowed_grids(trained_staircases(graph, ctx), ctx)
    found = pairs(graph)
    if not found:
        return graph
    graph_outputs = {v.name for v in graph.outputs}
    counts = {"neurons": 0, "capped": 0, "removed": 0}
    drop = set()
    for q, dqs in found:
        positive = non_negative(graph)  # with the pairs before this one rewritten
        x = q.inputs[0]
        starts_at_zero, top = _grid_top(q)
        producer = graph.producer(x)
        alone = len(graph.consumers(x)) == 1 and x not in graph_outputs
        if starts_at_zero and producer is not None and producer.op != "neuron" and is_site(producer) and alone:
            if top is not None:
                hi = producer.attrs.get("max") if producer.op == "clip" else None
                producer.op, producer.attrs = "clip", {"min": 0.0, "max": top if hi is None else min(float(hi), top)}
                what = f"removed, {producer.name} capped at {top:.4g}"
            else:
                what = f"removed after {producer.name}"
            counts["capped"] += 1
            value = x
        elif starts_at_zero and x not in positive:
            # the quantize node itself becomes the activation the quantizer removed
            q.op, q.params = ("clip", {}) if top is not None else ("relu", {})
            q.attrs = {"min": 0.0, "max": top} if top is not None else {}
            what = f"clip to [0, {top:.4g}] (a neuron)" if top is not None else "a ReLU (a neuron)"
            counts["neurons"] += 1
            value = q.outputs[0]
        else:
            why = "a signed grid" if not starts_at_zero else "its input is never negative"
            what = f"removed ({why})"
            counts["removed"] += 1
            value = x
        if value == x:
            drop.add(q.name)
            graph.removed.append((q.name, "QuantizeLinear", f"fake quantization: {what}"))
        for dq in dqs:
            if dq.outputs[0] in graph_outputs:  # the output keeps its name
                dq.op, dq.inputs, dq.attrs, dq.params = "identity", [value], {}, {}
            else:
                graph.replace_uses(dq.outputs[0], value)
                drop.add(dq.name)
                graph.removed.append((dq.name, "DequantizeLinear", f"fake quantization: pair of {q.name}"))
        ctx.note(NAME, f"{q.name}: {what}")
    graph.nodes = [n for n in graph.nodes if n.name not in drop]
    ctx.report["fake_quant_pairs"] = counts
    return graph


def summary_lines(report: dict) -> list[str]:
    """What became of a model's quantization (``report['fake_quant_pairs']`` and
    ``report['quantized_activations']``), for ``snnc compile`` and ``snnc inspect``."""
    lines = []
    counts = report.get("fake_quant_pairs")
    if counts:
        lines.append(
            f"quantized model: {sum(counts.values())} quantize/dequantize pairs on activations: "
            f"{counts['neurons']} become neurons, {counts['capped']} cap a ReLU, {counts['removed']} removed "
            "(the SNN runs the float network with the dequantized weights)"
        )
    staircases = report.get("quantized_activations")
    if staircases:
        levels = "/".join(map(str, staircases["levels"]))
        lines.append(
            f"quantization-aware model: {staircases['count']} trained {levels}-level activations become "
            f"neurons with θ = their trained top (runs at T ≥ {min(staircases['levels'])} come closest to the ANN)"
        )
    return lines
