"""IR → ONNX. Standard ops for everything linear or analog, `snncompiler::Neuron` for neurons.

The artifact is plain ONNX (readable by Netron and onnx.load, accepted by onnx.checker):
settings, default T and the compile report live in metadata_props; nothing is pickled.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...errors import SnncError
from ...fileio import write_bytes
from ...ir import Graph, Node
from ..artifact import SNN_DOMAIN, SNN_DOMAIN_VERSION, TARGET_OPSET, artifact_metadata
from .converters.structure import CAST_DTYPES
from .registry import WRITERS


class Builder:
    """The ONNX graph under construction: nodes, initializers, fresh value names."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, node: Node, key: str, value) -> str:
        """Add ``value`` as the initializer ``<node>.<key>``; return its name."""
        name = f"{node.name}.{key}"
        arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        # not np.ascontiguousarray: it turns a 0-d array (a scalar Gather index) into shape (1,)
        self.inits.append(numpy_helper.from_array(np.array(arr, order="C"), name))
        return name

    def add(self, op: str, inputs, outputs, name: str, domain: str = "", **attrs) -> None:
        """Append an ONNX node."""
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name, domain=domain, **attrs))

    def tmp(self, node: Node) -> str:
        """A fresh intermediate value name derived from ``node``'s first output."""
        self._n += 1
        return f"{node.outputs[0]}__x{self._n}"


def write_node(b: Builder, n: Node) -> None:
    """Add node ``n``'s ONNX form to ``b`` by its op's write rule (converters/, :data:`~.registry.WRITERS`)."""
    rule = WRITERS.get(n.op)
    if rule is None:
        raise SnncError(f"{n.where}: core op '{n.op}' cannot be exported to ONNX")
    rule(b, n)


#: torch dtype name → ONNX element type (the inverse of the Cast converter's table)
_ONNX_TYPES = {name: onnx_type for onnx_type, name in CAST_DTYPES.items()}


def _element_type(graph: Graph, name: str) -> int:
    """The ONNX element type of a value as the runtime computes it."""
    return _ONNX_TYPES.get(graph.dtype(name), TensorProto.FLOAT)


def to_onnx(graph: Graph, metadata: dict[str, str]) -> onnx.ModelProto:
    """Build the artifact ModelProto from a (spiking) IR graph."""
    b = Builder(graph)
    for n in graph.nodes:
        write_node(b, n)
    inputs = [helper.make_tensor_value_info(v.name, TensorProto.FLOAT, ["N"] + list(v.shape[1:])) for v in graph.inputs]
    from ...runtime.executor import infer_shapes

    infer_shapes(graph)
    outputs = [
        helper.make_tensor_value_info(v.name, _element_type(graph, v.name), ["N"] + list(graph.shape(v.name)[1:]))
        for v in graph.outputs
    ]
    # shape inference cannot see through custom-domain neurons: record every value's shape and type
    io_names = {v.name for v in graph.inputs} | {v.name for v in graph.outputs}
    value_info = [
        helper.make_tensor_value_info(name, _element_type(graph, name), ["N"] + list(v.shape[1:]))
        for name, v in graph.values.items()
        if v.shape and name not in io_names and any(name in n.outputs for n in graph.nodes)
    ]
    g = helper.make_graph(b.nodes, graph.name, inputs, outputs, initializer=b.inits, value_info=value_info)
    model = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", TARGET_OPSET), helper.make_opsetid(SNN_DOMAIN, SNN_DOMAIN_VERSION)],
        producer_name="snncompiler",
    )
    helper.set_model_props(model, metadata)
    return model


def save_artifact(compiled, path) -> None:
    """Write a CompiledModel to ``path`` and check the result with onnx.checker."""
    from ...ir.graph import FIXED_BATCH_KEY
    from ...runtime.executor import fixed_batch

    meta = artifact_metadata(
        compiled.settings(), compiled.report, fixed_batch_key=FIXED_BATCH_KEY if fixed_batch(compiled.graph) else None
    )
    model = to_onnx(compiled.graph, meta)
    onnx.checker.check_model(model)
    try:  # what the loader runs first: a file it would refuse is not written
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise SnncError(
            f"{path}: not written: ONNX shape inference disagrees with the runtime's shapes, so the "
            f"artifact would not load back ({str(exc).strip().splitlines()[-1]}); please report this model"
        ) from exc
    write_bytes(path, model.SerializeToString())
