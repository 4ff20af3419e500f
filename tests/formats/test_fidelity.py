"""Wrong-result classes of issue 15, each against onnxruntime: ConvTranspose outputs larger than
the natural size, Upsample linear at opsets 7-9, Dropout in training mode, casts to every ONNX
dtype and batch sizes other than the declared one."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import helper

from snncompiler.formats.onnx import load_graph
from snncompiler.formats.onnx.writer import to_onnx
from snncompiler.runtime import run_graph
from tests.formats.helpers import assert_close, build, check, check_or_skip, init, rand, run_ort, single

_EXPLORE = int(os.environ.get("PARITY_EXPLORE", "0"))
HYP = settings(
    max_examples=_EXPLORE or 40,
    deadline=None,
    derandomize=not _EXPLORE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _build_or_skip(*args, **kwargs):
    try:
        return build(*args, **kwargs)
    except Exception:
        assume(False)


# =====================================================================================
# ConvTranspose: output_shape / auto_pad=SAME_* asking for more than the natural output
# =====================================================================================
@pytest.mark.parametrize(
    "attrs,k",
    [
        ({"strides": [3, 3], "auto_pad": "SAME_UPPER"}, 1),  # the case: 4x4 → 10x10, was 1x1
        ({"strides": [3, 3], "auto_pad": "SAME_LOWER"}, 1),
        ({"strides": [3, 2], "output_shape": [12, 8]}, 1),  # 2 and 1 rows beyond the natural 10 and 7
        ({"strides": [2, 3], "output_shape": [9, 13], "auto_pad": "SAME_LOWER"}, 2),
    ],
)
def test_conv_transpose_larger_than_natural(attrs, k):
    shape = [2, 2, 4, 4]
    m = single("ConvTranspose", shape, attrs, [("w", rand([2, 3, k, k], 1)), ("b", rand([3], 2))], 21)
    check(m, rand(shape, 3), what=f"ConvTranspose {attrs}")


@HYP
@given(
    nd=st.sampled_from([1, 2]),
    k=st.integers(1, 4),
    s=st.integers(1, 4),
    d=st.integers(1, 3),
    size=st.integers(1, 6),
    out_pad=st.integers(0, 3),
    form=st.sampled_from(["output_shape", "SAME_UPPER", "SAME_LOWER"]),
    shape_auto=st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER"]),
    extra=st.integers(-4, 6),
    groups=st.sampled_from([1, 2]),
    bias=st.booleans(),
    opset=st.sampled_from([9, 11, 21]),
    seed=st.integers(0, 99),
)
def test_conv_transpose_output_size_hypothesis(
    nd, k, s, d, size, out_pad, form, shape_auto, extra, groups, bias, opset, seed
):
    """Any requested output size, smaller or larger than the natural one, with or without auto_pad."""
    out_pad = min(out_pad, max(s, d) - 1)  # the spec: output_padding < max(stride, dilation)
    kernel = [k] + [max(1, k - 1)] * (nd - 1)
    spatial = [size, size + 1][:nd]
    attrs = {
        "strides": [s] * nd,
        "dilations": [d] * nd,
        "kernel_shape": kernel,
        "group": groups,
        "output_padding": [out_pad] * nd,
    }
    if form == "output_shape":
        natural = [s * (n - 1) + out_pad + (kk - 1) * d + 1 for n, kk in zip(spatial, kernel)]
        target = [n + extra + i for i, n in enumerate(natural)]
        assume(all(t > 0 for t in target))
        attrs["output_shape"] = target
        if shape_auto != "NOTSET":
            attrs["auto_pad"] = shape_auto
    else:
        attrs["auto_pad"] = form
    shape = [2, 2 * groups] + spatial
    consts = [("w", rand([2 * groups, 2] + kernel, seed))] + ([("b", rand([2 * groups], seed + 1))] if bias else [])
    m = _build_or_skip(
        [helper.make_node("ConvTranspose", ["x"] + [c[0] for c in consts], ["y"], **attrs)],
        [("x", shape)],
        ["y"],
        [init(*c) for c in consts],
        opset,
    )
    check_or_skip(m, rand(shape, seed + 2), what=f"ConvTranspose {attrs}")


def test_conv_transpose_larger_output_exports_as_valid_onnx():
    """The IR's negative pads are written as ConvTranspose + Pad + bias, which onnxruntime runs alike."""
    shape = [2, 2, 4, 4]
    m = single(
        "ConvTranspose",
        shape,
        {"strides": [3, 2], "output_shape": [12, 8]},
        [("w", rand([2, 3, 1, 2], 1)), ("b", rand([3], 2))],
        21,
    )
    x = rand(shape, 3)
    exported = to_onnx(load_graph(m), {})
    exported.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    del exported.opset_import[1:]  # no neuron nodes: plain ONNX that onnxruntime runs
    assert_close(run_ort(exported, x)[0], run_ort(m, x)[0], "exported ConvTranspose")


# =====================================================================================
# Upsample at opsets 7-9: the version converter drops the node's name when it lifts Upsample
# to Resize, so the loader finds the node by its output to restore asymmetric coordinates
# =====================================================================================
@pytest.mark.parametrize("opset", [7, 8, 9])
@pytest.mark.parametrize(
    "mode,scales",
    [("linear", [1.0, 1.0, 2.0, 2.0]), ("linear", [1.0, 1.0, 3.0, 1.5]), ("nearest", [1.0, 1.0, 1.7, 2.3])],
)
@pytest.mark.parametrize("named", [True, False])
def test_upsample_old_opsets(opset, mode, scales, named):
    shape = [2, 3, 4, 5]
    if opset < 9:  # scales is an attribute up to opset 8, an input from 9
        node = helper.make_node("Upsample", ["x"], ["u"], mode=mode, scales=scales)
        inits = []
    else:
        node = helper.make_node("Upsample", ["x", "scales"], ["u"], mode=mode)
        inits = [init("scales", np.array(scales, np.float32))]
    if named:
        node.name = "up"
    # a consumer after the Upsample: the restored node is the one feeding it, not just a graph output
    m = build([node, helper.make_node("Relu", ["u"], ["y"])], [("x", shape)], ["y"], inits, opset)
    check(m, rand(shape, 1), what=f"Upsample-{opset} {mode} {scales}")


def test_bilinear_interpolate_exported_at_opset9():
    """The issue's case: torch's bilinear F.interpolate exported at opset 9 (0.44 relative off before)."""
    import io
    import warnings

    import onnx
    import torch

    class Up(torch.nn.Module):
        def forward(self, x):
            return torch.relu(torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Up(), torch.zeros(1, 3, 4, 5), buf, opset_version=9, dynamo=False)
    m = onnx.load_from_string(buf.getvalue())
    assert "Upsample" in [n.op_type for n in m.graph.node]
    check(m, rand([1, 3, 4, 5], 2), what="bilinear F.interpolate at opset 9")


# =====================================================================================
# Dropout in training mode is random: refused (a constant False, or ratio 0, stays identity)
# =====================================================================================
def _dropout_model(training, ratio: float | None, opset: int = 21):
    inputs, inits = [("x", [2, 3, 4])], []
    names = ["x", "ratio" if ratio is not None else ""]
    if ratio is not None:
        inits.append(init("ratio", np.array(ratio, np.float32)))
    if training == "input":
        inputs.append(("t", []))
        names.append("t")
    else:
        inits.append(init("t", np.array(training, np.bool_)))
        names.append("t")
    nodes = [helper.make_node("Dropout", names, ["d"], name="drop"), helper.make_node("Tanh", ["d"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "dropout",
        [helper.make_tensor_value_info(n, 9 if n == "t" else 1, s) for n, s in inputs],
        [helper.make_tensor_value_info("y", 1, [2, 3, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("opset", [12, 13, 21])
@pytest.mark.parametrize("ratio", [None, 0.3])
def test_dropout_training_mode_is_refused(opset, ratio):
    from snncompiler.errors import SnncError

    x = rand([2, 3, 4], 1)
    ort_out = run_ort(_dropout_model(True, ratio, opset), x)[0]
    assert not np.allclose(ort_out, np.tanh(x))  # what a compiler cannot reproduce: random zeros, rescaling
    with pytest.raises(SnncError, match=r"node Dropout 'drop': training_mode=True drops random elements"):
        load_graph(_dropout_model(True, ratio, opset))
    with pytest.raises(SnncError, match=r"node Dropout 'drop': training_mode is computed at run time"):
        load_graph(_dropout_model("input", ratio, opset))


@pytest.mark.parametrize("training,ratio", [(False, 0.3), (False, None), (True, 0.0)])
def test_dropout_inference_or_ratio_zero_is_identity(training, ratio):
    check(_dropout_model(training, ratio), rand([2, 3, 4], 1), what=f"Dropout training={training} ratio={ratio}")


# =====================================================================================
# Cast / CastLike to every ONNX element type: equal to onnxruntime, or a one-line SnncError
# =====================================================================================
_CAST_X = np.array(
    [[-1e5, -300.0, -2.7, -1.5, -0.4, 0.0, 0.3, 0.5, 1.5, 2.5, 7.9, 500.0, 1e5, np.inf, -np.inf, np.nan]], np.float32
)


def _cast_model(to: int, opset: int, roundtrip: bool, like: bool = False, saturate: int | None = None):
    """x → Cast(to) [→ Cast(float)]: the round trip shows the values, the direct form the output type."""
    from onnx import TensorProto, numpy_helper

    extra = {} if saturate is None else {"saturate": saturate}
    mid = "c" if roundtrip else "y"
    inits = []
    if like:
        np_type = helper.tensor_dtype_to_np_dtype(to)
        if np.dtype(np_type).kind == "O":  # strings: a numpy object array cannot carry them to ONNX
            inits.append(helper.make_tensor("like", to, [1], [b"a"]))
        else:
            inits.append(numpy_helper.from_array(np.zeros([1], np_type), "like"))
        nodes = [helper.make_node("CastLike", ["x", "like"], [mid], name="cast", **extra)]
    else:
        nodes = [helper.make_node("Cast", ["x"], [mid], name="cast", to=to, **extra)]
    if roundtrip:
        nodes.append(helper.make_node("Cast", ["c"], ["y"], to=TensorProto.FLOAT, name="back"))
    graph = helper.make_graph(
        nodes,
        "cast",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(_CAST_X.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT if roundtrip else to, list(_CAST_X.shape))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset <= 21 else 11
    return model


def _cast_case(to: int, opset: int, roundtrip: bool, like: bool = False, saturate: int | None = None):
    """Run one cast model both ways: either both agree, or snncompiler refuses with a one-line
    SnncError (a bare exception fails the test). Returns 'match' or 'refused'."""
    from snncompiler.errors import SnncError

    model = _cast_model(to, opset, roundtrip, like, saturate)
    try:
        got = run_graph(load_graph(model), _CAST_X)
    except SnncError as exc:
        assert "\n" not in str(exc).strip(), f"not a one-line error: {exc}"
        return "refused"
    try:
        ref = run_ort(model, _CAST_X)[0]
    except Exception:  # onnxruntime has no kernel or no numpy type for it: our result stands alone
        return "unchecked"
    if ref.dtype == np.uint8 and got.dtype.itemsize == 1 and got.dtype != np.uint8:
        got = got.view(np.uint8)  # onnxruntime returns float8 outputs as their bit patterns
    assert got.dtype == ref.dtype, f"output type {got.dtype}, onnxruntime's {ref.dtype}"
    if ref.dtype.kind in "fc":
        assert_close(got, ref, f"cast to {to}")
    else:
        np.testing.assert_array_equal(got, ref)
    return "match"


def _all_dtypes():
    from onnx import TensorProto

    return sorted(TensorProto.DataType.values())


@pytest.mark.parametrize("opset", [21, 25])
@pytest.mark.parametrize("to", _all_dtypes())
def test_cast_to_every_dtype(to, opset):
    from onnx import TensorProto

    from snncompiler.formats.onnx.converters.structure import CAST_DTYPES

    outcomes = {_cast_case(to, opset, roundtrip) for roundtrip in (True, False)}
    if to in CAST_DTYPES:  # supported: the round trip agrees with onnxruntime
        assert _cast_case(to, opset, True) == "match"
    else:
        assert outcomes == {"refused"}, TensorProto.DataType.Name(to)


@pytest.mark.parametrize("to", _all_dtypes())
def test_cast_like_every_dtype(to):
    from onnx import TensorProto

    from snncompiler.formats.onnx.converters.structure import CAST_DTYPES

    if to == TensorProto.UNDEFINED:
        pytest.skip("no tensor of type UNDEFINED to take the type from")
    outcome = _cast_case(to, 21, True, like=True)
    assert outcome == ("match" if to in CAST_DTYPES else "refused"), TensorProto.DataType.Name(to)


@pytest.mark.parametrize("saturate", [0, 1])
@pytest.mark.parametrize("name", ["FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ"])
def test_cast_float8_saturate(name, saturate):
    from onnx import TensorProto

    assert _cast_case(getattr(TensorProto, name), 21, True, saturate=saturate) == "match"
