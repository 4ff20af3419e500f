"""The offset-spike correction (COS, ``--presim ρ``; runtime/offset_spikes.py): its rule on
hand-worked neurons, the runtime against a layer-by-layer simulation with SpikingJelly's IF
neuron, the cases where it must change nothing, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import snncompiler as snnc
from examples.workloads import export_onnx
from snncompiler.errors import OptionError
from snncompiler.runtime.offset_spikes import offset_spike_start
from snncompiler.runtime.snn import SpikingRunner
from tests.test_cli_ux import snnc_cli


def _start(currents, v0=0.5, theta=1.0) -> float:
    x = torch.tensor(currents, dtype=torch.float32).reshape(-1, 1)
    return float(offset_spike_start(x, torch.tensor(v0), torch.tensor(theta))[0])


def test_one_spike_too_many_starts_lower():
    # fires at step 1 (membrane 1.5), then the -1 leaves it at -0.5: the ANN's sum is 0, one spike
    # too many; it moves down by one θ (1.5 - 0.999 < 1) and the replay fires none
    assert _start([1.0, -1.0, 0.0, 0.0]) == pytest.approx(-0.5)
    # fired at membrane 3.0: down by 3.0 - 0.999, so that that spike is not fired again
    assert _start([2.5, -2.5]) == pytest.approx(0.5 - 2.001)


def test_one_spike_too_few_starts_higher():
    # the charge arrives at the last step: one spike, 1.5 left over; the quiet membrane peaked at
    # 0.5, 1.001 - 0.5 < 1, so up by one θ
    assert _start([0.0, 0.0, 0.0, 2.0]) == pytest.approx(1.5)
    # a saturated neuron (fired at every step, still over θ) moves up by θ
    assert _start([3.0, 3.0]) == pytest.approx(1.5)
    # lifted to fire at the quiet step where it peaked: 1.001·θ - (-1.5) with θ = 1
    assert _start([-2.0, 0.0, 0.0, 4.5]) == pytest.approx(0.5 + 2.501)


def test_even_inputs_keep_their_start():
    for currents in ([0.3] * 8, [0.0] * 4, [-0.2] * 4, [0.9, 0.1, 0.5, 0.5]):
        assert _start(currents) == pytest.approx(0.5), currents
    assert _start([0.3, 0.3], v0=0.0, theta=2.0) == 0.0


def _dyadic_mlp(tmp_path, hidden=(16, 12)):
    """A compiled Linear-ReLU-…-Linear whose weights, inputs and θ are small multiples of
    powers of two: every current and membrane sum is exact in float32 in any order, so the
    runtime and the oracle must agree bit for bit on every spike."""
    torch.manual_seed(0)
    sizes = (6, *hidden, 3)
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    x = torch.round(torch.randn(48, 6) * 4) / 4
    model = snnc.compile(str(export_onnx(net, (6,), tmp_path / "mlp.onnx")), x.numpy())
    gen = torch.Generator().manual_seed(1)
    for node in model.graph.nodes:
        if node.op == "linear":
            w, b = node.params["weight"], node.params["bias"]
            node.params["weight"] = torch.round(torch.randn(w.shape, generator=gen) * 8) / 16
            node.params["bias"] = torch.round(torch.randn(b.shape, generator=gen) * 4) / 16
        elif node.op == "neuron":
            node.params["theta"] = torch.tensor([2.0])
    return model, x


def _oracle(model, x, timesteps: int, presim: int) -> torch.Tensor:
    """The output at each of ``timesteps`` steps ([T, B, ...]), simulated layer by layer as COS's code does:
    SpikingJelly's IF neuron (soft reset) from θ/2, its first ``presim`` input steps run once
    to find each neuron's offset spike, the start moved, then the steps run from it."""
    from spikingjelly.activation_based import neuron

    seq = x.unsqueeze(0).expand(timesteps, *x.shape)  # direct encoding: the same input every step
    for node in model.graph.nodes:
        if node.op == "linear":
            seq = torch.nn.functional.linear(seq, node.params["weight"], node.params["bias"])
            continue
        assert node.op == "neuron"
        theta = float(node.params["theta"])
        cell = neuron.IFNode(v_threshold=theta, v_reset=None)
        start = torch.full_like(seq[0], theta / 2)
        if presim:
            cell.v = start.clone()
            fired = torch.zeros_like(start)
            at_spike, quiet = [], []
            for current in seq[:presim]:
                s = cell(current)
                before = cell.v + s * theta  # the membrane it fired at (or stayed under)
                at_spike.append(torch.where(s > 0, before, torch.full_like(s, float("inf"))))
                quiet.append(torch.where(s > 0, torch.full_like(s, float("-inf")), before))
                fired += s
            lowest, highest = torch.stack(at_spike).min(0).values, torch.stack(quiet).max(0).values
            down = torch.where(lowest - 0.999 * theta > theta, lowest - 0.999 * theta, torch.full_like(start, theta))
            lift = torch.where(torch.isinf(highest), torch.full_like(start, theta), 1.001 * theta - highest)
            up = torch.where(lift > theta, lift, torch.full_like(start, theta))
            start = torch.where((cell.v < 0) & (fired > 0), start - down, start)
            start = torch.where(cell.v >= theta, start + up, start)
        cell.reset()
        cell.v = start
        seq = torch.stack([cell(current) * theta for current in seq])
    return seq


@pytest.mark.parametrize("presim", [1, 3, 4])
@pytest.mark.parametrize("chunk", [2, None])
def test_runtime_is_the_layer_by_layer_correction(tmp_path, presim, chunk):
    model, x = _dyadic_mlp(tmp_path)
    want = _oracle(model, x, 6, presim).mean(0)
    got = torch.from_numpy(model.run(x.numpy(), 6, presim=presim, chunk=chunk))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    plain = torch.from_numpy(model.run(x.numpy(), 6))
    torch.testing.assert_close(plain, _oracle(model, x, 6, 0).mean(0), rtol=0, atol=1e-6)
    # the second layer's uneven input gives offset spikes to correct: the check is not vacuous
    assert (got - plain).abs().amax(1).gt(1e-3).sum() >= 3


@pytest.mark.parametrize("chunk", [1, 2, None])
def test_fewer_steps_than_the_presimulation(tmp_path, chunk):
    """T < ρ: the pre-simulation still reads ρ steps of input, so a run for T reports what a
    longer run reports at step T (accuracy at every T from one run stays true)."""
    model, x = _dyadic_mlp(tmp_path)
    want = _oracle(model, x, 5, 5)
    for t in (1, 2, 4):
        got = torch.from_numpy(model.run(x.numpy(), t, presim=5, chunk=chunk))
        torch.testing.assert_close(got, want[:t].mean(0), rtol=0, atol=1e-6)
    many = model.run(x.numpy(), 8, presim=5, checkpoints=[1, 2, 4, 8], chunk=chunk)
    for t in (1, 2, 4):
        np.testing.assert_array_equal(many[t], model.run(x.numpy(), t, presim=5, chunk=chunk))


def test_a_layer_fed_a_constant_current_is_left_alone(tmp_path):
    """One spiking layer under direct encoding sees the same current at every step: its spike
    count is the rounded rate already (or it fires at every step), so nothing moves."""
    model, x = _dyadic_mlp(tmp_path, hidden=(16,))
    for t in (1, 3, 8):
        np.testing.assert_array_equal(model.run(x.numpy(), t, presim=4), model.run(x.numpy(), t))


def test_presim_helps_a_converted_cnn_at_few_steps(small_digits_cnn):
    """The point of it: at T = 1 the digits CNN (no calibration) gains from ρ = 4."""
    path, train, test = small_digits_cnn
    model = snnc.compile(str(path), train.x[:256])
    plain = model.evaluate(test.x, test.y, [1, 2])["snn_accuracy"]
    cos = model.evaluate(test.x, test.y, [1, 2], presim=4)["snn_accuracy"]
    assert cos["1"] > plain["1"] + 0.02, (plain, cos)
    assert cos["2"] >= plain["2"] - 0.01, (plain, cos)


def test_refusals(tmp_path):
    model, x = _dyadic_mlp(tmp_path)
    np.testing.assert_array_equal(model.run(x.numpy(), 4, presim=np.int64(2)), model.run(x.numpy(), 4, presim=2))
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(OptionError, match="presim"):
            model.run(x.numpy(), 4, presim=bad)
    lif = snnc.compile(str(tmp_path / "mlp.onnx"), x.numpy(), neuron="lif")
    with pytest.raises(OptionError, match=r"presim.*IF neurons with soft reset.*lif"):
        lif.run(x.numpy(), 4, presim=2)
    with pytest.raises(OptionError, match="presim"):
        SpikingRunner(lif.graph, presim=2)


def test_cli(tmp_path):
    model, x = _dyadic_mlp(tmp_path)
    model.save(tmp_path / "mlp.snn.onnx")
    np.savez(tmp_path / "data.npz", x=x.numpy(), y=np.zeros(len(x), dtype=np.int64))
    r = snnc_cli(
        "run",
        tmp_path / "mlp.snn.onnx",
        "--input",
        tmp_path / "data.npz",
        "--timesteps",
        6,
        "--presim",
        3,
        "-o",
        tmp_path / "out.npz",
    )
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["y"], model.run(x.numpy(), 6, presim=3), atol=1e-6)
    r = snnc_cli("eval", tmp_path / "mlp.onnx", "--data", tmp_path / "data.npz", "--presim", 2)
    assert r.returncode == 2 and "--presim" in r.stderr and "Traceback" not in r.stderr, r
    r = snnc_cli("eval", tmp_path / "mlp.snn.onnx", "--data", tmp_path / "data.npz", "--presim", -1)
    assert r.returncode == 2, r


def test_benchmark_writes_every_row(tmp_path, monkeypatch, capsys):
    """benchmarks/offset_spikes.py end to end at 1 epoch: a row per variant and ρ, each scored at
    every T asked for, the machine recorded and the table printed."""
    import json

    from benchmarks import offset_spikes as bench
    from benchmarks import quantization_aware

    monkeypatch.setattr(quantization_aware, "EPOCHS", 1)
    assert bench.main(["--workloads", "digits_cnn", "--timesteps", "1,2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "offset_spikes.json").read_text())
    assert result["machine"]["cpu"] and result["machine"]["torch"]
    workload = result["workloads"]["digits_cnn"]
    assert workload["spiking_layers"] == 3 and workload["epochs"] == 1
    rows = workload["rows"]
    assert sorted(rows) == sorted(f"{label}, ρ={r}" for label, _, _ in bench.VARIANTS for r in bench.PRESIMS)
    assert all(set(row["snn"]) == {"1", "2"} for row in rows.values())
    assert "QCFS L=4, ρ=4" in capsys.readouterr().out
    assert bench.main(["--workloads", "nope", "--out", str(tmp_path)]) == 2
