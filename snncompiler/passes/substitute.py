"""Substitute: replace activations that cannot spike by a ReLU, which the neuronize pass turns
into a neuron (a clipped ReLU, clip(x, 0, θ), in the artifact's ANN mode).

Replaced with ``substitute="relu"`` (``--substitute relu``): HardSwish, GELU, and SiLU/Swish
(x·sigmoid(x), as exporters write it). The network then computes another function: its
accuracy needs ``snnc finetune`` (or retraining) to come back.

Gates stay analog: a Sigmoid or HardSigmoid whose output multiplies another activation
(squeeze-and-excitation, attention gates) feeds a product of two activations, which is an
analog island whatever the gate is, so replacing the gate would change the function and
remove no island.
"""

from __future__ import annotations

from collections import Counter

from ..errors import OptionError
from ..ir import Graph, Node
from ..options import SUBSTITUTES
from . import PassContext

NAME = "substitute"
#: Values of the ``substitute`` option (defined with the other options).
CHOICES = SUBSTITUTES
#: Core ops replaced one for one (their ONNX names in messages).
REPLACED = {"hardswish": "HardSwish", "gelu": "GELU"}


def silu_pairs(graph: Graph) -> list[tuple[Node, Node]]:
    """(sigmoid, mul) for every x·sigmoid(x) whose sigmoid output is read by that product only."""
    readers: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            readers.setdefault(i, []).append(n)
    outputs = {v.name for v in graph.outputs}
    pairs = []
    for sig in graph.find("sigmoid"):
        gate = sig.outputs[0]
        users = readers.get(gate, [])
        if len(users) != 1 or gate in outputs:
            continue
        mul = users[0]
        if mul.op == "mul" and len(mul.inputs) == 2 and sorted(mul.inputs) == sorted([sig.inputs[0], gate]):
            pairs.append((sig, mul))
    return pairs


def substitutable(graph: Graph) -> Counter:
    """What ``substitute="relu"`` would replace: {ONNX-style name: count}."""
    found = Counter(REPLACED[n.op] for n in graph.nodes if n.op in REPLACED)
    silu = len(silu_pairs(graph))
    if silu:
        found["SiLU"] = silu
    return found


def run(graph: Graph, ctx: PassContext) -> Graph:
    """Replace HardSwish, GELU and SiLU by ReLU when ``ctx.options['substitute'] == 'relu'``."""
    choice = ctx.options.get("substitute")
    if choice in (None, "none"):
        return graph
    if choice not in CHOICES:
        raise OptionError("substitute", f"expected one of {', '.join(CHOICES)}, got '{choice}'")
    replaced = substitutable(graph)
    for sig, mul in silu_pairs(graph):
        mul.op, mul.inputs, mul.attrs, mul.params = "relu", [sig.inputs[0]], {}, {}
        graph.nodes.remove(sig)
        graph.values.pop(sig.outputs[0], None)
    for node in graph.nodes:
        if node.op in REPLACED:
            node.op, node.attrs, node.params = "relu", {}, {}
    ctx.report["substituted"] = dict(replaced)
    if replaced:
        what = ", ".join(f"{op} ×{k}" for op, k in replaced.most_common())
        ctx.note(
            NAME,
            f"replaced {sum(replaced.values())} activations by clipped ReLU neurons ({what}); the network "
            "computes another function now: recover its accuracy with `snnc finetune`",
        )
    else:
        ctx.note(NAME, "nothing to substitute (no HardSwish, GELU or SiLU)")
    return graph
