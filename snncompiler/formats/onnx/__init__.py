"""ONNX → IR. ``load_graph(path)`` is the one entry point; converters live in ``converters/``."""

from __future__ import annotations

import logging

import numpy as np
import onnx

from ...errors import SnncError
from ...ir import Graph, Value
from ...ir.graph import BOUND_KEY
from ..artifact import SNN_DOMAIN, SNN_DOMAIN_VERSION, TARGET_OPSET
from . import converters as _converters  # noqa: F401  (registers every converter)
from .batch import non_batch_node
from .fusion import fuse
from .reader import canonicalize, main_opset
from .registry import CONVERTERS, Ctx, build_graph, describe, lookup, unsupported

log = logging.getLogger(__name__)

__all__ = ["load_graph", "supported_ops", "TARGET_OPSET", "SNN_DOMAIN"]


def supported_ops() -> list[str]:
    """Sorted list of ONNX operator names that have a converter (``domain::op`` for custom domains)."""
    return sorted(op if not dom else f"{dom}::{op}" for dom, op in CONVERTERS)


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
        ctx.current = node
        if (
            node.op_type != "Constant"
            and node.input
            and all(not i or ctx.is_const(i) for i in node.input)
            and _fold_node(node, ctx)
        ):
            continue
        fn = lookup(node)
        if fn is None:
            if not lenient:
                raise unsupported(node, ctx)
            ctx.emit(
                "unsupported",
                [i for i in node.input if i and not ctx.is_const(i)],
                list(node.output),
                {"op_type": node.op_type, "domain": node.domain},
            )
            continue
        try:
            fn(node, ctx)
        except SnncError:
            raise
        except Exception as exc:  # a converter bug or an input it cannot handle: still name the node
            raise SnncError(f"{ctx.where(node)}: cannot convert ({type(exc).__name__}: {exc})") from exc
    ctx.current = None
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


def _fold_node(node: onnx.NodeProto, ctx: Ctx) -> bool:
    """Evaluate a node whose inputs are all constants with onnx's reference evaluator.

    The onnxscript folder leaves some constant subgraphs (size limits, ops it skips); they
    are still constants, and onnx's own evaluator computes them exactly.
    """
    from onnx.reference import ReferenceEvaluator

    try:
        inputs = [i for i in node.input if i]
        graph = onnx.helper.make_graph(
            [node],
            "fold",
            [
                onnx.helper.make_tensor_value_info(i, onnx.helper.np_dtype_to_tensor_dtype(ctx.const(i).dtype), None)
                for i in dict.fromkeys(inputs)
            ],
            [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o],
        )
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", ctx.opset)])
        results = ReferenceEvaluator(model).run(None, {i: ctx.const(i) for i in dict.fromkeys(inputs)})
    except Exception as exc:
        log.debug("could not fold %s: %s", describe(node), exc)
        return False
    for name, value in zip([o for o in node.output if o], results):
        ctx.set_const(name, np.asarray(value))
    ctx.removed.append((node.name or node.output[0], node.op_type, "constant-folded"))
    return True
