"""Quantization-aware ANNs (QCFS): the trained staircase activation, written as ONNX arithmetic
by either exporter, becomes a neuron whose θ is the trained top (passes/fake_quant.py), and the
SNN computes the ANN's staircase exactly where the theory says it does (a layer fed by the
input, T = L, v0 = θ/2); snnc.train.QCFS / use_qcfs train such an ANN."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from torch import nn

import snncompiler as snnc
from snncompiler.cli.main import main as snnc_main
from snncompiler.errors import OptionError
from snncompiler.formats.onnx import load_graph
from snncompiler.passes import PassContext, fake_quant, run_pipeline
from snncompiler.train import QCFS, use_qcfs
from tests.formats.helpers import build, init, rand, run_ort


class _FloorSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.floor()

    @staticmethod
    def backward(ctx, g):
        return g


class ClampAfterFloor(nn.Module):
    """QCFS's first release (``MyFloor``): the clamp after the floor, the top a parameter ``up``."""

    def __init__(self, levels: int, top: float):
        super().__init__()
        self.t = levels
        self.up = nn.Parameter(torch.tensor([top]))

    def forward(self, x):
        x = _FloorSTE.apply(x / self.up * self.t + 0.5) / self.t
        return torch.clamp(x, 0, 1) * self.up


def _one_layer(activation: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), activation, nn.Flatten(), nn.Linear(4 * 36, 3)).eval()


def _export(model: nn.Module, path, dynamo: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 6, 6),),
            str(path),
            dynamo=dynamo,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes=None if dynamo else {"x": {0: "N"}, "y": {0: "N"}},
            dynamic_shapes=({0: torch.export.Dim("N")},) if dynamo else None,
        )
    return path


def _rewritten(model):
    graph, ctx = load_graph(model), PassContext()
    return run_pipeline(graph, ctx, [fake_quant]), ctx


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("form", ["qcfs", "clamp_after_floor"])
@pytest.mark.parametrize("levels", [2, 4, 8])
def test_snn_at_t_equal_levels_is_the_anns_staircase(form, dynamo, levels, tmp_path):
    """One staircase layer read by the output layer: with v0 = θ/2 an IF neuron driven by a
    constant current computes θ/L·clamp(floor(x·L/θ + ½), 0, L) in L steps, so the SNN at T = L
    equals the ANN (onnxruntime's) to float rounding, and at other T it does not."""
    top = 1.3
    act = QCFS(levels, init=top) if form == "qcfs" else ClampAfterFloor(levels, top)
    path = _export(_one_layer(act), tmp_path / "m.onnx", dynamo)
    graph, ctx = _rewritten(path)
    (site,) = [n for n in graph.nodes if n.attrs.get("levels")]
    assert not [n for n in graph.nodes if n.op in ("floor", "div", "mul", "add")]
    assert (site.op, site.attrs["levels"], site.attrs["shift"]) == ("clip", levels, 0.5)
    assert site.attrs["max"] == pytest.approx(top, rel=1e-6)
    assert ctx.report["quantized_activations"] == {"count": 1, "levels": [levels]}

    x = rand([64, 1, 6, 6], 1, -1.5, 1.5)
    (ann,) = run_ort(onnx.load(str(path)), x)
    model = snnc.compile(str(path), x, timesteps=levels, threshold="p50")  # the percentile is overridden
    (neuron,) = model.graph.find("neuron")
    assert float(neuron.params["theta"].max()) == pytest.approx(top, rel=1e-6)
    assert "trained" in neuron.attrs["theta_source"]
    snn = model.run(x, timesteps=levels)
    np.testing.assert_allclose(snn, ann, rtol=0, atol=1e-5 * max(1.0, float(np.abs(ann).max())))
    off = model.run(x, timesteps=levels + 1)
    assert float(np.abs(off - ann).max()) > 1e-3


def _chain(ops: list[tuple[str, float | None]], rounding: str = "Floor", clip: tuple | None = None):
    """x → Mul(4) → [Clip] → rounding → each (op, constant) of ``ops`` → y, an ONNX model."""
    nodes = [helper.make_node("Mul", ["x", "four"], ["m"])]
    inits = [init("four", np.float32(4.0))]
    value = "m"
    if clip is not None:
        inits += [init("lo", np.float32(clip[0])), init("hi", np.float32(clip[1]))]
        nodes.append(helper.make_node("Clip", [value, "lo", "hi"], ["c"]))
        value = "c"
    nodes.append(helper.make_node(rounding, [value], ["r"]))
    value = "r"
    for i, (op, const) in enumerate(ops):
        ins = [value] + ([f"k{i}"] if const is not None and op != "Clip" else [])
        if op == "Clip":
            ins += [f"k{i}lo", f"k{i}hi"]
            inits += [init(f"k{i}lo", np.float32(const[0])), init(f"k{i}hi", np.float32(const[1]))]
        elif const is not None:
            inits.append(init(f"k{i}", np.float32(const)))
        out = "y" if i == len(ops) - 1 else f"v{i}"
        nodes.append(helper.make_node(op, ins, [out]))
        value = out
    return build(nodes, [("x", ["N", 5])], [("y", ["N", 5])], inits, opset=13)


@pytest.mark.parametrize(
    "rounding,clip,ops,levels,shift,top",
    [
        ("Round", (0, 8), [("Div", 4.0)], 8, 0.5, 2.0),  # round half to even: the ties are single points
        ("Floor", (0, 4), [("Mul", 0.25)], 4, 0.0, 1.0),  # v0 = 0's staircase (ClipFloor)
        ("Ceil", None, [("Clip", (0, 3)), ("Div", 4.0)], 3, 1.0, 0.75),
        ("Floor", None, [("Relu", None), ("Min", 1.0)], 1, 0.75, 1.0),  # a binary step at x = ¼
    ],
)
def test_other_staircases_are_read_with_their_levels_and_shift(rounding, clip, ops, levels, shift, top):
    model = _chain(ops, rounding, clip)
    graph, _ = _rewritten(model)
    (site,) = graph.nodes[-1:]
    assert (site.op, site.attrs["levels"], site.attrs["shift"]) == ("clip", levels, shift)
    assert site.attrs["max"] == pytest.approx(top, rel=1e-6)
    assert len(graph.nodes) == 1  # Mul by 4 included: the staircase is of the graph input
    x = rand([16, 5], 2, -1, 2)
    (ann,) = run_ort(model, x)
    # the site is the ANN's staircase with its rounding dropped: equal off the steps' edges
    clipped = np.clip(x, 0, top)
    assert float(np.abs(clipped - ann).max()) <= top / levels + 1e-6


@pytest.mark.parametrize("v0", ["half", "zero"])
@pytest.mark.parametrize(
    "rounding,clip,ops,levels,shift",
    [("Floor", (0, 4), [("Mul", 0.25)], 4, 0.0), ("Round", (0, 8), [("Div", 4.0)], 8, 0.5)],
)
def test_the_neuron_starts_where_the_trained_staircase_says(rounding, clip, ops, levels, shift, v0):
    """A staircase's shift δ sets the neuron's start, δ·θ, whatever ``--v0`` says: floor(4x)/4
    (δ = 0) and round(8x)/8 (δ = ½) are each computed exactly at T = L from a constant input."""
    model = _chain(ops, rounding, clip)
    x = rand([64, 5], 5, -0.5, 2.5)
    (ann,) = run_ort(model, x)
    compiled = snnc.compile(model, x, timesteps=levels, v0=v0)
    (neuron,) = compiled.graph.find("neuron")
    setting_shift = 0.5 if v0 == "half" else 0.0
    assert ("v_init" in neuron.params) == (shift != setting_shift)
    np.testing.assert_allclose(compiled.run(x, timesteps=levels), ann, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "rounding,clip,ops",
    [
        ("Floor", None, [("Div", 4.0)]),  # unbounded: no top
        ("Round", (-4, 4), [("Div", 4.0)]),  # signed: negative inputs give negative outputs
        ("Floor", None, [("Mul", 2.0), ("Clip", (0, 5))]),  # levels 0, 2, 4, 5: not uniform
    ],
)
def test_non_staircases_are_left_as_they_are(rounding, clip, ops):
    graph, ctx = _rewritten(_chain(ops, rounding, clip))
    assert graph.find(rounding.lower())
    assert not [n for n in graph.nodes if n.attrs.get("levels")]
    assert "quantized_activations" not in ctx.report


@pytest.mark.parametrize("op,const", [("Mul", -0.5), ("Div", 8.0)])
def test_a_scale_a_neuron_cannot_take_stays_a_layer_after_it(op, const):
    """floor(clip(4x, 0, 4))·(−½) is no staircase of x (decreasing), and round(clip(4x, 0, 8))/8
    rises 1/8 per step of 1/4 (a gain); each is a staircase of 4x, from 0 to 4 or 8, scaled."""
    model = _chain([(op, const)], "Floor" if op == "Mul" else "Round", (0, 4) if op == "Mul" else (0, 8))
    graph, _ = _rewritten(model)
    assert [n.op for n in graph.nodes] == ["mul", "clip", op.lower()]
    assert graph.nodes[1].attrs["levels"] == graph.nodes[1].attrs["max"] == (4 if op == "Mul" else 8)


def test_a_staircase_read_twice_keeps_its_value_for_both_readers():
    nodes = [
        helper.make_node("Mul", ["x", "four"], ["m"]),
        helper.make_node("Clip", ["m", "lo", "hi"], ["c"]),
        helper.make_node("Floor", ["c"], ["f"]),
        helper.make_node("Div", ["f", "four"], ["q"]),
        helper.make_node("Add", ["q", "q"], ["y"]),
        helper.make_node("Neg", ["q"], ["z"]),
    ]
    inits = [init("four", np.float32(4.0)), init("lo", np.float32(0)), init("hi", np.float32(4))]
    model = build(nodes, [("x", ["N", 5])], [("y", ["N", 5]), ("z", ["N", 5])], inits, opset=13)
    graph, _ = _rewritten(model)
    (site,) = [n for n in graph.nodes if n.attrs.get("levels")]
    assert site.outputs == ["q"] and site.attrs["levels"] == 4
    assert [n.op for n in graph.nodes] == ["clip", "add", "neg"]


def test_back_to_back_staircases_are_read_as_their_composition(tmp_path):
    """QCFS(4, λ=1) then QCFS(2, λ=1) with nothing between compose to one staircase of x, with
    2 levels rising at x = ⅛ and ⅝ (δ = ¾). Once the first is read, the second's chain takes its
    site in: the probe must run that site with its rounding, not as the plain clip it executes as."""
    path = _export(nn.Sequential(QCFS(4, init=1.0), QCFS(2, init=1.0)), tmp_path / "m.onnx", False)
    graph, ctx = _rewritten(path)
    (site,) = graph.nodes
    assert (site.op, site.attrs["levels"], site.attrs["shift"], site.attrs["max"]) == ("clip", 2, 0.75, 1.0)
    assert ctx.report["quantized_activations"] == {"count": 1, "levels": [2]}
    x = rand([64, 1, 6, 6], 3, -0.5, 1.5)
    (ann,) = run_ort(onnx.load(str(path)), x)
    np.testing.assert_array_equal(ann, 0.5 * np.clip(np.floor(2 * x + 0.75), 0, 2))
    # the neuron starts at ¾θ: at T = 2 it computes the composition
    np.testing.assert_allclose(snnc.compile(str(path), x, timesteps=2).run(x, timesteps=2), ann, rtol=0, atol=1e-6)


def test_channelwise_and_every_threshold_mode_keep_the_trained_top(tmp_path):
    path = _export(_one_layer(QCFS(4, init=0.7)), tmp_path / "m.onnx", False)
    x = rand([32, 1, 6, 6], 3, -1, 1)
    for options in ({"threshold": "max"}, {"threshold": "mse"}, {"channelwise": True}):
        (neuron,) = snnc.compile(str(path), x, timesteps=4, **options).graph.find("neuron")
        assert torch.allclose(neuron.params["theta"], torch.tensor(0.7)), options


def test_cli_inspect_and_compile_say_what_the_staircases_became(tmp_path, capsys):
    path = _export(_one_layer(QCFS(4, init=1.0)), tmp_path / "m.onnx", False)
    assert snnc_main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "quantization-aware model: 1 trained 4-level activations become neurons" in out
    assert "analog" not in out.split("\n\n")[-1].split("spiking:")[0]  # no Floor island left
    assert snnc_main(["inspect", str(path), "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)["totals"]
    assert totals["quantized_activations"] == {"count": 1, "levels": [4]}
    np.savez(tmp_path / "calib.npz", x=rand([16, 1, 6, 6], 4, -1, 1))
    out_path = tmp_path / "m.snn.onnx"
    assert snnc_main(["compile", str(path), "--calib", str(tmp_path / "calib.npz"), "-o", str(out_path)]) == 0
    assert "1 trained 4-level activations" in capsys.readouterr().out
    (neuron,) = snnc.load(out_path).graph.find("neuron")  # the artifact keeps the trained θ
    assert float(neuron.params["theta"]) == pytest.approx(1.0)


def test_qcfs_module_forward_and_straight_through_gradient():
    act = QCFS(4, init=2.0)
    x = torch.tensor([-1.0, 0.01, 0.24, 0.26, 0.74, 0.76, 1.9, 2.5, 9.0], requires_grad=True)
    y = act(x)
    expected = 2.0 * torch.clamp(torch.floor(x.detach() * 4 / 2.0 + 0.5) / 4, 0, 1)
    assert torch.equal(y.detach(), expected)
    y.sum().backward()
    # inside (0, λ) the floor passes the gradient through: dy/dx = λ·(L/λ)/L = 1; outside the clamp stops it
    assert x.grad.tolist() == [0, 1, 1, 1, 1, 1, 1, 0, 0]
    assert act.top.grad is not None and float(act.top.grad) != 0


def test_use_qcfs_replaces_every_relu_module():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4), nn.ReLU6()), nn.Linear(4, 2))
    assert use_qcfs(net, levels=8, init=3.0) is net
    acts = [m for m in net.modules() if isinstance(m, QCFS)]
    assert len(acts) == 2 and all(a.levels == 8 and float(a.top) == 3.0 for a in acts)
    assert not [m for m in net.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    with pytest.raises(OptionError, match="no nn.ReLU"):
        use_qcfs(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(OptionError, match="levels"):
        QCFS(0)
    with pytest.raises(OptionError, match="init"):
        QCFS(4, init=0.0)


@pytest.fixture(scope="module")
def digits_resnets(tmp_path_factory):
    """The digits ResNet trained with ReLUs and with QCFS(4) (10 epochs each), exported."""
    from examples.workloads import DigitsResNet, digits, export_onnx, train_classifier

    train, test = digits()
    out = tmp_path_factory.mktemp("qcfs")
    paths = {}
    for name in ("relu", "qcfs"):
        torch.manual_seed(0)
        net = DigitsResNet(width=8)
        if name == "qcfs":
            use_qcfs(net, levels=4)  # λ from 2.0 (the default)
        train_classifier(net, train, epochs=10)
        paths[name] = export_onnx(net, (1, 8, 8), out / f"{name}.onnx")
    return paths, train, test


def test_quantization_aware_resnet_converts_at_few_timesteps(digits_resnets):
    """The point of QCFS: at T = 2 and 4 its SNN keeps what the ReLU network's loses. Measured
    under ATEN_CPU_CAPABILITY default / avx2 / avx512 (539 test digits): ReLU 49.4 / 52.5 / 53.6 %
    at T=2 and 74.0 / 73.1 / 76.8 % at T=4; QCFS 87.8 / 89.8 / 89.1 % and 93.9 / 95.6 / 95.2 %,
    its ANN (as converted) 97.2 / 96.7 / 97.8 %."""
    paths, train, test = digits_resnets
    acc = {}
    for name, path in paths.items():
        model = snnc.compile(str(path), train.x[:256], timesteps=4)
        acc[name] = model.evaluate(test.x, test.y, timesteps=[2, 4, 32])
    relu, qcfs = acc["relu"]["snn_accuracy"], acc["qcfs"]["snn_accuracy"]
    assert qcfs["4"] >= relu["4"] + 0.10
    assert qcfs["2"] >= relu["2"] + 0.20
    assert qcfs["4"] >= acc["qcfs"]["ann_accuracy"] - 0.06


def test_benchmark_writes_every_variant(tmp_path, monkeypatch, capsys):
    """benchmarks/quantization_aware.py end to end at 1 epoch: a row per variant, its staircases
    read with their levels (the ReLU row has none), and the table printed."""
    from benchmarks import quantization_aware as bench

    monkeypatch.setattr(bench, "EPOCHS", 1)
    assert bench.main(["--workloads", "digits_cnn", "--timesteps", "1,4", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "quantization_aware.json").read_text())
    assert result["machine"]["cpu"] and result["machine"]["torch"]  # figures change with the CPU
    rows = result["workloads"]["digits_cnn"]["rows"]
    variants = [label for label, _, _ in bench.VARIANTS]
    assert sorted(rows) == sorted(variants + list(bench.CALIBRATED.values()))
    assert set(rows["QCFS L=4 + advanced"]["snn"]) == {"1", "4"}
    assert rows["QCFS L=4 + advanced"]["quantized_activations"] == {"count": 3, "levels": [4]}
    assert rows["ReLU"]["quantized_activations"] is None
    assert rows["QCFS L=8"]["quantized_activations"] == {"count": 3, "levels": [8]}
    assert set(rows["QCFS L=4"]["snn"]) == {"1", "4"}
    assert "QCFS L=4" in capsys.readouterr().out
    assert bench.main(["--workloads", "nope", "--out", str(tmp_path)]) == 2
