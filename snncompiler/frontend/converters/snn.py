"""Converters for the `snncompiler` domain: reading compiled artifacts back into the IR."""
from __future__ import annotations

from ..loader import SNN_DOMAIN
from ..registry import converter


@converter("Neuron", domain=SNN_DOMAIN)
def neuron(node, ctx):
    """snncompiler::Neuron(x, theta[, v_init]) → neuron (attrs: neuron, tau, reset, v0)."""
    a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in ctx.attrs(node).items()}
    params = {"theta": ctx.const(node.input[1], "Neuron theta")}
    if len(node.input) > 2 and node.input[2]:
        params["v_init"] = ctx.const(node.input[2], "Neuron v_init")
    attrs = {"neuron": a.get("neuron", "if"), "tau": float(a.get("tau", 0.0)), "reset": a.get("reset", "soft"),
             "v0": a.get("v0", "half"), "theta_source": a.get("theta_source", "")}
    ctx.emit("neuron", [node.input[0]], [node.output[0]], attrs, params)
