"""Synaptic operations: the event-driven counts against an explicit step-by-step simulation,
the dense MACs against counting taps by hand, and the input classification."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import snncompiler as snnc
from examples.workloads import export_onnx
from snncompiler.analysis.metrics import input_kinds

T = 12


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():  # sparse synapses: whole input columns and single weights
        net[2].weight[:, 1] = 0
        net[2].weight[0, 3] = 0
        net[4].weight[2, :2] = 0
    path = export_onnx(net, (6,), tmp_path_factory.mktemp("sops") / "mlp.onnx")
    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    return snnc.compile(str(path), x, timesteps=T, quiet=True), x


def _spikes(current, theta):
    """IF neuron, soft reset, v0 = θ/2, one step at a time: the oracle for the runtime's spikes."""
    v = torch.full_like(current[0], 0.5) * theta
    out = []
    for i in current:
        v = v + i
        s = (v >= theta).float()
        v = v - theta * s
        out.append(s)
    return torch.stack(out)


def test_counts_match_step_by_step_simulation(mlp):
    model, x = mlp
    lin = model.graph.find("linear")
    neurons = model.graph.find("neuron")
    assert len(lin) == 3 and len(neurons) == 2 and all("v_init" not in n.params for n in neurons)
    xt = torch.from_numpy(x)
    current = F.linear(xt, lin[0].params["weight"], lin[0].params["bias"]).expand(T, -1, -1)
    s1 = _spikes(current, neurons[0].params["theta"])
    theta1 = neurons[0].params["theta"]
    current2 = F.linear(s1 * theta1, lin[1].params["weight"], lin[1].params["bias"])
    s2 = _spikes(current2, neurons[1].params["theta"])
    expect = []
    for s, w in ((s1, lin[1].params["weight"]), (s2, lin[2].params["weight"])):
        fan_out = (w != 0).sum(0).float()  # synapses leaving each input neuron
        expect.append(float((s * fan_out).sum()) / len(x))
    res = model.synaptic_operations(x, T, batch_size=16)  # batches must add up
    rows = res["layers"]
    assert [r["input"] for r in rows] == ["static", "spikes", "spikes"]
    assert rows[1]["ops"] == pytest.approx(expect[0], rel=1e-5)
    assert rows[2]["ops"] == pytest.approx(expect[1], rel=1e-5)
    assert expect[0] > 0 and expect[1] > 0
    # the static first layer is computed once: its nonzero inputs times their synapses
    assert rows[0]["ops"] == pytest.approx(float(((xt != 0).float() * 8).sum()) / len(x))
    assert res["snn_acs"] == pytest.approx(expect[0] + expect[1], rel=1e-5)
    assert res["ann_macs"] == 6 * 8 + 8 * 5 + 5 * 3
    assert res["energy_pj"]["snn"] == pytest.approx(rows[0]["ops"] * 4.6 + res["snn_acs"] * 0.9, rel=1e-6)
    int8 = res["energy_presets_pj"]["int8"]
    assert int8["snn"] == pytest.approx(rows[0]["ops"] * 0.23 + res["snn_acs"] * 0.03, rel=1e-6)
    assert int8["ann"] == pytest.approx(res["ann_macs"] * 0.23)
    assert res["energy_presets_pj"]["fp32"] == res["energy_pj"]
    assert rows[1]["weight_density"] == pytest.approx(1 - (5 + 1) / 40)


def test_dense_macs_exclude_padding_and_follow_stride(tmp_path):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1))
    path = export_onnx(net, (2, 7, 7), tmp_path / "conv.onnx")
    x = np.random.default_rng(1).random((8, 2, 7, 7), dtype=np.float32)
    model = snnc.compile(str(path), x, timesteps=4, quiet=True)

    def taps(size, out, stride):  # valid kernel taps summed over output positions, per axis
        return sum(sum(0 <= o * stride - 1 + k < size for k in range(3)) for o in range(out))

    rows = model.synaptic_operations(x, 4)["layers"]
    assert rows[0]["dense_macs"] == 3 * 2 * taps(7, 4, 2) ** 2
    assert rows[1]["dense_macs"] == 4 * 3 * taps(4, 4, 1) ** 2
    assert rows[0]["ops"] == rows[0]["dense_macs"]  # uniform(0, 1) inputs are never exactly 0
    assert 0 < rows[1]["ops_per_step"] < rows[1]["dense_macs"]


def test_input_kinds_follow_spikes_through_shape_ops_only(tmp_path):
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64, 3),
    )
    path = export_onnx(net, (1, 8, 8), tmp_path / "cnn.onnx")
    x = np.random.default_rng(2).random((8, 1, 8, 8), dtype=np.float32)
    model = snnc.compile(str(path), x, timesteps=4, quiet=True)
    kinds = input_kinds(model.graph)
    by_op = {n.op: kinds[n.inputs[0]] for n in model.graph.nodes if n.op in ("avgpool", "flatten", "linear")}
    assert by_op == {"avgpool": "spikes", "flatten": "spikes", "linear": "spikes"}
    convs = model.graph.find("conv")
    assert [kinds[c.inputs[0]] for c in convs] == ["static", "analog"]  # pooled spikes are fractions
    rows = model.synaptic_operations(x, 4)["layers"]
    assert rows[1]["input"] == "analog" and rows[1]["ops"] > 0
    assert model.synaptic_operations(x, 4)["snn_macs"] == pytest.approx(rows[0]["ops"] + rows[1]["ops"])


def test_event_rates_count_nonzero_steps(mlp):
    model, x = mlp
    runner = model.runner()
    name = model.graph.find("neuron")[0].outputs[0]
    rates = runner.event_rates(torch.from_numpy(x), T, [name])[name]
    sums = runner.rates(torch.from_numpy(x), T, [name])[name]
    theta = model.graph.find("neuron")[0].params["theta"]
    # spikes are 0 or θ, so the rate of nonzero steps is the mean output over θ
    assert torch.allclose(rates, sums / theta, atol=1e-6)
    assert 0 < float(rates.mean()) < 1


def test_cli_eval_sops(mlp, tmp_path, capsys):
    import json

    from snncompiler.cli.main import main as snnc_main
    from snncompiler.data import save_npz

    model, x = mlp
    artifact, data = tmp_path / "m.snn.onnx", tmp_path / "d.npz"
    model.save(artifact)
    save_npz(data, x, np.zeros(len(x), dtype=np.int64))
    assert snnc_main(["eval", str(artifact), "--data", str(data), "--timesteps", f"4,{T}", "--sops", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    expect = model.synaptic_operations(x, T)
    assert [r["ops"] for r in res["synaptic_ops"]["layers"]] == pytest.approx([r["ops"] for r in expect["layers"]])
    assert res["synaptic_ops"]["energy_pj"] == pytest.approx(expect["energy_pj"])
    assert snnc_main(["eval", str(artifact), "--data", str(data), "--sops"]) == 0
    assert "energy SNN/ANN" in capsys.readouterr().out
    ann = tmp_path / "ann.onnx"
    export_onnx(nn.Sequential(nn.Linear(6, 3)), (6,), ann)
    assert snnc_main(["eval", str(ann), "--data", str(data), "--sops"]) == 2
    assert "--sops: only for spiking models" in capsys.readouterr().err


def test_spikes_scaled_by_a_constant_stay_spikes(tmp_path):
    """A NIR import turns θ·s back into s with a `mul` by 1/θ: the next layer still reads events."""
    nir = pytest.importorskip("nir")
    graph = nir.NIRGraph(
        nodes={
            "in": nir.Input(input_type={"input": np.array([4])}),
            "fc1": nir.Affine(weight=np.ones((3, 4), np.float32), bias=np.zeros(3, np.float32)),
            "if1": nir.IF(r=np.full(3, 1e4), v_threshold=np.ones(3), v_reset=np.zeros(3)),
            "fc2": nir.Affine(weight=np.ones((2, 3), np.float32), bias=np.zeros(2, np.float32)),
            "out": nir.Output(output_type={"output": np.array([2])}),
        },
        edges=[("in", "fc1"), ("fc1", "if1"), ("if1", "fc2"), ("fc2", "out")],
    )
    nir.write(str(tmp_path / "m.nir"), graph)
    model = snnc.load(tmp_path / "m.nir")
    assert input_kinds(model.graph)[model.graph.find("linear")[1].inputs[0]] == "spikes"
    rows = model.synaptic_operations(np.full((2, 4), 0.3, np.float32), 10)["layers"]
    assert rows[1]["input"] == "spikes" and rows[1]["ops"] > 0


@pytest.mark.parametrize("mode, kind", [("nearest", "spikes"), ("bilinear", "analog")])
def test_upsampled_spikes_stay_spikes_only_when_nearest(tmp_path, mode, kind):
    """A nearest upsample repeats each spike (a U-Net decoder's conv still reads events, ACs);
    a bilinear one blends neighbours into fractions (MACs)."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2, mode=mode), nn.Conv2d(4, 2, 3, padding=1)
    )
    path = export_onnx(net, (1, 6, 6), tmp_path / "up.onnx")
    x = np.random.default_rng(3).random((8, 1, 6, 6), dtype=np.float32)
    model = snnc.compile(str(path), x, timesteps=4, quiet=True)
    assert [n.op for n in model.graph.nodes if n.op == "resize"] == ["resize"]
    kinds = input_kinds(model.graph)
    assert kinds[model.graph.find("resize")[0].outputs[0]] == kind
    sops = model.synaptic_operations(x, 4)
    rows = sops["layers"]
    assert rows[1]["input"] == kind and rows[1]["ops"] > 0
    if kind == "spikes":  # the decoder conv's events are accumulates; only the first conv multiplies
        assert sops["snn_acs"] == pytest.approx(rows[1]["ops"])
        assert sops["snn_macs"] == pytest.approx(rows[0]["ops"])
    else:
        assert sops["snn_acs"] == 0
        assert sops["snn_macs"] == pytest.approx(rows[0]["ops"] + rows[1]["ops"])
