"""Converters for the `snncompiler` domain: reading compiled artifacts back into the IR.

An artifact is a file like any other, so everything read from it is checked here: a damaged or
hand-edited neuron node is a one-line error naming the file and the node, never a silent
default or a failure deep in the runtime.
"""

from __future__ import annotations

import numpy as np

from ....ir.neuron import ATTRIBUTES, NeuronSpec
from ...artifact import SNN_DOMAIN
from ..registry import converter, writes

#: The attributes a Neuron node may carry (what ``export.onnx_export`` writes); any other is refused.
NEURON_ATTRIBUTES = frozenset(ATTRIBUTES + ("theta_source",))


def _finite_float(value: np.ndarray, what: str, ctx) -> np.ndarray:
    if not np.issubdtype(value.dtype, np.floating):
        raise ctx.fail(f"{what} must be a float tensor, got {value.dtype}")
    if not np.isfinite(value).all():
        raise ctx.fail(f"{what} has non-finite values (NaN or inf)")
    return value


@converter("Neuron", domain=SNN_DOMAIN)
def neuron(node, ctx):
    """snncompiler::Neuron(x, theta[, v_init[, gain]]) → neuron (attrs: neuron, tau, reset, v0).

    Missing attributes take the compiler's defaults (IF, soft reset, v0 = θ/2); present ones
    must be valid, and unknown ones are refused. θ must be finite and positive, v_init finite, the input gain (hard-reset
    compensation, passes/hard_reset.py) finite and positive; their sizes are checked against x's
    shape when the artifact is loaded (``model.from_artifact``). An empty v_init name skips it."""
    if len(node.input) not in (2, 3, 4) or not node.input[0] or not node.input[1] or len(node.output) != 1:
        raise ctx.fail(
            f"expected inputs (x, theta[, v_init[, gain]]) and one output, got {len(node.input)} inputs and "
            f"{len(node.output)} outputs"
        )
    a = {k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else v) for k, v in ctx.attrs(node).items()}
    unknown = sorted(set(a) - NEURON_ATTRIBUTES)
    if unknown:
        raise ctx.fail(
            f"unknown attribute(s) {', '.join(repr(k) for k in unknown)} (a Neuron has "
            f"{', '.join(sorted(NEURON_ATTRIBUTES))})"
        )
    attrs = NeuronSpec.from_attrs(a, where=ctx.where()).attrs()
    theta = _finite_float(ctx.const(node.input[1], "Neuron theta"), "theta", ctx)
    if not (theta > 0).all():
        raise ctx.fail(f"theta must be positive, got a minimum of {float(theta.min()):g}")
    params = {"theta": theta}
    if len(node.input) > 2 and node.input[2]:
        params["v_init"] = _finite_float(ctx.const(node.input[2], "Neuron v_init"), "v_init", ctx)
    if len(node.input) > 3 and node.input[3]:
        gain = _finite_float(ctx.const(node.input[3], "Neuron gain"), "gain", ctx)
        if not (gain > 0).all():
            raise ctx.fail(f"gain must be positive, got a minimum of {float(gain.min()):g}")
        params["gain"] = gain
    attrs["theta_source"] = str(a.get("theta_source", ""))
    ctx.emit("neuron", [node.input[0]], [node.output[0]], attrs, params)


# ---- write rules: core op → ONNX (the artifact writer, formats/onnx/writer.py) ----------------
@writes("neuron")
def write_neuron(b, n) -> None:
    """``snncompiler::Neuron(x, theta[, v_init[, gain]])`` with the neuron's attributes."""
    p = n.params
    extra = [b.const(n, "v_init", p["v_init"]) if "v_init" in p else ""] + (
        [b.const(n, "gain", p["gain"])] if "gain" in p else []
    )
    while extra and not extra[-1]:  # no trailing empty optional inputs: the 2-input form stays as it was
        extra.pop()
    spec = NeuronSpec.from_attrs(n.attrs, where=n.where)
    b.add(
        "Neuron",
        [n.inputs[0], b.const(n, "theta", p["theta"])] + extra,
        n.outputs,
        n.name,
        SNN_DOMAIN,
        **spec.attrs(),
        theta_source=n.attrs.get("theta_source", ""),
    )
