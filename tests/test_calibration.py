"""Layer-wise calibration: each pass against its formula, pipelines, determinism, diagnostics."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import snncompiler as snnc
from snncompiler.data import Dataset
from snncompiler.passes import PassContext, bias_calibration, potential_calibration, weight_calibration
from snncompiler.passes.layerwise import LayerwiseSimulator, ann_targets, channel_mean

T = 4


@pytest.fixture(scope="module")
def setup(small_digits_cnn):
    return small_digits_cnn


def _errors(compiled, x, ctx):
    """Per neuron: per-channel mean rate error E[s̄ − a] and per-neuron error, measured now
    with the plain spiking runtime (independent of the passes' incremental simulator)."""
    out = {}
    runner = compiled.runner(backend="reference")
    values = [n.outputs[0] for n in compiled.graph.find("neuron")]
    targets = ann_targets(compiled.ann_graph, x, values)
    rates = runner.rates(x, T, values)
    for neuron, v in zip(compiled.graph.find("neuron"), values):
        s, a = rates[v], targets[v]
        out[neuron.name] = (channel_mean(s - a), (s - a).mean(0))
    return out


def _ctx(compiled, calib, **opts):
    ctx = PassContext(
        options={**compiled.options, "timesteps": T, "quiet": True, "layer_samples": 128, **opts}, calib=calib
    )
    ctx.report["ann_graph"] = compiled.ann_graph
    return ctx


def test_bias_calibration_zeroes_mean_error_of_first_layer(setup):
    path, train, _ = setup
    calib = Dataset(train.x[:128])
    compiled = snnc.compile(path, calib, timesteps=T, threshold="mse")
    ctx = _ctx(compiled, calib)
    x = torch.from_numpy(calib.x)
    first = compiled.graph.find("neuron")[0].name
    before = _errors(compiled, x, ctx)[first][0]
    compiled.graph = bias_calibration.run(compiled.graph.copy(), ctx)
    after = _errors(compiled, x, ctx)[first][0]
    # one correction step on a floor nonlinearity: the mean error shrinks to a small residue
    assert float(after.abs().mean()) <= 0.3 * float(before.abs().mean())


def test_potential_calibration_removes_planted_offset(setup):
    path, train, _ = setup
    calib = Dataset(train.x[:128])
    compiled = snnc.compile(path, calib, timesteps=T, threshold="mse")
    ctx = _ctx(compiled, calib)
    x = torch.from_numpy(calib.x)
    first = compiled.graph.find("neuron")[0]
    theta = float(first.params["theta"].mean())
    shape = ann_targets(compiled.ann_graph, x[:1], [first.outputs[0]])[first.outputs[0]].shape[1:]
    first.params["v_init"] = -0.8 * theta * torch.ones(shape)  # planted: starts far below θ/2
    planted = float(_errors(compiled, x, ctx)[first.name][1].abs().mean())
    compiled.graph = potential_calibration.run(compiled.graph.copy(), ctx)
    fixed = float(_errors(compiled, x, ctx)[first.name][1].abs().mean())
    assert fixed <= 0.3 * planted


def test_weight_calibration_lowers_each_layer_loss(setup):
    path, train, _ = setup
    calib = Dataset(train.x[:128])
    compiled = snnc.compile(path, calib, timesteps=T, threshold="mse")
    ctx = _ctx(compiled, calib, iterations=60, lr=1e-3)
    weight_calibration.run(compiled.graph.copy(), ctx)
    losses = ctx.report["weight_calibration_loss"]
    assert set(losses) == {n.name for n in compiled.graph.find("neuron")}
    assert all(after <= before for before, after in losses.values())
    # the first layer sees the exact analog input, so only quantisation is left for it to fit;
    # every deeper layer inherits upstream spiking error, which the fit must reduce
    deeper = [losses[n.name] for n in compiled.graph.find("neuron")[1:]]
    assert all(after < 0.99 * before for before, after in deeper)


def test_simulator_matches_the_runtime(setup):
    path, train, _ = setup
    compiled = snnc.compile(path, Dataset(train.x[:128]), timesteps=T)
    x = torch.from_numpy(train.x[:64])
    values = [n.outputs[0] for n in compiled.graph.find("neuron")]
    expected = compiled.runner(backend="reference").rates(x, T, values)
    sim = LayerwiseSimulator(compiled.graph, x, T, backend="reference")
    for neuron in sim.neurons():
        torch.testing.assert_close(sim.mean(neuron.outputs[0]), expected[neuron.outputs[0]], rtol=0, atol=1e-6)


def test_pipelines_are_deterministic_and_recorded(setup, tmp_path):
    path, train, test = setup
    calib = Dataset(train.x[:128])
    a = snnc.compile(path, calib, timesteps=T, calibration="advanced", iterations=20, seed=3, quiet=True)
    b = snnc.calibrate(path, calib, timesteps=T, pipeline="advanced", iterations=20, seed=3, quiet=True)
    for na, nb in zip(a.graph.nodes, b.graph.nodes):
        for key in na.params:
            assert torch.equal(na.params[key], nb.params[key])
    a.save(tmp_path / "a.snn.onnx")
    loaded = snnc.load(tmp_path / "a.snn.onnx")
    assert loaded.settings()["calibration"] == "advanced" and loaded.settings()["timesteps"] == T
    np.testing.assert_array_equal(a.run(test.x[:20], T), loaded.run(test.x[:20], T))


def test_light_not_worse_than_none_on_digits(setup):
    """Calibration is for the T it runs at: calibrate at each T, score that T.

    Bounds sized from the spread measured across instruction sets (ATEN_CPU_CAPABILITY=
    default/avx2/avx512 change the trained weights): light − none was +12.8…+16.3 points at
    T=2, −0.56…+1.1 at T=4 and 0 at T=8 (the guard kept the uncalibrated model). At T=2 the
    gain is the claim; at T=4 and 8 the two agree to within ±1.1 points (6 of 539 images) of
    noise, so "not worse" allows 1.5 points there."""
    path, train, test = setup
    calib = Dataset(train.x[:256])
    for t, least_gain in ((2, 0.05), (4, -0.015), (8, -0.015)):
        none = snnc.compile(path, calib, timesteps=t).evaluate(test.x, test.y, [t])["snn_accuracy"][str(t)]
        light = snnc.compile(path, calib, timesteps=t, calibration="light", quiet=True).evaluate(test.x, test.y, [t])[
            "snn_accuracy"
        ][str(t)]
        assert light >= none + least_gain, (t, light, none)


def test_eval_layers_cli(setup, tmp_path):
    path, train, test = setup
    np.savez(tmp_path / "calib.npz", x=train.x[:128])
    np.savez(tmp_path / "test.npz", x=test.x[:50], y=test.y[:50])
    cli = [sys.executable, "-m", "snncompiler.cli"]
    out = tmp_path / "m.snn.onnx"
    subprocess.run(
        cli
        + [
            "compile",
            str(path),
            "--calib",
            str(tmp_path / "calib.npz"),
            "-o",
            str(out),
            "--timesteps",
            "4",
            "--calibration",
            "light",
        ],
        check=True,
        capture_output=True,
    )
    proc = subprocess.run(
        cli
        + [
            "eval",
            str(out),
            "--data",
            str(tmp_path / "test.npz"),
            "--timesteps",
            "4",
            "--layers",
            "--reference",
            str(path),
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    layers = json.loads(proc.stdout)["layers"]
    assert len(layers) == 3
    for row in layers:
        assert row["clipping_error"] >= 0 and row["flooring_error"] >= 0 and 0 <= row["firing_rate"] <= 1
        assert -1 <= row["cosine"] <= 1
    assert layers[0]["cosine"] > 0.9


def test_calibration_kept_only_when_it_helps(setup):
    path, train, test = setup
    calib = Dataset(train.x[:128])
    for t in (1, 4):
        model = snnc.compile(path, calib, timesteps=t, calibration="light", quiet=True)
        check = model.report["calibration_check"]
        assert 0 <= check["calibrated_agreement"] <= 1 and 0 <= check["uncalibrated_agreement"] <= 1
        if check["calibrated_agreement"] > check["uncalibrated_agreement"]:
            assert check["kept"] == "calibrated"
        if check["calibrated_agreement"] < check["uncalibrated_agreement"]:
            assert check["kept"] == "uncalibrated"
        if check["kept"] == "uncalibrated":  # then it is exactly the plain conversion
            plain = snnc.compile(path, calib, timesteps=t)
            np.testing.assert_array_equal(model.run(test.x[:16], t), plain.run(test.x[:16], t))
        assert not check["held_out"] and check["samples"] == 128  # nothing left over: the fitted batch


def test_calibration_check_scores_held_out_samples(setup):
    """With more calibration samples than the layer-wise passes fit, the check scores the rest."""
    path, train, _ = setup
    from snncompiler.options import DEFAULT_LAYER_SAMPLES

    model = snnc.compile(
        path, Dataset(train.x[: DEFAULT_LAYER_SAMPLES + 50]), timesteps=4, calibration="light", quiet=True
    )
    check = model.report["calibration_check"]
    assert check["held_out"] and check["samples"] == 50


def test_calibration_check_scores_dense_outputs_per_pixel(tmp_path):
    """For a segmentation output [N, C, H, W] the check's agreement is the per-pixel class
    agreement with the ANN (onnxruntime), not an argmax over the image's last axis."""
    import torch.nn as nn

    from examples.workloads import export_onnx
    from snncompiler.formats.onnx.ort import OrtModel

    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 1))
    path = export_onnx(net, (1, 6, 6), tmp_path / "seg.onnx")
    x = np.random.default_rng(4).normal(size=(16, 1, 6, 6)).astype(np.float32)
    model = snnc.compile(str(path), x, timesteps=2, calibration="light", quiet=True)
    check = model.report["calibration_check"]
    assert check["samples"] == 16 and not check["held_out"]
    ann = OrtModel(path)(x)
    expected = float((model.run(x, 2).argmax(1) == ann.argmax(1)).mean())
    agreement = check["calibrated_agreement" if check["kept"] == "calibrated" else "uncalibrated_agreement"]
    assert agreement == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "settings", [dict(neuron="lif"), dict(neuron="lif", tau=4.0, v0="zero"), dict(reset="hard", v0="zero")]
)
def test_constant_input_rate_is_the_neurons_own_rate(setup, settings):
    """What weight calibration fits a LIF against: the rate of the neuron itself (leak, reset and
    a hard reset's gain as the runtime runs them) on a constant current, checked against the
    PyTorch reference kernel run T steps from the neuron's start."""
    from snncompiler.ir.neuron import NeuronSpec
    from snncompiler.kernels.reference import neuron_multistep_reference

    path, train, _ = setup
    compiled = snnc.compile(path, Dataset(train.x[:128]), timesteps=T, **settings)
    neuron = compiled.graph.find("neuron")[0]
    assert weight_calibration.fits_if_rate(neuron) == (settings.get("neuron") != "lif")
    theta = neuron.params["theta"]
    current = torch.rand((16, 8, 8, 8), generator=torch.Generator().manual_seed(1)) * 2.5 * float(theta.max())
    sim = LayerwiseSimulator(compiled.graph, torch.from_numpy(train.x[:16]), T, backend="reference")
    got = sim.constant_input_rate(neuron, current)
    spec = NeuronSpec.from_attrs(neuron.attrs)
    gain = neuron.params.get("gain", torch.tensor(1.0))
    drive = (current * gain.reshape(-1, 1, 1) if gain.dim() else current * gain).expand((T,) + current.shape)
    th = theta.reshape(-1, 1, 1) if theta.dim() else theta
    spikes, _ = neuron_multistep_reference(
        drive.contiguous(), spec.initial_potential(th), th, decay=spec.decay, reset=spec.reset
    )
    torch.testing.assert_close(got, spikes.mean(0), rtol=0, atol=1e-6)
    silent, saturated = got.eq(0).float().mean(), got.ge(th * (1 - 1e-6)).float().mean()
    assert 0 < silent < 1 and 0 < saturated < 1  # the currents span silence to saturation


def test_weight_calibration_fits_the_lif_rate(setup):
    """For a LIF the layer loss is measured on the LIF's rate: on the first layer, driven by the
    constant analog input, it equals the error of the spiking runtime's own rates."""
    path, train, _ = setup
    calib = Dataset(train.x[:128])
    compiled = snnc.compile(path, calib, timesteps=T, threshold="mse", neuron="lif", calibration="none")
    ctx = _ctx(compiled, calib, iterations=60, lr=1e-3)
    x = torch.from_numpy(calib.x)
    first = compiled.graph.find("neuron")[0]
    rate = compiled.runner(backend="reference").rates(x, T, [first.outputs[0]])[first.outputs[0]]
    target = ann_targets(compiled.ann_graph, x, [first.outputs[0]])[first.outputs[0]]
    runtime_loss = float(((target - rate) ** 2).sum(1).mean())
    weight_calibration.run(compiled.graph.copy(), ctx)
    losses = ctx.report["weight_calibration_loss"]
    assert losses[first.name][0] == pytest.approx(runtime_loss, rel=1e-4)
    assert all(after < before for before, after in losses.values())


def test_advanced_calibration_of_lif_runs_bias_weight_bias(setup):
    """A LIF's initial charge leaks away, so the advanced pipeline corrects its mean error by
    bias (before and after fitting the weights), not by initial potential."""
    from snncompiler.compiler import LEAKY_ADVANCED, PIPELINES, calibration_passes
    from snncompiler.options import CompileOptions

    lif = CompileOptions(neuron="lif", calibration="advanced").as_dict()
    assert calibration_passes(lif) == LEAKY_ADVANCED == [bias_calibration, weight_calibration, bias_calibration]
    assert calibration_passes({**lif, "neuron": "if"}) == PIPELINES["advanced"]
    path, train, _ = setup
    calib = Dataset(train.x[:256])
    model = snnc.compile(path, calib, timesteps=T, neuron="lif", calibration="advanced", iterations=60, quiet=True)
    assert model.report["calibration_check"]["kept"] == "calibrated"
    assert all("v_init" not in n.params for n in model.graph.find("neuron"))
    assert model.report["weight_calibration_loss"] and model.report["bias_calibration"]


def test_lif_is_bias_calibrated_by_default_and_advanced_improves_it(setup):
    """A LIF network loses most of its rates to the leak uncalibrated, so it gets the light
    pipeline by default. Measured on this fixture at T=8 under ATEN_CPU_CAPABILITY=default,
    avx2 and avx512: uncalibrated 12.4–15.0 %, light 93.9–95.4 %, advanced 96.8–97.6 % (62.7 %
    when advanced ran weight + potential calibration on an IF's rate model); the floors leave
    margin below those spreads."""
    path, train, test = setup
    calib = Dataset(train.x[:256])

    def accuracy(**kwargs):
        model = snnc.compile(path, calib, timesteps=8, neuron="lif", quiet=True, **kwargs)
        return model, model.evaluate(test.x, test.y, [8])["snn_accuracy"]["8"]

    default, light = accuracy()
    _, none = accuracy(calibration="none")
    _, advanced = accuracy(calibration="advanced")
    assert default.options["calibration"] == "light" and default.report["calibration_check"]["kept"] == "calibrated"
    assert none < 0.3 and light >= 0.88 and advanced >= 0.93, (none, light, advanced)
