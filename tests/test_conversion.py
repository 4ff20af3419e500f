"""Conversion core: SpikingJelly cross-check, ANN-mode exactness, one run for every T, artifact round trip."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import snncompiler as snnc
from examples.workloads import DigitsCNN, digits, export_onnx, train_classifier
from snncompiler.data import Dataset


@pytest.fixture(scope="module")
def digits_data():
    return digits()


@pytest.fixture(scope="module")
def cnn(digits_data, tmp_path_factory):
    train, _ = digits_data
    torch.manual_seed(0)
    model = train_classifier(DigitsCNN(width=8), train, epochs=8)
    return model, export_onnx(model, (1, 8, 8), tmp_path_factory.mktemp("cnn") / "cnn.onnx")


def test_matches_spikingjelly_per_step(digits_data, tmp_path):
    """IF, soft reset, v0 = 0, per-tensor max thresholds from one shared batch: same outputs at every step."""
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.ann2snn import Converter, RateCodingRecipe

    train, test = digits_data
    torch.manual_seed(1)
    ann = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 16, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )
    train_classifier(ann, train, epochs=5)
    batch = torch.from_numpy(train.x[:128])
    sj = Converter(RateCodingRecipe([(batch, torch.zeros(len(batch)))], mode="Max")).convert(ann)
    x = torch.from_numpy(test.x[:64])
    T = 16
    functional.reset_net(sj)
    with torch.no_grad():
        ref = torch.stack([sj(x) for _ in range(T)])
    path = export_onnx(ann, (1, 8, 8), tmp_path / "ann.onnx")
    model = snnc.compile(path, Dataset(train.x[:128]), threshold="max", v0="zero", neuron="if", reset="soft")
    got = model.runner(backend="reference").run_steps(x, T)
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) <= 1e-5 * max(1.0, float(ref.abs().max()))


def test_ann_mode_reproduces_onnxruntime_when_thresholds_exceed_activations(cnn, digits_data, tmp_path):
    _, path = cnn
    train, test = digits_data
    model = snnc.compile(path, Dataset(train.x), threshold="max")
    for node in model.graph.find("neuron"):
        node.params["theta"] = node.params["theta"] * 4  # calibration saw the training set; test stays below
    model.save(tmp_path / "a.snn.onnx")
    loaded = snnc.load(tmp_path / "a.snn.onnx")
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": test.x})[0]
    got = loaded.ann(test.x)
    assert float(np.abs(got - ref).max()) <= 1e-4 * max(1.0, float(np.abs(ref).max()))


def test_every_t_from_one_run(cnn, digits_data):
    _, path = cnn
    train, test = digits_data
    model = snnc.compile(path, Dataset(train.x[:256]))
    ts = list(range(1, 257))
    result = model.evaluate(test.x[:40], test.y[:40], ts, batch_size=64)
    assert model.last_runner.steps_run == 256  # one batch, simulated for 256 steps exactly once
    assert sorted(int(t) for t in result["snn_accuracy"]) == ts
    single = model.run(test.x[:40], 8)
    np.testing.assert_array_equal(
        single.argmax(1) == test.y[:40], model.run(test.x[:40], 32, checkpoints=[8])[8].argmax(1) == test.y[:40]
    )


def test_chunking_carries_state(cnn, digits_data):
    _, path = cnn
    train, test = digits_data
    model = snnc.compile(path, Dataset(train.x[:256]))
    whole = model.run(test.x[:30], 24, chunk=24)
    chunked = model.run(test.x[:30], 24, chunk=5)
    np.testing.assert_allclose(whole, chunked, rtol=1e-5, atol=1e-5)


def test_artifact_round_trip_bit_exact(cnn, digits_data, tmp_path):
    _, path = cnn
    train, test = digits_data
    for options in (
        {},
        {"channelwise": True, "threshold": "mse", "maxpool": "input"},
        {"neuron": "lif", "tau": 4.0, "reset": "hard", "v0": "zero", "maxpool": "output"},
    ):
        model = snnc.compile(path, Dataset(train.x[:256]), **options)
        out = tmp_path / "m.snn.onnx"
        model.save(out)
        onnx.checker.check_model(onnx.load(str(out)))
        loaded = snnc.load(out)
        assert loaded.settings() == model.settings()
        np.testing.assert_array_equal(model.run(test.x[:32], 16), loaded.run(test.x[:32], 16))
        np.testing.assert_array_equal(model.ann(test.x[:32]), loaded.ann(test.x[:32]))


def test_converted_accuracy_close_to_ann(cnn, digits_data):
    model_t, path = cnn
    train, test = digits_data
    ann_acc = float((model_t(torch.from_numpy(test.x)).argmax(1).numpy() == test.y).mean())
    result = snnc.compile(path, Dataset(train.x[:512])).evaluate(test.x, test.y, [32])
    assert result["snn_accuracy"]["32"] >= ann_acc - 0.01


def test_cli_compile_eval_inspect(cnn, digits_data, tmp_path):
    _, path = cnn
    train, test = digits_data
    np.savez(tmp_path / "calib.npz", x=train.x[:128])
    np.savez(tmp_path / "test.npz", x=test.x[:60], y=test.y[:60])
    cli = [sys.executable, "-m", "snncompiler.cli"]
    out = tmp_path / "m.snn.onnx"
    proc = subprocess.run(
        cli + ["compile", str(path), "--calib", str(tmp_path / "calib.npz"), "-o", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "neuron" in proc.stdout and "p99.9 of" in proc.stdout and "max pooling: rate" in proc.stdout
    proc = subprocess.run(
        cli + ["eval", str(out), "--data", str(tmp_path / "test.npz"), "--timesteps", "1,2,4,8", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(proc.stdout)
    # the one eval --json schema (README): the ANN's keys, null where a key does not apply or was not asked for
    assert set(result) == {
        "model",
        "kind",
        "samples",
        "engine",
        "seconds",
        "snn_accuracy",
        "ann_accuracy",
        "firing_rate",
        "layers",
        "synaptic_ops",
    }
    assert result["kind"] == "snn" and result["layers"] is None and result["synaptic_ops"] is None
    assert list(result["snn_accuracy"]) == ["1", "2", "4", "8"] and result["samples"] == 60
    proc = subprocess.run(cli + ["inspect", str(out)], capture_output=True, text=True, check=True)
    assert "θ=" in proc.stdout and "Neuron" in proc.stdout
    np.savez(tmp_path / "x.npz", x=test.x[:20])
    subprocess.run(
        cli + ["run", str(out), "--input", str(tmp_path / "x.npz"), "-o", str(tmp_path / "y.npz"), "--timesteps", "8"],
        capture_output=True,
        text=True,
        check=True,
    )
    with np.load(tmp_path / "y.npz") as y:
        np.testing.assert_array_equal(y["y"], snnc.load(out).run(test.x[:20], 8))


def test_strict_refuses_analog_islands(tmp_path, digits_data):
    train, _ = digits_data
    ann = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Sigmoid(), nn.Linear(16, 10)).eval()
    path = export_onnx(ann, (1, 8, 8), tmp_path / "sig.onnx")
    with pytest.raises(snnc.SnncError, match="analog island"):
        snnc.compile(path, Dataset(train.x[:64]), strict=True)
    model = snnc.compile(path, Dataset(train.x[:64]))
    assert model.report["analog_islands"]
    # with constant input an analog island on the first layer sees exactly the ANN input
    ref = ann(torch.from_numpy(train.x[:8])).detach().numpy()
    np.testing.assert_allclose(model.run(train.x[:8], 4), ref, rtol=1e-5, atol=1e-5)


def _pool_graph(strategy: str, theta: float):
    from snncompiler.ir import Graph, Node, Value

    nodes = [
        Node(
            "neuron",
            "n",
            ["x"],
            ["s"],
            {"neuron": "if", "tau": 0.0, "reset": "soft", "v0": "zero"},
            {"theta": torch.tensor(theta)},
        ),
        Node(
            "maxpool",
            "p",
            ["s"],
            ["y"],
            {"kernel": [2, 2], "stride": [2, 2], "pads": [0, 0, 0, 0], "spiking": strategy},
        ),
    ]
    return Graph([Value("x", (1, 1, 2, 2))], [Value("y", (1, 1, 1, 1))], nodes, {"x": Value("x", (1, 1, 2, 2))})


@pytest.mark.parametrize("theta", [0.05, 1.0, 20.0])
def test_gated_maxpool_passes_the_most_active_input(theta):
    from snncompiler.runtime.snn import SpikingRunner

    rates = torch.tensor([[[[0.3, 0.9], [0.5, 0.1]]]])  # fraction of θ each input receives per step
    x = rates * theta
    T = 200
    gated = SpikingRunner(_pool_graph("gated", theta), backend="reference").run(x, T)[T]
    output = SpikingRunner(_pool_graph("output", theta), backend="reference").run(x, T)[T]
    # the gated pool settles on the 0.9θ input; the max of spikes fires whenever any input does,
    # so it is never below (and, unless the spike phases happen to nest, above)
    assert abs(float(gated) - 0.9 * theta) <= 3 * theta / T
    assert float(output) >= float(gated) - 1e-6 * theta


def test_firing_rate_counts_spikes_with_per_channel_thresholds(cnn, digits_data):
    """The runtime counts spikes by summing θ·s and dividing by θ; check against counting
    each neuron's spikes from its time-mean output, with per-channel θ of different sizes."""
    _, path = cnn
    train, test = digits_data
    model = snnc.compile(path, Dataset(train.x[:256]), channelwise=True, quiet=True)
    neurons = model.graph.find("neuron")
    assert any(n.params["theta"].numel() > 1 for n in neurons)
    T, x = 12, torch.from_numpy(test.x[:40]).float()
    runner = model.runner()
    means = runner.rates(x, T, [n.outputs[0] for n in neurons])
    spikes = elements = 0.0
    for n in neurons:
        mean = means[n.outputs[0]]  # [B, C, ...] = θ · (count / T)
        theta = n.params["theta"]
        theta = theta.reshape([1, -1] + [1] * (mean.dim() - 2)) if theta.numel() > 1 else theta
        spikes += float((mean * T / theta).round().sum())
        elements += mean.numel() * T
    assert runner.firing_rate == pytest.approx(spikes / elements, rel=1e-4)
    assert 0 < runner.firing_rate < 1


@pytest.mark.parametrize("theta", [0.05, 1.0, 20.0])
def test_rate_maxpool_emits_the_max_input_count(theta):
    """Rate max pooling: after every step its output sum is θ × the largest input spike count,
    whichever way the counts are taken (sign of the spikes, or spikes != 0)."""
    from snncompiler.kernels import neuron_multistep_reference
    from snncompiler.runtime.snn import SpikingRunner

    rates = torch.tensor([[[[0.3, 0.9], [0.5, 0.1]]]])
    x = rates * theta
    T = 40
    spikes, _ = neuron_multistep_reference(x.expand((T,) + x.shape), 0.0, theta, spike_format="binary")
    expected = torch.stack([spikes[: t + 1].sum(0).amax() for t in range(T)]).double() * theta
    outs = []
    for fast in (True, False):
        runner = SpikingRunner(_pool_graph("rate", theta), backend="reference")
        if not fast:
            runner._nonnegative_theta = set()
        means = runner.run(x, T, checkpoints=list(range(1, T + 1)), chunk=7)
        outs.append(torch.stack([means[t].reshape(()) * t for t in range(1, T + 1)]).double())
    torch.testing.assert_close(outs[0], expected, rtol=1e-6, atol=1e-6 * theta)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("theta", [0.5, -0.5])
def test_firing_rate_counts_spikes_of_any_sign(theta):
    """θ·s summed and divided by θ counts spikes for a negative θ too (as (s != 0) would)."""
    from snncompiler.kernels import neuron_multistep_reference
    from snncompiler.runtime.snn import SpikingRunner

    x = torch.tensor([[[[0.3, -0.9], [0.5, 0.1]]]])
    T = 20
    runner = SpikingRunner(_pool_graph("output", theta), backend="reference")
    runner.run(x, T)
    spikes, _ = neuron_multistep_reference(x.expand((T,) + x.shape), 0.0, theta, spike_format="binary")
    assert runner.firing_rate == pytest.approx(float(spikes.float().mean()), rel=1e-6)
    assert runner.firing_rate > 0


def test_auto_chunk_fills_the_last_level_cache(cnn, digits_data, monkeypatch):
    """chunk=None: on CPU the most steps in [DEFAULT_CHUNK, MAX_CHUNK] (powers of two) whose largest
    activation fits the last-level cache; DEFAULT_CHUNK on a GPU. Results do not depend on it."""
    import math

    from snncompiler.kernels import cpu
    from snncompiler.options import DEFAULT_CHUNK, MAX_CHUNK
    from snncompiler.runtime.snn import auto_chunk

    _, path = cnn
    train, test = digits_data
    model = snnc.compile(path, Dataset(train.x[:64]))
    auto = model.run(test.x[:30], 40)  # chunk=None: the runtime's choice on this machine
    np.testing.assert_allclose(auto, model.run(test.x[:30], 40, chunk=5), rtol=1e-5, atol=1e-5)
    largest = max(math.prod(v.shape[1:]) for v in model.graph.values.values() if v.shape and len(v.shape) > 1)
    step = 4 * 64 * largest  # bytes of the largest value per step at batch 64
    cpu_dev = torch.device("cpu")
    real = cpu.last_level_cache_bytes()  # this machine's, from sysfs (or the fallback)
    assert isinstance(real, int) and real >= 1 << 10
    for cache, expected in [(step, DEFAULT_CHUNK), (16 * step, 16), (31 * step, 16), (1000 * step, MAX_CHUNK)]:
        monkeypatch.setattr(cpu, "last_level_cache_bytes", lambda cache=cache: cache)
        assert auto_chunk(model.graph, 64, cpu_dev) == expected, cache
    assert auto_chunk(model.graph, 64, torch.device("cuda")) == DEFAULT_CHUNK
    monkeypatch.setattr(cpu, "last_level_cache_bytes", lambda: 16 * step)
    assert auto_chunk(model.graph, 640, cpu_dev) == DEFAULT_CHUNK  # ten times the batch: 1.6 steps fit


def test_unknown_run_options_are_errors(tmp_path):
    """A misspelt override (exce= for exec=) is refused by name instead of running dense silently."""
    from snncompiler.model import RUN_OPTIONS

    path = tmp_path / "m.onnx"
    torch.manual_seed(0)
    export_onnx(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), (4,), path)
    x = np.random.default_rng(0).random((8, 4), dtype=np.float32)
    model = snnc.compile(str(path), x, timesteps=4, quiet=True)
    for call in (
        lambda: model.run(x, exce="event"),
        lambda: model.evaluate(x, np.zeros(8, np.int64), [2], exce="event"),
    ):
        with pytest.raises(snnc.SnncError, match=r"^run: unknown option\(s\) exce; expected one of backend, "):
            call()
    assert set(RUN_OPTIONS) >= {"backend", "device", "exec", "chunk"}
    np.testing.assert_array_equal(model.run(x, exec="event", chunk=3), model.run(x, exec="dense", chunk=3))
