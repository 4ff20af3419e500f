"""Operator parity: snncompiler's frontend + runtime against onnxruntime, one model per operator.

Each test builds a small ONNX model with onnx.helper at one or more opsets (the oldest where the
operator has the tested form, a middle one where the form changed, and 21), runs it with
onnxruntime and with ``run_graph(load_graph(model), x)`` and requires
``max|Δ| ≤ 1e-4 · max(1, max|ref|)``. Parameter spaces of the operators with many attributes are
drawn by hypothesis; examples that onnxruntime itself rejects are discarded, never loosened.
"""
from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from snncompiler.frontend import supported_ops

from .helpers import OrtRejected, build, check, check_or_skip, init, rand, run_ort, run_snn, single, assert_close

HYP = settings(max_examples=20, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
HYP_SMALL = settings(HYP, max_examples=12)


def build_or_skip(*args, **kwargs):
    """build() inside hypothesis: a configuration the ONNX checker/shape inference rejects is discarded."""
    try:
        return build(*args, **kwargs)
    except Exception:
        assume(False)


# =====================================================================================
# Conv
# =====================================================================================
@pytest.mark.parametrize("opset", [9, 11, 21])
@pytest.mark.parametrize("nd", [1, 2])
def test_conv_basic(opset, nd):
    shape = [2, 3] + [9] * nd
    w = rand([4, 3] + [3] * nd, 1)
    b = rand([4], 2)
    m = single("Conv", shape, {"pads": [1] * 2 * nd, "strides": [2] * nd}, [("w", w), ("b", b)], opset)
    check(m, rand(shape, 3), what=f"Conv {nd}-D opset {opset}")


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("opset", [9, 21])
def test_conv_auto_pad(auto_pad, opset):
    shape = [2, 2, 8, 7]
    w = rand([3, 2, 4, 3], 1)
    m = single("Conv", shape, {"auto_pad": auto_pad, "strides": [3, 2]}, [("w", w)], opset)
    check(m, rand(shape, 3), what=f"Conv auto_pad={auto_pad}")


@pytest.mark.parametrize("opset", [11, 21])
def test_conv_depthwise(opset):
    shape = [2, 4, 7, 7]
    w = rand([8, 1, 3, 3], 1)
    m = single("Conv", shape, {"group": 4, "pads": [1, 0, 2, 1], "dilations": [2, 1]}, [("w", w), ("b", rand([8], 2))], opset)
    check(m, rand(shape, 3), what="depthwise Conv")


@HYP
@given(nd=st.sampled_from([1, 2]), groups=st.sampled_from([1, 2, 3]), cin_per=st.integers(1, 2),
       cout_per=st.integers(1, 2), k=st.integers(1, 4), s=st.integers(1, 3), d=st.integers(1, 2),
       pads=st.lists(st.integers(0, 2), min_size=4, max_size=4),
       auto_pad=st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]),
       size=st.integers(5, 10), bias=st.booleans(), opset=st.sampled_from([9, 11, 21]), seed=st.integers(0, 99))
def test_conv_hypothesis(nd, groups, cin_per, cout_per, k, s, d, pads, auto_pad, size, bias, opset, seed):
    cin, cout = groups * cin_per, groups * cout_per
    kernel = [k] + [max(1, k - 1)] * (nd - 1)
    assume(all((kk - 1) * d + 1 <= size for kk in kernel))
    shape = [2, cin] + [size, size + 1][:nd]
    attrs = {"group": groups, "strides": [s] * nd, "dilations": [d] * nd, "kernel_shape": kernel}
    if auto_pad == "NOTSET":
        attrs["pads"] = pads[:nd] + pads[2:2 + nd]
    else:
        attrs["auto_pad"] = auto_pad
    consts = [("w", rand([cout, cin_per] + kernel, seed))] + ([("b", rand([cout], seed + 1))] if bias else [])
    m = build_or_skip([helper.make_node("Conv", ["x"] + [c[0] for c in consts], ["y"], **attrs)],
                      [("x", shape)], ["y"], [init(*c) for c in consts], opset)
    check_or_skip(m, rand(shape, seed + 2), what=f"Conv {attrs}")


# =====================================================================================
# ConvTranspose
# =====================================================================================
@pytest.mark.parametrize("opset", [9, 11, 21])
def test_conv_transpose_basic(opset):
    shape = [2, 3, 5, 4]
    m = single("ConvTranspose", shape, {"strides": [2, 2], "pads": [1, 0, 0, 1], "output_padding": [1, 0]},
               [("w", rand([3, 2, 3, 3], 1)), ("b", rand([2], 2))], opset)
    check(m, rand(shape, 3), what="ConvTranspose")


@pytest.mark.parametrize("opset", [9, 21])
def test_conv_transpose_output_shape(opset):
    shape = [2, 2, 4, 5]
    m = single("ConvTranspose", shape, {"strides": [2, 3], "output_shape": [9, 14]}, [("w", rand([2, 3, 3, 3], 1))], opset)
    check(m, rand(shape, 3), what="ConvTranspose output_shape")


@HYP
@given(groups=st.sampled_from([1, 2]), cin_per=st.integers(1, 2), cout_per=st.integers(1, 2),
       k=st.lists(st.integers(1, 4), min_size=2, max_size=2), s=st.lists(st.integers(1, 3), min_size=2, max_size=2),
       d=st.lists(st.integers(1, 2), min_size=2, max_size=2), pads=st.lists(st.integers(0, 2), min_size=4, max_size=4),
       out_pad=st.lists(st.integers(0, 2), min_size=2, max_size=2), use_output_shape=st.booleans(),
       extra=st.lists(st.integers(-2, 2), min_size=2, max_size=2), bias=st.booleans(),
       opset=st.sampled_from([9, 11, 21]), seed=st.integers(0, 99))
def test_conv_transpose_hypothesis(groups, cin_per, cout_per, k, s, d, pads, out_pad, use_output_shape, extra, bias,
                                   opset, seed):
    cin, cout = groups * cin_per, groups * cout_per
    shape = [2, cin, 4, 5]
    out_pad = [min(p, max(st_, dd) - 1) for p, st_, dd in zip(out_pad, s, d)]  # the spec: output_padding < max(stride, dilation)
    attrs = {"group": groups, "strides": s, "dilations": d, "kernel_shape": k}
    if use_output_shape:
        full = [s[i] * (shape[2 + i] - 1) + out_pad[i] + (k[i] - 1) * d[i] + 1 for i in range(2)]
        target = [f - max(0, e) for f, e in zip(full, extra)]  # at most the full size: crop only
        assume(all(t > 0 for t in target))
        attrs["output_shape"] = target
        attrs["output_padding"] = out_pad
    else:
        attrs["pads"] = pads
        attrs["output_padding"] = out_pad
    consts = [("w", rand([cin, cout_per] + k, seed))] + ([("b", rand([cout], seed + 1))] if bias else [])
    m = build_or_skip([helper.make_node("ConvTranspose", ["x"] + [c[0] for c in consts], ["y"], **attrs)],
                      [("x", shape)], ["y"], [init(*c) for c in consts], opset)
    check_or_skip(m, rand(shape, seed + 2), what=f"ConvTranspose {attrs}")
