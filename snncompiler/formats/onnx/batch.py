"""Is axis 0 really a batch axis? What a graph must satisfy for "any batch size" to be exact.

The runtime keeps every batch-preserving op polymorphic in axis 0, so a model declared at one
batch size runs at any other. That is exact only where samples never meet: an op that works
*along* axis 0 (a softmax or a reduction over it, a transpose or reshape that moves it, a
concat on it, a constant that differs per row of it) mixes samples, and a value computed from
the batch size (``Shape(x)[0]``, folded to the pinned batch of 1) changes the answer when more
samples come. Both are found here; :class:`~snncompiler.runtime.executor.Executor` then runs a
static batch-1 model sample by sample and refuses other batch sizes where that would be wrong.

Graph metadata written by the loader (read by the executor):
``snncompiler.batch_bound_by``: why axis 0 is not a free batch axis (absent when it is), and
``snncompiler.batch_declared``: the declared batch size, or ``dynamic``.
"""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from ...ir import Graph, Node
from ...ir.ops import ARG_REDUCTIONS, BINARY, REDUCTIONS, einsum_terms


def declared_batch(model: onnx.ModelProto) -> str:
    """The first graph input's axis-0 size as declared ('dynamic' when symbolic or absent)."""
    inits = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in inits:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return str(dims[0].dim_value)
        return "dynamic"
    return "dynamic"


def batch_valued_use(model: onnx.ModelProto) -> str | None:
    """In a model with a dynamic batch, the first node that uses the batch size as a value.

    Taint starts at ``Shape`` (with axis 0 in its range) and ``Size`` of an activation; it
    follows shape arithmetic (ops of shape values and constants only), except a
    ``Gather``/``Slice`` that picks other axes out of a shape. A tainted value may only serve
    as the target shape of a ``Reshape`` (the converter keeps
    axis 0 free there, or marks the reshape as non-batch); anywhere else the answer depends on
    the batch size, which the loader pins to 1 before folding constants.
    """
    if declared_batch(model) != "dynamic":
        return None
    consts = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            consts.update({o: node for o in node.output})
    tainted: set[str] = set()
    static = set(consts)  # values computed from constants only
    for node in model.graph.node:
        ins = list(node.input)
        if _literal_batch_reshape(node, consts, static):
            return f"node Reshape '{node.name or node.output[0]}' sets axis 0 to a literal size in its target shape"
        if all(not i or i in static for i in ins):
            static.update(node.output)
            continue
        if node.op_type == "Shape" and ins and ins[0] not in consts:
            start = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "start"), 0)
            if start == 0 or start <= -_rank(model, ins[0]):
                tainted.update(node.output)
            continue
        if node.op_type == "Size" and ins and ins[0] not in consts:
            tainted.update(node.output)
            continue
        if not any(i in tainted for i in ins):
            continue
        if node.op_type == "Reshape" and ins[0] not in tainted:
            continue  # the shape input of a Reshape: a sink, see above
        if (
            node.op_type in ("Gather", "Slice")
            and ins[0] in tainted
            and not any(i in tainted for i in ins[1:])
            and not _picks_axis0(node, consts)
        ):
            continue
        if node.op_type in ("Shape", "Size"):
            continue
        if node.op_type in (
            "Identity",
            "Cast",
            "Concat",
            "Unsqueeze",
            "Squeeze",
            "Gather",
            "Slice",
            "Mul",
            "Add",
            "Sub",
            "Div",
            "Floor",
            "Ceil",
            "Max",
            "Min",
            "Neg",
            "Abs",
        ) and all(not i or i in tainted or i in static for i in ins):
            tainted.update(o for o in node.output if o)  # shape arithmetic: still a shape value
            continue
        return f"node {node.op_type} '{node.name or node.output[0]}' uses the batch size as a value"
    return None


def _literal_batch_reshape(node: onnx.NodeProto, consts: dict, static: set) -> bool:
    """Whether ``node`` reshapes an activation to a constant target whose axis 0 is a literal size
    (``x.view(1, -1)``), not 0 (copy) or -1 (inferred). With the batch pinned to 1 a literal 1 looks
    like the batch axis carried through, but at batch N onnxruntime merges the samples into it."""
    if node.op_type != "Reshape" or len(node.input) < 2 or node.input[0] in static:
        return False
    target = _const_value(node.input[1], consts)
    if target is None:
        return False
    import numpy as np

    target = np.asarray(target).reshape(-1)
    return target.size > 0 and int(target[0]) >= 1


def _rank(model: onnx.ModelProto, name: str) -> int:
    for value in list(model.graph.input) + list(model.graph.value_info):
        if value.name == name and value.type.tensor_type.HasField("shape"):
            return len(value.type.tensor_type.shape.dim)
    return 1 << 30


def _const_value(name: str, consts: dict):
    src = consts.get(name)
    if src is None:
        return None
    if isinstance(src, onnx.TensorProto):
        return numpy_helper.to_array(src)
    for a in src.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_int", "value_ints"):
            return onnx.helper.get_attribute_value(a)
    return None


def _picks_axis0(node: onnx.NodeProto, consts: dict) -> bool:
    """Whether a Gather/Slice of a shape vector can return its element 0 (unknown → True)."""
    import numpy as np

    if node.op_type == "Gather":
        idx = _const_value(node.input[1], consts) if len(node.input) > 1 else None
        return idx is None or bool((np.asarray(idx) == 0).any())
    starts = (
        _const_value(node.input[1], consts)
        if len(node.input) > 1
        else next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "starts"), None)
    )
    if starts is None:
        return True
    starts = np.asarray(starts).reshape(-1)
    return not (starts.size == 1 and int(starts[0]) >= 1)


def non_batch_node(graph: Graph) -> Node | None:
    """The first IR node that works along axis 0 or moves it, so that samples meet (or None).

    Every op of ``runtime/ops.py`` not listed here is per-sample (elementwise, or working
    on axes ≥ 1 only)."""
    for node in graph.nodes:
        if _mixes_axis0(node, graph):
            return node
    return None


def _einsum_mixes_axis0(attrs: dict) -> bool:
    """An Einsum keeps samples apart when every activation's axis 0 is one subscript (or a
    leading ``...``) that leads the output and no constant operand carries."""
    terms, out = einsum_terms(attrs["equation"])
    consts = [t for t, k in zip(terms, attrs["operands"]) if k]
    leads = {"..." if t.startswith("...") else t[:1] for t, k in zip(terms, attrs["operands"]) if not k}
    if len(leads) != 1:
        return True
    lead = leads.pop()
    return not lead or not out.startswith(lead) or any(lead in t for t in consts)


def _rank_of(graph: Graph, name: str) -> int | None:
    shape = graph.shape(name)
    return len(shape) if shape is not None else None


def _mixes_axis0(node: Node, graph: Graph) -> bool:
    a, op = node.attrs, node.op
    rank = _rank_of(graph, node.inputs[0]) if node.inputs else None
    if op in ("softmax", "log_softmax", "hardmax"):
        return a.get("axis", -1) % (rank or 1 << 30) == 0 if rank else a.get("axis") == 0
    if op in REDUCTIONS:
        return not a.get("axes") or 0 in a["axes"]
    if op == "mvn":
        return 0 in a["axes"]
    if op in ARG_REDUCTIONS or op == "topk":
        return a["axis"] == 0
    if op == "gather_elements":  # constant indices carry their own batch axis: the output's
        return "indices" in node.params or a["axis"] == 0
    if op in ("scatter_elements", "scatter_nd", "gather_nd"):  # constant indices address samples by position
        return True
    if op == "einsum":
        return _einsum_mixes_axis0(a)
    if op == "lp_norm":
        return a["axis"] == 0
    if op == "transpose":
        return list(a["perm"])[0] != 0
    if op == "reshape":
        return not a.get("keep_batch")
    if op == "flatten":
        return a.get("axis", 1) % (rank or 1 << 30) != 1 if rank else a.get("axis", 1) != 1
    if op in ("concat", "split", "gather"):
        return a["axis"] == 0
    if op == "slice":
        return 0 in a["axes"]
    if op == "pad":
        pads = list(a["pads"])
        return bool(pads[0] or pads[len(pads) // 2])
    if op == "layer_norm":
        return a.get("axis", -1) % (rank or 1 << 30) == 0 if rank else a.get("axis") == 0
    if op in BINARY or op == "prelu":
        const = node.params.get("const", node.params.get("slope"))
        if const is not None:
            # a constant that differs along axis 0, or has more axes than x, indexes the batch
            return rank is not None and (const.dim() > rank or (const.dim() == rank and const.shape[0] != 1))
        ranks = {_rank_of(graph, i) for i in node.inputs} - {None}  # internal values of a lowering: unknown
        return len(ranks) > 1
    if op == "matmul":
        if "rhs" in node.params:
            return rank is not None and node.params["rhs"].dim() > rank
        if "lhs" in node.params:
            return rank is not None and (rank < 3 or node.params["lhs"].dim() > rank)
        ranks = {_rank_of(graph, i) for i in node.inputs} - {None}
        return any(r < 3 for r in ranks) or len(ranks) > 1
    return False
