"""Read an ONNX file and bring it to one canonical form, using onnx's and onnxscript's own tools.

Steps: parse (clear error on truncated or non-ONNX bytes) → treat initializers that are also
graph inputs as constants → pin symbolic batch dimensions → onnx.checker → version converter
to :data:`TARGET_OPSET` → shape inference → constant folding (onnxscript optimizer).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference, version_converter

from ...errors import SnncError
from ...fileio import open_regular, read_regular
from ..artifact import SNN_DOMAIN, TARGET_OPSET, VERSION_KEY
from .ort_forms import MS_DOMAIN, lower_ort_forms

log = logging.getLogger(__name__)


def read_model(source: str | os.PathLike | onnx.ModelProto | bytes) -> tuple[onnx.ModelProto, str]:
    """Parse ``source`` into a ModelProto; return it with a label for messages (the file name)."""
    if isinstance(source, onnx.ModelProto):
        return source, "<model>"
    base_dir = None  # where external tensor data lives: next to the model file, nowhere else
    if isinstance(source, (bytes, bytearray)):
        data, label = bytes(source), "<bytes>"
    elif not isinstance(source, (str, os.PathLike)):
        raise SnncError(f"model: expected a path, bytes or an onnx.ModelProto, got {type(source).__name__}")
    else:
        path = Path(source)
        label = str(path)
        if not path.exists():
            raise SnncError(f"{label}: no such file")
        if path.is_dir():
            raise SnncError(f"{label}: is a directory, expected an .onnx file")
        data = read_regular(path, label)
        base_dir = os.path.dirname(os.path.abspath(path))
    if not data:
        raise SnncError(f"{label}: file is empty, expected an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError, sometimes RuntimeWarning-wrapped errors
        raise SnncError(f"{label}: not a valid ONNX model (truncated or not ONNX: {type(exc).__name__})") from exc
    if not model.HasField("graph") or not model.graph.node and not model.graph.output:
        raise SnncError(f"{label}: not a valid ONNX model (no graph found; truncated or not ONNX?)")
    if model.graph.ByteSize() == 0:
        raise SnncError(f"{label}: not a valid ONNX model (empty graph)")
    load_external_data(model, label, base_dir)
    return model, label


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model that can hold data: initializers (sparse ones too) and tensor
    attributes, in the main graph, in subgraphs and in functions."""

    def in_nodes(nodes) -> Iterator[onnx.TensorProto]:
        for node in nodes:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("sparse_tensor"):
                    yield attr.sparse_tensor.values
                    yield attr.sparse_tensor.indices
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    yield from in_graph(sub)

    def in_graph(graph) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        yield from in_nodes(graph.node)

    yield from in_graph(model.graph)
    for function in model.functions:
        yield from in_nodes(function.node)


def load_external_data(model: onnx.ModelProto, label: str, base_dir: str | None) -> None:
    """Bring tensors stored in external files into ``model``, read from the model file's own
    folder ``base_dir`` whatever the current directory is.

    A location may not leave that folder: absolute paths, ``..`` and symbolic links that lead
    out are refused, as are files that are not regular (a FIFO would block) and sizes that do not
    match the tensor; each is a one-line error naming the tensor and the file. A model given as
    bytes or a ModelProto has no folder, so external data there is an error too.
    """
    external = [t for t in _all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        return
    for tensor in external:
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        where = f"{label}: tensor '{tensor.name}', external data file '{location}'"
        if base_dir is None:
            raise SnncError(
                f"{where}: a model with external data must be read from its file, so that the data is found next to it"
            )
        if not location:
            raise SnncError(f"{label}: tensor '{tensor.name}' is marked external but names no file (no 'location')")
        if os.path.isabs(location) or location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location):
            raise SnncError(f"{where}: an absolute path; external data must be a file in the model's folder")
        if ".." in re.split(r"[/\\]", location):
            raise SnncError(f"{where}: leaves the model's folder ('..'); external data must be a file in it")
        root = os.path.realpath(base_dir)
        real = os.path.realpath(os.path.join(root, location))
        if os.path.commonpath([root, real]) != root:
            raise SnncError(f"{where}: a symbolic link that leads out of the model's folder {base_dir}")
        tensor.raw_data = _read_external(tensor, entries, real, where)
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def external_data_files(path: str | os.PathLike) -> list[str]:
    """The files in ``path``'s folder that hold its external tensor data (none for a file that is
    not a readable ONNX model): a command's inputs too, so ``-o`` may not overwrite them."""
    try:
        model = onnx.ModelProto()
        model.ParseFromString(read_regular(path))
    except Exception:  # not a model: reading it reports that, with the file's name
        return []
    base = os.path.dirname(os.path.abspath(path))
    locations = set()
    for tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if location:
                locations.add(os.path.join(base, location))
    return sorted(locations)


#: Types whose bytes are not elements × numpy item size (strings, packed sub-byte types).
_UNSIZED_TYPES = {
    getattr(onnx.TensorProto, name)
    for name in ("STRING", "INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
    if hasattr(onnx.TensorProto, name)
}


def _read_external(tensor: onnx.TensorProto, entries: dict[str, str], path: str, where: str) -> bytes:
    """The bytes of one external tensor, their size checked against its shape before reading."""
    try:
        offset, length = (int(entries[k]) if k in entries else None for k in ("offset", "length"))
    except ValueError:
        raise SnncError(f"{where}: 'offset' and 'length' must be integers") from None
    if (offset is not None and offset < 0) or (length is not None and length < 0):
        raise SnncError(f"{where}: 'offset' and 'length' must be ≥ 0")
    with open_regular(path, where) as handle:
        info = os.fstat(handle.fileno())
        start = offset or 0
        available = info.st_size - start
        size = available if length is None else length
        if start > info.st_size or size > available:
            raise SnncError(
                f"{where}: offset {start} and length {size} go past the end of the file ({info.st_size} bytes)"
            )
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        except Exception:  # an unknown type: onnx's own checks report it later
            itemsize = 0
        elements = 1
        for dim in tensor.dims:
            elements *= int(dim)
        if itemsize and tensor.data_type not in _UNSIZED_TYPES and size != elements * itemsize:
            raise SnncError(
                f"{where}: holds {size} bytes, the tensor's shape {list(tensor.dims)} needs {elements * itemsize}"
            )
        handle.seek(start)
        return handle.read(size)


def main_opset(model: onnx.ModelProto) -> int:
    """The model's ai.onnx opset version."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def has_custom_domain(model: onnx.ModelProto) -> bool:
    """True if any node belongs to a domain other than ai.onnx and onnxruntime's com.microsoft
    (whose layers are rewritten as standard ONNX, see :mod:`.ort_forms`): a compiled
    artifact's neurons, for one."""
    return any(n.domain not in ("", "ai.onnx", MS_DOMAIN) for n in model.graph.node)


def is_artifact(model: onnx.ModelProto) -> bool:
    """Whether ``model`` is a compiled artifact: neuron nodes (the snncompiler domain) or the artifact
    format key in its metadata (a network compiled without a neuron: all analog islands)."""
    neurons = any(n.domain == SNN_DOMAIN for n in model.graph.node)
    return neurons or any(p.key == VERSION_KEY for p in model.metadata_props)


def max_supported_opset() -> int:
    """The newest ai.onnx opset the installed onnx package defines (and can convert from)."""
    return int(onnx.defs.onnx_opset_version())


def _check_opset(model: onnx.ModelProto, label: str) -> None:
    """An ai.onnx opset newer than onnx knows is refused: its operators' meaning is unknown, and
    converting it "down" would only pretend."""
    newest = max_supported_opset()
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not 1 <= imp.version <= newest:
            raise SnncError(
                f"{label}: opset_import: ai.onnx opset {imp.version} is outside the supported range "
                f"1..{newest} (re-export the model with opset {TARGET_OPSET})"
            )


def _check_initializers(model: onnx.ModelProto, label: str) -> None:
    """Every initializer decodes into an array of its declared shape and type: the checker lets
    a tensor whose data does not match its dims through, and it would fail later, unnamed."""
    from onnx import numpy_helper

    from ...limits import check_array_bytes

    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue  # read (and checked) where external data is resolved
        what = f"{label}: initializer '{tensor.name}'"
        if any(d < 0 for d in tensor.dims):
            raise SnncError(f"{what}: negative dimension in {list(tensor.dims)}")
        count = 1
        for d in tensor.dims:
            count *= int(d)
        check_array_bytes(count, f"{what} of shape {list(tensor.dims)}")
        try:
            numpy_helper.to_array(tensor)
        except Exception as exc:  # a size mismatch, an unknown data type, ...
            raise SnncError(
                f"{what}: its data does not decode as {list(tensor.dims)} of data type "
                f"{tensor.data_type} ({_first_line(exc)})"
            ) from None


def _constants_out_of_inputs(model: onnx.ModelProto) -> None:
    """Old exporters (IR < 4, where the spec requires it) list every initializer as a graph input
    too; they are weights, not inputs. Taken out, the model is IR 4, the first version where an
    initializer need not be an input (onnx's tools see an IR-3 initializer only through its input)."""
    inits = {i.name for i in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in inits]
    if len(keep) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(keep)
    model.ir_version = max(model.ir_version, 4)


def _record_batch_semantics(model: onnx.ModelProto) -> None:
    """Before the batch is pinned and shapes folded: note the declared batch and any use of the
    batch size as a value in the model's metadata (see :mod:`snncompiler.formats.onnx.batch`)."""
    from ...ir.graph import BOUND_KEY, DECLARED_KEY
    from .batch import batch_valued_use, declared_batch

    notes = {DECLARED_KEY: declared_batch(model), BOUND_KEY: batch_valued_use(model)}
    # the other entries stay untouched (not re-encoded): a value that is not UTF-8 is reported
    # later, naming its key (frontend._metadata)
    for i in reversed([i for i, p in enumerate(model.metadata_props) if p.key in notes]):
        del model.metadata_props[i]
    for key, value in notes.items():
        if value is not None:
            model.metadata_props.add(key=key, value=value)


def _explicit_squeeze_axes(model: onnx.ModelProto) -> None:
    """Squeeze without axes removes every axis of size 1: once the batch is pinned to 1 that
    would include the batch axis. Before pinning, each such Squeeze gets the axes it squeezes
    at any batch size (the static 1s), where shape inference knows its input's shape."""
    squeezes = [n for n in model.graph.node if n.op_type == "Squeeze" and n.domain in ("", "ai.onnx")]
    squeezes = [n for n in squeezes if not any(a.name == "axes" for a in n.attribute) and len(n.input) < 2]
    if not squeezes:
        return
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:
        return  # the pinned model's shape inference reports what is wrong
    shapes = {
        v.name: v.type.tensor_type.shape
        for v in list(inferred.graph.input) + list(inferred.graph.value_info)
        if v.type.tensor_type.HasField("shape")
    }
    opset = main_opset(model)
    for node in squeezes:
        shape = shapes.get(node.input[0])
        if shape is None:
            continue
        dims = list(shape.dim)
        if any(not d.HasField("dim_value") and not d.HasField("dim_param") for d in dims):
            continue  # an unknown size might be 1
        axes = [i for i, d in enumerate(dims) if d.HasField("dim_value") and d.dim_value == 1]
        if opset >= 13:
            name = f"{node.output[0]}__squeeze_axes"
            model.graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), name))
            node.input.append(name)
        else:
            node.attribute.append(onnx.helper.make_attribute("axes", axes))


def _explicit_mvn_axes(model: onnx.ModelProto) -> None:
    """MeanVarianceNormalization without ``axes`` gets its default (0, 2, 3) written out: onnx's
    shape inference of the op's function body fails on the missing attribute (a Constant
    taking its value from it), though the spec and onnxruntime define the default."""
    for node in model.graph.node:
        if node.op_type == "MeanVarianceNormalization" and node.domain in ("", "ai.onnx"):
            if not any(a.name == "axes" for a in node.attribute):
                node.attribute.append(onnx.helper.make_attribute("axes", [0, 2, 3]))


def _explicit_old_hardmax(model: onnx.ModelProto) -> None:
    """Before opset 13 Hardmax works over its input flattened to 2-D at ``axis``; onnx's version
    converter lifts it to the single-axis form unchanged, which changes its answer. Each such
    node becomes Flatten → Hardmax over axis 1 → Reshape back, the same at every opset."""
    if main_opset(model) >= 13:
        return
    nodes = []
    for node in model.graph.node:
        if node.op_type != "Hardmax" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        axis = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
        x, out = node.input[0], node.output[0]
        flat, picked, shape = f"{out}__flat", f"{out}__hardmax", f"{out}__shape"
        nodes += [
            onnx.helper.make_node("Flatten", [x], [flat], name=f"{node.name or out}__flatten", axis=axis),
            onnx.helper.make_node("Hardmax", [flat], [picked], name=node.name or out, axis=1),
            onnx.helper.make_node("Shape", [x], [shape], name=f"{node.name or out}__shape"),
            onnx.helper.make_node("Reshape", [picked, shape], [out], name=f"{node.name or out}__reshape"),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _pin_batch(model: onnx.ModelProto, label: str, batch: int = 1) -> None:
    """Give symbolic leading dims a value so shapes (and Shape-derived constants) become static.

    Axis 0 is the batch axis; the runtime keeps every batch-preserving op polymorphic in it.
    """
    for value in model.graph.input:
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            raise SnncError(f"{label}: graph input '{value.name}' has no shape; re-export with a static input shape")
        for axis, dim in enumerate(tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            if axis == 0:
                dim.Clear()
                dim.dim_value = batch
            elif dim.HasField("dim_value"):
                raise SnncError(f"{label}: graph input '{value.name}' has size {dim.dim_value} at axis {axis}")
            else:
                raise SnncError(
                    f"{label}: graph input '{value.name}' has a symbolic dimension at axis {axis} "
                    f"('{dim.dim_param or '?'}'); only the batch axis (0) may be dynamic"
                )


def canonicalize(source, *, fold: bool = True) -> tuple[onnx.ModelProto, str]:
    """Load and canonicalize a model: checked, at TARGET_OPSET, shapes inferred, constants folded.

    onnxruntime's forms of layers (QOperator layers, standard and com.microsoft; dynamic
    quantization; the fusions its optimiser saves) become the standard ONNX they stand for
    (:mod:`.ort_forms`). Models with nodes in
    other domains (compiled artifacts) skip version conversion and folding: their standard part
    was written at TARGET_OPSET by this package.
    """
    model, label = read_model(source)
    model = onnx.ModelProto.FromString(model.SerializeToString()) if label == "<model>" else model
    _check_opset(model, label)
    try:  # before the initializers leave the inputs: IR version 3 requires them there
        onnx.checker.check_model(model)
    except Exception as exc:
        raise SnncError(f"{label}: fails the ONNX checker: {_first_line(exc)}") from exc
    _constants_out_of_inputs(model)
    _check_initializers(model, label)
    _record_batch_semantics(model)
    _explicit_squeeze_axes(model)
    _explicit_mvn_axes(model)
    _explicit_old_hardmax(model)
    _pin_batch(model, label)
    custom = has_custom_domain(model)
    opset = main_opset(model)
    if not custom and opset != TARGET_OPSET:
        try:
            model = version_converter.convert_version(model, TARGET_OPSET)
            if opset <= 10:
                _restore_opset10_resize(model)
        except Exception as exc:
            # Converters also read the older forms, so a model the converter cannot lift still loads.
            log.warning(
                "%s: version conversion from opset %d to %d failed (%s); using opset %d as is",
                label,
                opset,
                TARGET_OPSET,
                _first_line(exc),
                opset,
            )
    lower_ort_forms(model, label)
    try:
        model = shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise SnncError(f"{label}: shape inference failed: {_first_line(exc)}") from exc
    if fold and not custom:
        _check_constant_sizes(model, label)
        model = _fold_constants(model, label)
    return model, label


def _static_nbytes(value: onnx.ValueInfoProto) -> int | None:
    """Bytes of a value whose type and shape inference fixed completely, else None."""
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape") or not tensor_type.elem_type:
        return None
    dims = tensor_type.shape.dim
    if not all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
        return None
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).itemsize
    except (KeyError, ValueError, TypeError):
        itemsize = 8
    count = 1
    for d in dims:
        count *= int(d.dim_value)
    return count * itemsize


def _check_constant_sizes(model: onnx.ModelProto, label: str) -> None:
    """Refuse, before folding evaluates it, a node computed from constants only whose output (as
    shape inference gives it) is over SNNC_MAX_CONSTANT_BYTES: a 245-byte model with a constant
    ``Expand`` to 20000×20000 would otherwise take gigabytes in the folder."""
    from ...limits import check_constant_bytes

    constant = {i.name for i in model.graph.initializer}
    infos = {v.name: v for v in list(model.graph.value_info) + list(model.graph.output)}
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if not all(not name or name in constant for name in node.input):
            continue
        if node.op_type in ("Constant",) or any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
        ):
            constant.update(o for o in node.output if o)
            continue
        for out in node.output:
            nbytes = _static_nbytes(infos[out]) if out in infos else None
            if nbytes is not None:
                check_constant_bytes(
                    nbytes,
                    f"{label}: node {node.op_type} '{node.name or out}' (output '{out}', computed from constants)",
                )
        constant.update(o for o in node.output if o)


def _restore_opset10_resize(model: onnx.ModelProto) -> None:
    """Opset ≤ 10 Resize/Upsample use asymmetric coordinates and floor rounding; the version
    converter lifts them to Resize-11+ without saying so, which would switch them to the
    half_pixel default.

    Called only on models converted from opset ≤ 10, where every Resize is such a lifted node
    (no other operator converts into one). They are not found by name or output: the converter
    drops the name of an Upsample it replaces and renames the values between nodes."""
    for node in model.graph.node:
        if node.op_type == "Resize":
            keep = [a for a in node.attribute if a.name not in ("coordinate_transformation_mode", "nearest_mode")]
            del node.attribute[:]
            node.attribute.extend(
                keep
                + [
                    onnx.helper.make_attribute("coordinate_transformation_mode", "asymmetric"),
                    onnx.helper.make_attribute("nearest_mode", "floor"),
                ]
            )


def _fold_constants(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """Constant folding and dead-node removal with onnxscript's optimizer passes.

    Only folding: onnxscript's default rewrite rules also normalise patterns (e.g. Conv
    auto_pad into explicit pads clamped at 0), which changes results that onnxruntime keeps.
    """
    import onnx_ir
    import onnxscript.optimizer as opt

    try:
        ir_model = onnx_ir.from_proto(model)
        opt.fold_constants(ir_model, onnx_shape_inference=True, input_size_limit=1 << 22, output_size_limit=1 << 24)
        opt.remove_unused_nodes(ir_model)
        folded = onnx_ir.to_proto(ir_model)
    except Exception as exc:
        log.warning("%s: constant folding failed (%s); continuing unfolded", label, _first_line(exc))
        return model
    try:
        return shape_inference.infer_shapes(folded, strict_mode=True, data_prop=True)
    except Exception:
        return folded


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # onnx's C++ errors start with a source location; the useful part follows it
    lines = [ln for ln in text if ln.strip() and not ln.startswith("/")] or text or [type(exc).__name__]
    # ... or within the line: "/project/onnx/.../convert.h:96: assertInVersionRange: Assertion ... failed: "
    line = re.sub(r"^/\S+:\d+:\s*(\w+:\s*)?(Assertion .*? failed:\s*)?", "", lines[0].strip())
    return line[:300]
