"""Read an ONNX file and bring it to one canonical form, using onnx's and onnxscript's own tools.

Steps: parse (clear error on truncated or non-ONNX bytes) → treat initializers that are also
graph inputs as constants → pin symbolic batch dimensions → onnx.checker → version converter
to :data:`TARGET_OPSET` → shape inference → constant folding (onnxscript optimizer).
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import onnx
from onnx import shape_inference, version_converter

from ..errors import SnncError

log = logging.getLogger(__name__)

#: Every model is converted to this opset so that each converter sees one form of its op.
#: 21 is the newest opset the version converter reaches from every older one (Gelu exists only from 20).
TARGET_OPSET = 21
#: The domain of spiking (neuron) and analog-island nodes in compiled artifacts.
SNN_DOMAIN = "snncompiler"
#: The version of that domain's operators (Neuron) that this snncompiler writes and reads.
SNN_DOMAIN_VERSION = 1
#: The artifact format (metadata ``snncompiler.artifact``) this snncompiler writes and reads.
ARTIFACT_VERSION = "1"


def read_model(source: str | os.PathLike | onnx.ModelProto | bytes) -> tuple[onnx.ModelProto, str]:
    """Parse ``source`` into a ModelProto; return it with a label for messages (the file name)."""
    if isinstance(source, onnx.ModelProto):
        return source, "<model>"
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
        data = path.read_bytes()
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
    return model, label


def main_opset(model: onnx.ModelProto) -> int:
    """The model's ai.onnx opset version."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def has_custom_domain(model: onnx.ModelProto) -> bool:
    """True if any node belongs to a domain other than ai.onnx (e.g. a compiled artifact)."""
    return any(n.domain not in ("", "ai.onnx") for n in model.graph.node)


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
    batch size as a value in the model's metadata (see :mod:`snncompiler.frontend.batch`)."""
    from .batch import BOUND_KEY, DECLARED_KEY, batch_valued_use, declared_batch

    notes = {DECLARED_KEY: declared_batch(model), BOUND_KEY: batch_valued_use(model)}
    kept = [p for p in model.metadata_props if p.key not in notes]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in kept},
                                        **{k: v for k, v in notes.items() if v is not None}})


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
            else:
                raise SnncError(f"{label}: graph input '{value.name}' has a symbolic dimension at axis {axis} "
                                f"('{dim.dim_param or '?'}'); only the batch axis (0) may be dynamic")


def canonicalize(source, *, fold: bool = True) -> tuple[onnx.ModelProto, str]:
    """Load and canonicalize a model: checked, at TARGET_OPSET, shapes inferred, constants folded.

    Models with nodes in custom domains (compiled artifacts) skip version conversion and
    folding: their standard part was written at TARGET_OPSET by this package.
    """
    model, label = read_model(source)
    model = onnx.ModelProto.FromString(model.SerializeToString()) if label == "<model>" else model
    try:  # before the initializers leave the inputs: IR version 3 requires them there
        onnx.checker.check_model(model)
    except Exception as exc:
        raise SnncError(f"{label}: fails the ONNX checker: {_first_line(exc)}") from exc
    _constants_out_of_inputs(model)
    _record_batch_semantics(model)
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
            log.warning("%s: version conversion from opset %d to %d failed (%s); using opset %d as is",
                        label, opset, TARGET_OPSET, _first_line(exc), opset)
    try:
        model = shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise SnncError(f"{label}: shape inference failed: {_first_line(exc)}") from exc
    if fold and not custom:
        model = _fold_constants(model, label)
    return model, label


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
            node.attribute.extend(keep + [onnx.helper.make_attribute("coordinate_transformation_mode", "asymmetric"),
                                          onnx.helper.make_attribute("nearest_mode", "floor")])


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
