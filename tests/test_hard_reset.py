"""Hard reset that works (issue 15, item 6): the compensation of the charge reset-to-zero
discards (passes/hard_reset.py), on the benchmark's digits ResNet and against soft reset's
charge balance; the soft-reset default is unchanged."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import snncompiler as snnc
from examples.workloads import digits_resnet_bench, evaluate, export_onnx
from snncompiler.data import Dataset, save_npz
from snncompiler.kernels.reference import neuron_multistep_reference
from snncompiler.passes import hard_reset, stats, thresholds

T = 32
# Floors at T=32: the acceptance of issue 15 (within 5 points of the ANN without calibration,
# within 3 with light calibration). Measured by benchmarks/timestep_accuracy.py --hard-reset on
# this model (ANN 99.44 %): 96.29 % without, 97.96 % with light calibration; 11.1 % without
# before the compensation. NOT yet checked across ATEN_CPU_CAPABILITY=default/avx2/avx512.


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """The digits ResNet of benchmarks/timestep_accuracy.py (30 epochs), its ONNX file, its data."""
    w = digits_resnet_bench(seed=0)
    path = export_onnx(w.model, w.input_shape, tmp_path_factory.mktemp("resnet") / "resnet.onnx")
    return path, w.calib, w.test, evaluate(w.model, w.test)


@pytest.fixture(scope="module")
def hard_model(resnet):
    path, calib, _, _ = resnet
    return snnc.compile(str(path), Dataset(calib.x), reset="hard", v0="zero", timesteps=T, quiet=True)


def test_digits_resnet_hard_reset_v0_zero_close_to_ann_without_calibration(resnet, hard_model):
    _, _, test, ann = resnet
    acc = hard_model.evaluate(test.x, test.y, [T])["snn_accuracy"][str(T)]
    assert acc >= ann - 0.05, f"hard reset, v0 = 0, T={T}: {100 * acc:.2f} % against the ANN's {100 * ann:.2f} %"
    assert all("gain" in n.params and bool((n.params["gain"] > 1).all()) for n in hard_model.graph.find("neuron"))


def test_digits_resnet_hard_reset_v0_zero_light_calibration_within_3_points(resnet):
    path, calib, test, ann = resnet
    model = snnc.compile(
        str(path), Dataset(calib.x), reset="hard", v0="zero", timesteps=T, calibration="light", quiet=True
    )
    acc = model.evaluate(test.x, test.y, [T])["snn_accuracy"][str(T)]
    assert acc >= ann - 0.03, f"hard reset + light calibration, T={T}: {100 * acc:.2f} % vs ANN {100 * ann:.2f} %"


def test_nir_export_read_back_by_snnc_eval_scores_the_same(resnet, hard_model, tmp_path):
    pytest.importorskip("nir")
    _, _, test, _ = resnet
    nir_path, data = tmp_path / "resnet.nir", tmp_path / "test.npz"
    assert hard_model.save_nir(nir_path) == []  # hard reset from 0: nothing lost, the gain is in v_threshold
    save_npz(data, test.x, test.y)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "snncompiler.cli",
            "eval",
            str(nir_path),
            "--data",
            str(data),
            "--timesteps",
            str(T),
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    read_back = json.loads(r.stdout)["snn_accuracy"][str(T)]
    ours = hard_model.evaluate(test.x, test.y, [T])["snn_accuracy"][str(T)]
    # the file fires at v_threshold = θ/g on the current, the runtime at θ on g·current: the two
    # roundings may split a tie; one test sample either way
    assert abs(read_back - ours) <= 1.0 / len(test.y) + 1e-9, (read_back, ours)


def test_artifact_keeps_the_gain(hard_model, resnet, tmp_path):
    _, _, test, _ = resnet
    path = tmp_path / "m.snn.onnx"
    hard_model.save(path)
    loaded = snnc.load(path)
    for a, b in zip(hard_model.graph.find("neuron"), loaded.graph.find("neuron")):
        assert torch.equal(a.params["gain"], b.params["gain"])
    np.testing.assert_array_equal(loaded.run(test.x[:64], 8), hard_model.run(test.x[:64], 8))


def test_gain_restores_soft_resets_charge_balance():
    """Jumpy inputs (jumps of 0.2-0.7 θ at random steps, as from an upstream layer): soft reset
    carries all the charge it receives; hard reset loses the excess above θ at every spike, and
    the compensating gain gives the charge back on average. (Jumps of one fixed size cannot be
    balanced by any gain: the spike count is then jumps / ⌈θ / (g·size)⌉, a step function of g.)
    Measured over seeds 0-2: hard/soft 0.807, compensated/soft 1.0076-1.0079."""
    gen = torch.Generator().manual_seed(0)
    theta, steps, n = 1.0, 256, 4000
    p = torch.rand(n, generator=gen) * 0.5
    size = 0.2 + 0.5 * torch.rand(steps, 1, n, generator=gen)
    x = size * (torch.rand(steps, 1, n, generator=gen) < p).float()  # [T, N=1, C=n]

    def spikes(reset, xs):
        return float(neuron_multistep_reference(xs, 0.0, theta, reset=reset)[0].sum())

    class Node:
        params = {"theta": torch.tensor(theta)}
        attrs = {"neuron": "if", "reset": "hard", "v0": "zero"}

    soft, hard = spikes("soft", x), spikes("hard", x)
    gain = hard_reset.compensating_gain(x, Node())
    compensated = spikes("hard", x * gain)
    assert hard < 0.85 * soft  # the bias the compensation is for
    assert abs(compensated - soft) < 0.02 * soft, (soft, hard, compensated, float(gain))


def test_soft_reset_default_is_unchanged(small_digits_cnn, tmp_path):
    """The default conversion (soft reset) gets no gain, θ is the p99.9 percentile of the
    activations, and the artifact's Neuron nodes keep their two-input form."""
    path, train, _ = small_digits_cnn
    calib = Dataset(train.x[:256])
    model = snnc.compile(str(path), calib, quiet=True)
    assert model.options["threshold"] == "p99.9" and model.options["reset"] == "soft"
    hists = stats.collect(model.ann_graph, calib, channelwise=False, max_samples=1024)
    for node in model.graph.find("neuron"):
        assert "gain" not in node.params
        expected = thresholds.choose(hists[node.name], "p99.9", T, "half")
        assert torch.equal(node.params["theta"], expected)
    out = tmp_path / "m.snn.onnx"
    model.save(out)
    import onnx

    neurons = [n for n in onnx.load(str(out)).graph.node if n.op_type == "Neuron"]
    assert neurons and all(len(n.input) == 2 for n in neurons)


def test_hard_reset_defaults_to_the_higher_percentile():
    from snncompiler.compiler import resolve_options

    assert resolve_options({"reset": "hard"})["threshold"] == "p99.99"
    assert resolve_options({})["threshold"] == "p99.9"
    assert resolve_options({"reset": "hard", "threshold": "max"})["threshold"] == "max"
