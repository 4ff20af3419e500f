"""Fold inference BatchNorm into the preceding conv/linear; a lone BN becomes a per-channel scale.

W' = W·γ/√(σ²+ε) (per output channel), b' = γ·(b − μ)/√(σ²+ε) + β.
"""

from __future__ import annotations

import torch

from ..ir import Graph, Node
from . import PassContext

NAME = "fold_bn"


def bn_affine(bn: Node) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) such that batchnorm(x) = x·scale + shift per channel."""
    p = bn.params
    scale = p["scale"] / torch.sqrt(p["var"] + bn.attrs.get("eps", 1e-5))
    return scale, p["bias"] - p["mean"] * scale


def run(graph: Graph, ctx: PassContext) -> Graph:
    """Fold every BatchNorm whose input comes only from a conv/linear; scale-shift the rest."""
    for bn in list(graph.find("batchnorm")):
        scale, shift = bn_affine(bn)
        prev = graph.producer(bn.inputs[0])
        foldable = (
            prev is not None
            and prev.op in ("conv", "linear", "conv_transpose")
            and len(graph.consumers(bn.inputs[0])) == 1
            and bn.inputs[0] not in {o.name for o in graph.outputs}
        )
        if (
            prev is not None
            and prev.op == "linear"
            and graph.shape(bn.inputs[0])
            and len(graph.shape(bn.inputs[0])) != 2
        ):
            foldable = False  # linear acts on the last axis; BN on axis 1: only the same axis for 2-D
        if foldable:
            w = prev.params["weight"]
            if prev.op == "conv_transpose":
                groups = prev.attrs.get("groups", 1)
                w = w.reshape(groups, w.shape[0] // groups, *w.shape[1:])
                w = w * scale.reshape(groups, 1, -1, *([1] * (w.dim() - 3)))
                prev.params["weight"] = w.reshape(-1, *w.shape[2:])
            else:
                prev.params["weight"] = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
            bias = prev.params.get("bias", torch.zeros_like(scale))
            prev.params["bias"] = bias * scale + shift
            graph.nodes.remove(bn)
            prev.outputs = [bn.outputs[0]]  # the BN input had no other reader, so it simply disappears
            graph.removed.append((bn.name, "BatchNormalization", f"folded into {prev.name}"))
            ctx.note(NAME, f"folded {bn.name} into {prev.name}")
        else:
            bn.op, bn.params, bn.attrs = "scale", {"scale": scale, "shift": shift}, {}
            ctx.note(NAME, f"{bn.name}: no conv/linear to fold into, kept as a per-channel scale and shift")
    return graph
