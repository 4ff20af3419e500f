"""ONNX → IR. ``load_graph(path)`` is the one entry point; converters live in ``converters/``."""

from __future__ import annotations

import logging

import onnx

from ...errors import SnncError
from ...ir import Graph, Value
from ...ir.graph import BOUND_KEY
from ..artifact import SNN_DOMAIN, SNN_DOMAIN_VERSION, TARGET_OPSET
from . import converters as _converters  # noqa: F401  (registers every converter)
from .batch import non_batch_node
from .fusion import fuse
from .ort_forms import lowered_ops
from .reader import canonicalize, main_opset
from .registry import CONVERTERS, Ctx, build_graph

log = logging.getLogger(__name__)

__all__ = ["load_graph", "supported_ops", "TARGET_OPSET", "SNN_DOMAIN"]


def supported_ops() -> list[str]:
    """Sorted list of ONNX operator names that have a converter or a rewrite into standard ONNX
    (``domain::op`` for custom domains)."""
    return sorted({op if not dom else f"{dom}::{op}" for dom, op in CONVERTERS} | set(lowered_ops()))


def load_graph(source, *, lenient: bool = False) -> Graph:
    """Read an ONNX model (path, bytes or ModelProto) and lower it to a validated IR graph.

    With ``lenient`` an operator without a converter becomes an ``unsupported`` node instead
    of an error, so ``snnc inspect`` can list every node.
    """
    model, label = canonicalize(source)
    if not model.graph.output:
        raise SnncError(f"{label}: the graph has no outputs")
    for imp in model.opset_import:
        if imp.domain == SNN_DOMAIN and imp.version != SNN_DOMAIN_VERSION:
            raise SnncError(
                f"{label}: its '{SNN_DOMAIN}' operators are version {imp.version}; this snncompiler "
                f"reads version {SNN_DOMAIN_VERSION} (recompile the model with this version)"
            )
    ctx = Ctx(model, label, main_opset(model))
    for node in model.graph.node:
        ctx.convert(node, lenient=lenient)
    inputs = [Value(v.name, ctx.shapes.get(v.name)) for v in model.graph.input]
    outputs = [Value(v.name, ctx.shapes.get(v.name)) for v in model.graph.output]
    graph = fuse(build_graph(ctx, inputs, outputs, model.graph.name or "graph"))
    if len(outputs) > 1:  # said once per file read: nothing degrades silently
        log.warning(
            "%s: %d outputs (%s); accuracy is scored on the first, '%s'",
            label,
            len(outputs),
            ", ".join(v.name for v in outputs),
            outputs[0].name,
        )
    graph.metadata.update(_metadata(model, label))
    graph.metadata.setdefault("source_file", label)
    if BOUND_KEY not in graph.metadata:
        node = non_batch_node(graph)
        if node is not None:
            graph.metadata[BOUND_KEY] = f"{node.where} ({node.op}) works along axis 0, so samples would mix"
    graph.metadata["source_opset"] = str(main_opset(model))
    return graph.validate()


def _metadata(model: onnx.ModelProto, label: str) -> dict[str, str]:
    """The model's metadata_props as text. protobuf hands over a string that is not valid UTF-8
    (a damaged file) as bytes: that is an error naming the key, not a decoding error later."""
    out = {}
    for prop in model.metadata_props:
        key, value = prop.key, prop.value
        if isinstance(key, bytes):
            raise SnncError(f"{label}: a metadata key is not valid UTF-8 ({key[:40]!r}); the file is damaged")
        if isinstance(value, bytes):
            raise SnncError(f"{label}: metadata '{key}' is not valid UTF-8 text; the file is damaged")
        out[key] = value
    return out
