"""Transformers at the opsets people export at (14: GELU as Erf, LayerNorm as ReduceMean/Sqrt;
17: native LayerNormalization): a tiny ViT and an nn.TransformerEncoder, exported by torch with
a fixed batch of 1, load, match onnxruntime, compile with softmax/LayerNorm/GELU as analog
islands, and their SNN output converges to the ANN as T grows.

Measured cosine to the ANN (mean over samples at T = 8 / 32 / 128, the same with
ATEN_CPU_CAPABILITY=default and avx2): encoder 0.9824 / 0.9989 / 1.0000 at opsets 14 and 17;
ViT with GELU substituted by ReLU neurons 0.9909 / 0.9995 / 0.9999 (against its own ANN mode).
The floors sit below them with a margin.
"""

from __future__ import annotations

import collections
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from formats.helpers import assert_close, build, check, init, rand, single

import snncompiler as snnc
from snncompiler.formats.onnx import load_graph
from snncompiler.runtime import run_graph
from snncompiler.runtime.executor import fixed_batch

STEPS = (8, 32, 128)


class TinyViT(nn.Module):
    """Patch-embedding conv, class token, position embedding, pre-norm encoder blocks (multi-head
    attention, GELU MLP), final LayerNorm, linear head on the class token."""

    def __init__(self, image=16, patch=4, dim=32, depth=2, heads=4, classes=10):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "ln1": nn.LayerNorm(dim),
                    "attn": nn.MultiheadAttention(dim, heads, batch_first=True),
                    "ln2": nn.LayerNorm(dim),
                    "mlp": nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim)),
                }
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        for block in self.blocks:
            h = block["ln1"](x)
            x = x + block["attn"](h, h, h, need_weights=False)[0]
            x = x + block["mlp"](block["ln2"](x))
        return self.head(self.norm(x[:, 0]))


class Encoder(nn.Module):
    """Linear stem + ReLU (so something spikes), 2 batch-first TransformerEncoderLayers with a
    ReLU feed-forward, mean over tokens, linear head."""

    def __init__(self, features=8, dim=32, classes=5):
        super().__init__()
        self.stem = nn.Linear(features, dim)
        layer = nn.TransformerEncoderLayer(dim, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.encoder(torch.relu(self.stem(x))).mean(1))


MODELS = {"vit": (TinyViT, (3, 16, 16)), "encoder": (Encoder, (6, 8))}


def export(kind: str, opset: int, path) -> str:
    cls, shape = MODELS[kind]
    torch.manual_seed(0)
    model = cls().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.randn(1, *shape),), str(path), dynamo=False, opset_version=opset, input_names=["x"]
        )
    return str(path)


def data(kind: str, n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n,) + MODELS[kind][1]).astype(np.float32)


def onnxruntime_outputs(path: str, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("opset", [14, 17])
def test_load_fuses_and_matches_onnxruntime(kind, opset, tmp_path):
    path = export(kind, opset, tmp_path / f"{kind}.onnx")
    source = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
    graph = load_graph(path)
    ops = collections.Counter(n.op for n in graph.nodes)
    norms = 5 if kind == "vit" else 4
    assert ops["layer_norm"] == norms, ops
    if opset == 14:  # the decomposed forms really were in the file, and none is left over
        assert source["Sqrt"] >= norms and "LayerNormalization" not in source
    assert not {"erf", "sqrt", "pow", "div", "sub"} & set(ops), ops
    assert ops["gelu"] == (2 if kind == "vit" else 0)
    x = data(kind, 4)
    ref = onnxruntime_outputs(path, x)
    got = np.concatenate([run_graph(graph, x[i : i + 1]) for i in range(len(x))])
    assert_close(got, ref, f"{kind} opset {opset}")


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """The encoder at opsets 14 and 17, compiled (T=32), with its SNN outputs at T = 8, 32, 128."""
    result = {}
    for opset in (14, 17):
        path = export("encoder", opset, tmp_path_factory.mktemp("enc") / f"encoder{opset}.onnx")
        model = snnc.compile(path, data("encoder", 32, seed=2))
        x = data("encoder", 8)
        result[opset] = (path, model, x, model.run(x, max(STEPS), checkpoints=STEPS))
    return result


@pytest.mark.parametrize("opset", [14, 17])
def test_encoder_compiles_with_analog_islands_and_converges(encoders, opset):
    path, model, x, outs = encoders[opset]
    assert fixed_batch(model.graph)  # exported at batch 1: calibrated and run one sample at a time
    islands = collections.Counter(model.graph.node(n).op for n in model.report["analog_islands"])
    assert islands["softmax"] == 2 and islands["layer_norm"] == 4 and islands["matmul"] == 4, islands
    assert len(model.graph.find("neuron")) == 3
    ann = onnxruntime_outputs(path, x)
    cos = [float(cosines(outs[t], ann).mean()) for t in STEPS]
    assert cos[0] < cos[1] < cos[2], cos
    for t, c, floor in zip(STEPS, cos, (0.95, 0.99, 0.995)):
        assert c >= floor, f"T={t}: cosine {c:.4f} below the floor {floor}"


def test_encoder_artifact_keeps_running_one_sample_at_a_time(encoders, tmp_path):
    _, model, x, outs = encoders[17]
    path = tmp_path / "enc.snn.onnx"
    model.save(path)
    back = snnc.load(path)
    assert fixed_batch(back.graph)
    np.testing.assert_allclose(back.run(x, 8), outs[8], rtol=1e-5, atol=1e-6)


def test_fixed_batch_refuses_layerwise_calibration(encoders):
    path = encoders[14][0]
    with pytest.raises(snnc.SnncError, match="runs only at batch 1"):
        snnc.compile(path, data("encoder", 8), calibration="light")


@pytest.mark.parametrize("opset", [14, 17])
def test_vit_compiles_with_gelu_softmax_layernorm_islands(opset, tmp_path):
    path = export("vit", opset, tmp_path / "vit.onnx")
    model = snnc.compile(path, data("vit", 8, seed=2))
    islands = collections.Counter(model.graph.node(n).op for n in model.report["analog_islands"])
    assert islands["gelu"] == 2 and islands["softmax"] == 2 and islands["layer_norm"] == 5, islands
    x = data("vit", 2)
    np.testing.assert_allclose(model.run(x, 4), onnxruntime_outputs(path, x), rtol=1e-4, atol=1e-5)


def test_vit_with_gelu_substituted_spikes_and_converges(tmp_path):
    path = export("vit", 14, tmp_path / "vit.onnx")
    model = snnc.compile(path, data("vit", 32, seed=2), substitute="relu")
    assert len(model.graph.find("neuron")) == 2 and not model.graph.find("gelu")
    x = data("vit", 6)
    ann = model.ann(x)
    outs = model.run(x, max(STEPS), checkpoints=STEPS)
    cos = [float(cosines(outs[t], ann).mean()) for t in STEPS]
    assert cos[0] < cos[2], cos
    for t, c, floor in zip(STEPS, cos, (0.97, 0.995, 0.998)):
        assert c >= floor, f"T={t}: cosine {c:.4f} below the floor {floor}"


# ---- the patterns and converters, one at a time ------------------------------------------
def _torch_export(module: nn.Module, shape, opset: int, path) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (torch.randn(*shape),),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["x"],
            dynamic_axes={"x": {0: "n"}},
        )
    return onnx.load(str(path))


class _HandGelu(nn.Module):
    """GELU written out as Hugging Face does: 0.5 * x * (1 + erf(x / sqrt(2)))."""

    def forward(self, x):
        return 0.5 * x * (1.0 + torch.erf(x / 1.4142135623730951))


@pytest.mark.parametrize(
    "module,approximate", [(nn.GELU(), "none"), (nn.GELU(approximate="tanh"), "tanh"), (_HandGelu(), "none")]
)
def test_gelu_patterns_fuse(module, approximate, tmp_path):
    model = _torch_export(nn.Sequential(nn.Linear(6, 6), module), (3, 6), 14, tmp_path / "g.onnx")
    graph = load_graph(model)
    assert [n.op for n in graph.nodes] == ["linear", "gelu"]
    assert graph.nodes[1].attrs["approximate"] == approximate
    check(model, rand([3, 6], 4, -3, 3), what=f"GELU {approximate}")


@pytest.mark.parametrize("affine", [True, False])
def test_layernorm_pattern_fuses(affine, tmp_path):
    norm = nn.LayerNorm([4, 5], elementwise_affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-1, 1)
    model = _torch_export(norm, (2, 3, 4, 5), 14, tmp_path / "ln.onnx")
    graph = load_graph(model)
    assert [n.op for n in graph.nodes] == ["layer_norm"] and graph.nodes[0].attrs["axis"] == 2
    check(model, rand([2, 3, 4, 5], 5), what="LayerNorm pattern")


def test_near_patterns_do_not_fuse():
    """erf(x/1.5) is no GELU, and a mean over axis 0..: each piece stays itself, still exact."""
    nodes = [
        onnx.helper.make_node("Div", ["x", "s"], ["d"]),
        onnx.helper.make_node("Erf", ["d"], ["e"]),
        onnx.helper.make_node("Add", ["e", "one"], ["a"]),
        onnx.helper.make_node("Mul", ["x", "a"], ["m"]),
        onnx.helper.make_node("Mul", ["m", "half"], ["y"]),
    ]
    model = build(
        nodes,
        [("x", [2, 5])],
        ["y"],
        [init("s", np.float32(1.5)), init("one", np.float32(1.0)), init("half", np.float32(0.5))],
        14,
    )
    assert "gelu" not in [n.op for n in load_graph(model).nodes]
    check(model, rand([2, 5], 6), what="not a GELU")


@pytest.mark.parametrize(
    "which,value", [("sqrt2", np.float32(1.4155)), ("one", np.float32(1.0009)), ("half", np.float32(0.5004))]
)
def test_gelu_with_nearly_its_constants_does_not_fuse(which, value):
    """Constants within 0.1 % of GELU's fused into an exact GELU (max error 5e-3): only the
    float32-rounded values match now, and the pieces run as written."""
    consts = {"sqrt2": np.float32(np.sqrt(2.0)), "one": np.float32(1.0), "half": np.float32(0.5), which: value}
    nodes = [
        onnx.helper.make_node("Div", ["x", "sqrt2"], ["d"]),
        onnx.helper.make_node("Erf", ["d"], ["e"]),
        onnx.helper.make_node("Add", ["e", "one"], ["a"]),
        onnx.helper.make_node("Mul", ["x", "a"], ["m"]),
        onnx.helper.make_node("Mul", ["m", "half"], ["y"]),
    ]
    model = build(nodes, [("x", [2, 5])], ["y"], [init(k, v) for k, v in consts.items()], 14)
    assert "gelu" not in [n.op for n in load_graph(model).nodes]
    check(model, rand([2, 5], 6, -3, 3), what=f"GELU with {which} = {value}")


@pytest.mark.parametrize("op", ["Erf", "Sqrt", "Exp", "Log", "Abs", "Reciprocal", "Neg"])
def test_unary_converters(op):
    low = 0.1 if op in ("Sqrt", "Log", "Reciprocal") else -2.0
    check(single(op, [2, 3, 4], opset=14), rand([2, 3, 4], 7, low, 2.0), what=op)


def test_where_equal_expand():
    cond = rand([1, 4], 8) > 0
    nodes = [
        onnx.helper.make_node("Where", ["c", "x", "z"], ["w"]),  # constant condition: a fixed selection
        onnx.helper.make_node("Equal", ["x", "x2"], ["eq"]),  # activation condition: analog
        onnx.helper.make_node("Where", ["eq", "w", "x"], ["w2"]),
        onnx.helper.make_node("Expand", ["w2", "shape"], ["y"]),
    ]
    model = build(
        nodes,
        [("x", [2, 1, 4]), ("x2", [2, 1, 4])],
        ["y"],
        [init("c", cond), init("z", np.float32(0.25)), init("shape", np.array([2, 3, 4], np.int64))],
        14,
    )
    x = rand([2, 1, 4], 9)
    x2 = np.where(rand([2, 1, 4], 10) > 0, x, -x)
    check(model, x, x2, what="Where/Equal/Expand")


def test_range_folds_and_activation_range_is_refused():
    nodes = [onnx.helper.make_node("Range", ["s", "l", "d"], ["r"]), onnx.helper.make_node("Add", ["x", "r"], ["y"])]
    model = build(
        nodes,
        [("x", [2, 5])],
        ["y"],
        [init("s", np.float32(0)), init("l", np.float32(5)), init("d", np.float32(1))],
        14,
    )
    check(model, rand([2, 5], 11), what="constant Range")
    nodes = [onnx.helper.make_node("Range", ["zero", "x", "one"], ["y"])]
    model = build(nodes, [("x", [])], ["y"], [init("zero", np.float32(0)), init("one", np.float32(1))], 14)
    with pytest.raises(snnc.SnncError, match="Range needs constant"):
        load_graph(model)
