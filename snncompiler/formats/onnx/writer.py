"""IR → ONNX. Standard ops for everything linear or analog, `snncompiler::Neuron` for neurons.

The artifact is plain ONNX (readable by Netron and onnx.load, accepted by onnx.checker):
settings, default T and the compile report live in metadata_props; nothing is pickled.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...errors import SnncError
from ...fileio import write_bytes
from ..artifact import SNN_DOMAIN, SNN_DOMAIN_VERSION, TARGET_OPSET, artifact_metadata
from ...ir import Graph, Node
from ...ir.neuron import NeuronSpec



class _Builder:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, node: Node, key: str, value) -> str:
        name = f"{node.name}.{key}"
        arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        # not np.ascontiguousarray: it turns a 0-d array (a scalar Gather index) into shape (1,)
        self.inits.append(numpy_helper.from_array(np.array(arr, order="C"), name))
        return name

    def add(self, op: str, inputs, outputs, name: str, domain: str = "", **attrs) -> None:
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name, domain=domain, **attrs))

    def tmp(self, node: Node) -> str:
        self._n += 1
        return f"{node.outputs[0]}__x{self._n}"


_UNARY_ONNX = {"erf": "Erf", "sqrt": "Sqrt", "exp": "Exp", "log": "Log", "abs": "Abs", "reciprocal": "Reciprocal",
               "neg": "Neg"}


def _ints(v):
    return [int(i) for i in v]


def _emit_extended_conv_transpose(b: _Builder, n: Node) -> None:
    """A conv_transpose with negative pads (an output larger than the natural one): ONNX pads
    cannot be negative, so ConvTranspose without bias, then Pad with zeros, then the bias."""
    a, p = n.attrs, n.params
    nd = p["weight"].dim() - 2
    pads = _ints(a["pads"])
    crop, extend = [max(q, 0) for q in pads], [0, 0] + [max(-q, 0) for q in pads[:nd]] + [0, 0] + \
        [max(-q, 0) for q in pads[nd:]]
    full, padded = b.tmp(n), b.tmp(n) if "bias" in p else n.outputs[0]
    b.add("ConvTranspose", [n.inputs[0], b.const(n, "weight", p["weight"])], [full], n.name,
          strides=_ints(a["stride"]), pads=crop, dilations=_ints(a["dilation"]), group=int(a["groups"]),
          output_padding=_ints(a["output_padding"]))
    b.add("Pad", [full, b.const(n, "extend", np.array(extend, np.int64))], [padded], n.name + "/extend")
    if "bias" in p:
        b.add("Add", [padded, b.const(n, "bias", p["bias"].reshape([-1] + [1] * nd))], n.outputs, n.name + "/bias")


def _emit(b: _Builder, n: Node) -> None:  # noqa: C901 - one case per core op, kept side by side
    a, p, ins, outs = n.attrs, n.params, n.inputs, n.outputs
    if n.op == "neuron":
        extra = [b.const(n, "v_init", p["v_init"]) if "v_init" in p else ""] + ([b.const(n, "gain", p["gain"])]
                                                                               if "gain" in p else [])
        while extra and not extra[-1]:  # no trailing empty optional inputs: the 2-input form stays as it was
            extra.pop()
        spec = NeuronSpec.from_attrs(a, where=n.where)
        b.add("Neuron", [ins[0], b.const(n, "theta", p["theta"])] + extra,
              outs, n.name, SNN_DOMAIN, neuron=spec.neuron, tau=spec.tau, reset=spec.reset, v0=spec.v0,
              theta_source=a.get("theta_source", ""))
    elif n.op == "conv_transpose" and min(a["pads"]) < 0:
        _emit_extended_conv_transpose(b, n)
    elif n.op in ("conv", "conv_transpose"):
        w = [ins[0], b.const(n, "weight", p["weight"])] + ([b.const(n, "bias", p["bias"])] if "bias" in p else [])
        extra = {"output_padding": _ints(a["output_padding"])} if n.op == "conv_transpose" else {}
        b.add("Conv" if n.op == "conv" else "ConvTranspose", w, outs, n.name, strides=_ints(a["stride"]),
              pads=_ints(a["pads"]), dilations=_ints(a["dilation"]), group=int(a["groups"]), **extra)
    elif n.op == "linear" and len(b.graph.shape(ins[0]) or ()) == 2:
        w = [ins[0], b.const(n, "weight", p["weight"])] + ([b.const(n, "bias", p["bias"])] if "bias" in p else [])
        b.add("Gemm", w, outs, n.name, transB=1)
    elif n.op == "linear":
        mid = b.tmp(n) if "bias" in p else outs[0]
        b.add("MatMul", [ins[0], b.const(n, "weightT", p["weight"].t().contiguous())], [mid], n.name)
        if "bias" in p:
            b.add("Add", [mid, b.const(n, "bias", p["bias"])], outs, n.name + "/bias")
    elif n.op == "matmul":
        args = ([b.const(n, "lhs", p["lhs"])] if "lhs" in p else []) + ins + ([b.const(n, "rhs", p["rhs"])] if "rhs" in p else [])
        b.add("MatMul", args, outs, n.name)
    elif n.op == "batchnorm":
        b.add("BatchNormalization", [ins[0]] + [b.const(n, k, p[k]) for k in ("scale", "bias", "mean", "var")], outs,
              n.name, epsilon=float(a.get("eps", 1e-5)))
    elif n.op == "scale":
        shape = [-1] + [1] * max(0, len(b.graph.shape(ins[0]) or [0, 0]) - 2)
        mid = b.tmp(n)
        b.add("Mul", [ins[0], b.const(n, "scale", p["scale"].reshape(shape))], [mid], n.name)
        b.add("Add", [mid, b.const(n, "shift", p["shift"].reshape(shape))], outs, n.name + "/shift")
    elif n.op in ("relu", "sigmoid", "tanh", "hardswish"):
        b.add({"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "hardswish": "HardSwish"}[n.op], ins, outs, n.name)
    elif n.op == "clip":
        lo = b.const(n, "min", np.float32(a["min"])) if a.get("min") is not None else ""
        hi = b.const(n, "max", np.float32(a["max"])) if a.get("max") is not None else ""
        b.add("Clip", [ins[0], lo, hi], outs, n.name)
    elif n.op == "leaky_relu":
        b.add("LeakyRelu", ins, outs, n.name, alpha=float(a.get("alpha", 0.01)))
    elif n.op == "prelu":
        b.add("PRelu", [ins[0], b.const(n, "slope", p["slope"])], outs, n.name)
    elif n.op == "hardsigmoid":
        b.add("HardSigmoid", ins, outs, n.name, alpha=float(a.get("alpha", 0.2)), beta=float(a.get("beta", 0.5)))
    elif n.op == "gelu":
        b.add("Gelu", ins, outs, n.name, approximate=a.get("approximate", "none"))
    elif n.op in ("softmax", "log_softmax"):
        b.add("Softmax" if n.op == "softmax" else "LogSoftmax", ins, outs, n.name, axis=int(a["axis"]))
    elif n.op == "lrn":
        b.add("LRN", ins, outs, n.name, size=int(a["size"]), alpha=float(a["alpha"]), beta=float(a["beta"]), bias=float(a["bias"]))
    elif n.op == "layer_norm":
        args = [ins[0], b.const(n, "scale", p["scale"])] + ([b.const(n, "bias", p["bias"])] if "bias" in p else [])
        b.add("LayerNormalization", args, outs, n.name, axis=int(a["axis"]), epsilon=float(a["eps"]))
    elif n.op == "instance_norm":
        b.add("InstanceNormalization", [ins[0], b.const(n, "scale", p["scale"]), b.const(n, "bias", p["bias"])], outs,
              n.name, epsilon=float(a["eps"]))
    elif n.op in ("maxpool", "avgpool"):
        onnx_op = "MaxPool" if n.op == "maxpool" else "AveragePool"
        if a.get("global"):
            b.add("Global" + onnx_op, ins, outs, n.name)
        else:
            extra = {"dilations": _ints(a.get("dilation", [1] * len(a["kernel"])))} if n.op == "maxpool" else \
                {"count_include_pad": int(a.get("count_include_pad", 0))}
            b.add(onnx_op, ins, outs, n.name, kernel_shape=_ints(a["kernel"]), strides=_ints(a["stride"]),
                  pads=_ints(a["pads"]), ceil_mode=int(a.get("ceil_mode", 0)), **extra)
    elif n.op in ("add", "sub", "mul", "div", "max", "min", "pow"):
        op = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min", "pow": "Pow"}[n.op]
        if "const" in p:
            c = b.const(n, "const", p["const"])
            args = [c, ins[0]] if a.get("const_first") else [ins[0], c]
        else:
            args = ins
        b.add(op, args, outs, n.name)
    elif n.op in _UNARY_ONNX:
        b.add(_UNARY_ONNX[n.op], ins, outs, n.name)
    elif n.op == "where":
        cond = [b.const(n, "cond", p["cond"])] if "cond" in p else []
        b.add("Where", cond + ins, outs, n.name)
    elif n.op == "equal":
        b.add("Equal", ins, outs, n.name)
    elif n.op == "expand":
        b.add("Expand", [ins[0], b.const(n, "shape", np.array(a["shape"], np.int64))], outs, n.name)
    elif n.op == "concat":
        b.add("Concat", ins, outs, n.name, axis=int(a["axis"]))
    elif n.op == "split":
        b.add("Split", [ins[0], b.const(n, "sizes", np.array(a["sizes"], np.int64))], outs, n.name, axis=int(a["axis"]))
    elif n.op == "slice":
        arr = lambda k: b.const(n, k, np.array(a[k], np.int64))  # noqa: E731
        b.add("Slice", [ins[0], arr("starts"), arr("ends"), arr("axes"), arr("steps")], outs, n.name)
    elif n.op == "gather":
        b.add("Gather", [ins[0], b.const(n, "indices", p["indices"])], outs, n.name, axis=int(a["axis"]))
    elif n.op == "reshape":
        shape = ([0] + list(a["shape"])) if a.get("keep_batch") else list(a["shape"])
        b.add("Reshape", [ins[0], b.const(n, "shape", np.array(shape, np.int64))], outs, n.name)
    elif n.op == "flatten":
        b.add("Flatten", ins, outs, n.name, axis=int(a.get("axis", 1)))
    elif n.op == "transpose":
        b.add("Transpose", ins, outs, n.name, perm=_ints(a["perm"]))
    elif n.op == "pad":
        b.add("Pad", [ins[0], b.const(n, "pads", np.array(a["pads"], np.int64)),
                      b.const(n, "value", np.float32(a.get("value", 0.0)))], outs, n.name, mode=a.get("mode", "constant"))
    elif n.op == "resize":
        b.add("Resize", [ins[0], "", b.const(n, "scales", np.array(a["scales"], np.float32))], outs, n.name,
              mode=a["mode"], coordinate_transformation_mode=a["coordinate_transformation_mode"],
              nearest_mode=a["nearest_mode"])
    elif n.op == "reduce_mean":
        b.add("ReduceMean", [ins[0], b.const(n, "axes", np.array(a["axes"], np.int64))], outs, n.name,
              keepdims=int(a.get("keepdims", 1)))
    elif n.op == "cast":
        b.add("Cast", ins, outs, n.name, to=int(helper.np_dtype_to_tensor_dtype(np.dtype(a["dtype"]))))
    elif n.op == "identity":
        b.add("Identity", ins, outs, n.name)
    elif n.op == "constant":
        b.add("Constant", [], outs, n.name, value=numpy_helper.from_array(p["value"].cpu().numpy()))
    else:
        raise SnncError(f"{n.where}: core op '{n.op}' cannot be exported to ONNX")


def to_onnx(graph: Graph, metadata: dict[str, str]) -> onnx.ModelProto:
    """Build the artifact ModelProto from a (spiking) IR graph."""
    b = _Builder(graph)
    for n in graph.nodes:
        _emit(b, n)
    inputs = [helper.make_tensor_value_info(v.name, TensorProto.FLOAT, ["N"] + list(v.shape[1:])) for v in graph.inputs]
    from ...runtime.executor import infer_shapes

    infer_shapes(graph)
    outputs = [helper.make_tensor_value_info(v.name, TensorProto.FLOAT, ["N"] + list(graph.shape(v.name)[1:]))
               for v in graph.outputs]
    # shape inference cannot see through custom-domain neurons: record every value's shape
    io_names = {v.name for v in graph.inputs} | {v.name for v in graph.outputs}
    value_info = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N"] + list(v.shape[1:]))
                  for name, v in graph.values.items() if v.shape and name not in io_names
                  and any(name in n.outputs for n in graph.nodes)]
    g = helper.make_graph(b.nodes, graph.name, inputs, outputs, initializer=b.inits, value_info=value_info)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", TARGET_OPSET), helper.make_opsetid(SNN_DOMAIN, SNN_DOMAIN_VERSION)],
                              producer_name="snncompiler")
    helper.set_model_props(model, metadata)
    return model


def save_artifact(compiled, path) -> None:
    """Write a CompiledModel to ``path`` and check the result with onnx.checker."""
    from ...ir.graph import FIXED_BATCH_KEY
    from ...runtime.executor import fixed_batch

    meta = artifact_metadata(compiled.settings(), compiled.report,
                             fixed_batch_key=FIXED_BATCH_KEY if fixed_batch(compiled.graph) else None)
    model = to_onnx(compiled.graph, meta)
    onnx.checker.check_model(model)
    write_bytes(path, model.SerializeToString())
