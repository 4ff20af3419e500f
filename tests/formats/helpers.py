"""Model-building and comparison helpers for the operator parity tests.

Every parity check builds a one-op (or few-op) ONNX model with ``onnx.helper``, runs it with
onnxruntime (CPUExecutionProvider) and with ``run_graph(load_graph(model), ...)``, and compares
with the tolerance ``max|Δ| ≤ 1e-4 · max(1, max|ref|)``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from snncompiler.formats.onnx import load_graph
from snncompiler.runtime import run_graph

RTOL = 1e-4
FLOAT = TensorProto.FLOAT


class OrtRejected(Exception):
    """onnxruntime refused to load or run the model (the configuration is invalid for it)."""


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def rand(shape, seed: int = 0, low: float = -2.0, high: float = 2.0) -> np.ndarray:
    """Random float32 data from a seeded Generator."""
    return rng(seed).uniform(low, high, size=shape).astype(np.float32)


def init(name: str, value) -> onnx.TensorProto:
    """An initializer from a numpy array (float64 → float32, Python ints → int64)."""
    arr = np.asarray(value)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return numpy_helper.from_array(arr, name)


def vinfo(name: str, shape, elem_type: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def build(
    nodes, inputs, outputs, initializers=(), opset: int = 21, *, ir_version: int | None = None
) -> onnx.ModelProto:
    """A checked model. ``inputs``: list of (name, shape[, element type]) with shape entries int or str (symbolic);
    ``outputs``: list of names (shapes left to inference) or (name, shape) pairs."""
    if isinstance(nodes, onnx.NodeProto):
        nodes = [nodes]
    ins = [vinfo(*i) for i in inputs]  # (name, shape) or (name, shape, element type)
    outs = [vinfo(o, None) if isinstance(o, str) else vinfo(*o) for o in outputs]
    graph = helper.make_graph(list(nodes), "parity", ins, outs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="snncompiler-tests")
    # The IR version the opset shipped with (onnxruntime reads every one of them).
    model.ir_version = ir_version or (7 if opset <= 12 else 8 if opset <= 16 else 9 if opset <= 20 else 10)
    # Let onnx's shape inference give the outputs declared without a shape their type.
    inferred = onnx.shape_inference.infer_shapes(model)
    for out in model.graph.output:
        if not out.type.tensor_type.HasField("shape"):
            for o in inferred.graph.output:
                if o.name == out.name and o.type.tensor_type.HasField("shape"):
                    out.type.CopyFrom(o.type)
    onnx.checker.check_model(model)
    return model


def run_ort(model: onnx.ModelProto, *xs: np.ndarray) -> list[np.ndarray]:
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        return sess.run(None, dict(zip(names, xs)))
    except Exception as exc:  # onnxruntime's Fail / InvalidArgument / NotImplemented …
        raise OrtRejected(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc


def run_snn(model: onnx.ModelProto, *xs: np.ndarray) -> list[np.ndarray]:
    out = run_graph(load_graph(model), *xs)
    return [np.asarray(o) for o in (out if isinstance(out, list) else [out])]


def assert_close(got: np.ndarray, ref: np.ndarray, what: str = "") -> None:
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != onnxruntime's {ref.shape}"
    if ref.size == 0:
        return
    if not np.issubdtype(ref.dtype, np.floating):
        np.testing.assert_array_equal(got, ref, err_msg=what)
        return
    assert np.array_equal(np.isnan(got), np.isnan(ref)), f"{what}: NaN positions differ"
    g, r = got.astype(np.float64), ref.astype(np.float64)
    finite = np.isfinite(r)
    assert np.array_equal(g[~finite], r[~finite], equal_nan=True), f"{what}: infinities differ"
    if not finite.any():
        return
    tol = RTOL * max(1.0, float(np.abs(r[finite]).max()))
    err = float(np.abs(g[finite] - r[finite]).max())
    assert err <= tol, f"{what}: max |Δ| = {err:.3g} > {tol:.3g} (max|ref| = {np.abs(r[finite]).max():.3g})"


def assert_within_one_step(model, x, step: float, fraction: float = 0.01):
    """Equal to onnxruntime up to one step of the output grid, in at most ``fraction`` of the
    entries: onnxruntime requantizes its integer sums in fixed point, snnc in float32, so a sum
    on a rounding tie can land one step apart. ``x``: the input, or a list of them."""
    xs = x if isinstance(x, list) else [x]
    got, ref = run_snn(model, *xs)[0], run_ort(model, *xs)[0]
    diff = np.abs(got - ref)
    assert diff.max() <= step * 1.001, diff.max()
    assert (diff > 0).mean() <= fraction, (diff > 0).mean()


def declared_shapes(model: onnx.ModelProto) -> list[tuple | None]:
    """The graph outputs' static shapes as ONNX shape inference gave them (None where unknown)."""
    shapes = []
    for out in model.graph.output:
        tt = out.type.tensor_type
        dims = tt.shape.dim if tt.HasField("shape") else None
        ok = dims is not None and all(d.HasField("dim_value") for d in dims)
        shapes.append(tuple(d.dim_value for d in dims) if ok else None)
    return shapes


#: Cases where onnxruntime's output shape contradicted ONNX shape inference (its kernels deviate
#: from the spec there, e.g. Slice with end=INT_MAX and a negative step); onnx's reference
#: evaluator was the oracle instead.
REFERENCE_FALLBACKS: list[str] = []


def reference(model: onnx.ModelProto, xs, what: str = "") -> list[np.ndarray]:
    """onnxruntime's result, or onnx's reference evaluator's where onnxruntime contradicts the
    output shape ONNX shape inference declares for the model (and the evaluator agrees with it)."""
    ref = run_ort(model, *xs)
    want = declared_shapes(model)
    batch_as_declared = all(
        x.shape[:1] == tuple(d.dim_value for d in i.type.tensor_type.shape.dim[:1])
        for x, i in zip(xs, model.graph.input)
    )
    if batch_as_declared and any(w is not None and w != r.shape for w, r in zip(want, ref)):
        from onnx.reference import ReferenceEvaluator

        names = [i.name for i in model.graph.input]
        try:
            ref2 = [np.asarray(r) for r in ReferenceEvaluator(model).run(None, dict(zip(names, xs)))]
        except Exception:
            return ref
        if all(w is None or w == r.shape for w, r in zip(want, ref2)):
            REFERENCE_FALLBACKS.append(what)
            return ref2
        # onnx's shape inference and its own evaluator disagree too (e.g. pooling's ceil_mode
        # windows that start in the padding): onnxruntime stays the oracle.
    return ref


def check(model: onnx.ModelProto, *xs: np.ndarray, what: str = "") -> list[np.ndarray]:
    """Compare snncompiler with onnxruntime on ``xs``; raises :class:`OrtRejected` if ORT refuses."""
    ref = reference(model, xs, what)
    got = run_snn(model, *xs)
    assert len(got) == len(ref), f"{what}: {len(got)} outputs, onnxruntime has {len(ref)}"
    for i, (g, r) in enumerate(zip(got, ref)):
        assert_close(g, r, f"{what} output {i}")
    return ref


def check_or_skip(model, *xs, what: str = ""):
    """Like :func:`check` but, for hypothesis tests, discards examples onnxruntime rejects."""
    from hypothesis import assume

    try:
        ref = reference(model, xs, what)
    except OrtRejected:
        assume(False)
        raise AssertionError("unreachable") from None
    got = run_snn(model, *xs)
    assert len(got) == len(ref), f"{what}: {len(got)} outputs, onnxruntime has {len(ref)}"
    for i, (g, r) in enumerate(zip(got, ref)):
        assert_close(g, r, f"{what} output {i}")
    return ref


def single(
    op: str, x_shape, attrs: dict | None = None, consts=(), opset: int = 21, n_out: int = 1, extra_inputs=()
) -> onnx.ModelProto:
    """A model with one node ``op``(x, *consts) where consts are (name, array) initializers or
    '' for an omitted optional input. ``extra_inputs``: further graph inputs (name, shape)."""
    names, inits = ["x"], []
    for c in consts:
        if c is None or c == "":
            names.append("")
        elif isinstance(c, str):
            names.append(c)
        else:
            names.append(c[0])
            inits.append(init(*c))
    outs = ["y"] if n_out == 1 else [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, **(attrs or {}))
    return build([node], [("x", list(x_shape))] + list(extra_inputs), outs, inits, opset)
