"""Direct training (TET): the loss against SpikingJelly's, the neuron against TET's own LIFSpike,
training that learns, and the trained network's artifact against the network it came from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

# the kernel tests' conftest sets TRITON_INTERPRET on a machine without a GPU before anything imports triton
from kernels.conftest import device_for
from torch import nn

import snncompiler as snnc
from examples.workloads import digits, moving_dot
from snncompiler.errors import SnncError
from snncompiler.kernels import available_backends
from snncompiler.train import LIF, run_steps


# ---- loss ------------------------------------------------------------------------------
@pytest.mark.parametrize("lamb, means", [(1e-3, 1.0), (0.3, 0.5), (0.0, 1.0), (1.0, 2.0)])
@pytest.mark.parametrize("steps", [1, 4])
def test_tet_loss_matches_spikingjelly(lamb, means, steps):
    sj_loss = pytest.importorskip("spikingjelly.activation_based.examples.memopt.loss")
    g = torch.Generator().manual_seed(steps)
    out = torch.randn(steps, 16, 10, generator=g) * 3
    labels = torch.randint(0, 10, (16,), generator=g)
    expected = sj_loss.TETLoss(mean=means, tet_lambda=lamb)(out, labels)
    assert torch.allclose(snnc.train.tet_loss(out, labels, lamb=lamb, means=means), expected, rtol=1e-6, atol=1e-6)


def test_tet_cross_entropy_matches_spikingjelly_functional():
    sj_loss = pytest.importorskip("spikingjelly.activation_based.functional.loss")
    out, labels = torch.randn(5, 8, 7), torch.randint(0, 7, (8,))
    expected = sj_loss.temporal_efficient_training_cross_entropy(out, labels)
    assert torch.allclose(snnc.train.tet_loss(out, labels, lamb=0.0), expected, rtol=1e-6)


def test_sdt_loss_is_cross_entropy_of_the_time_mean():
    out, labels = torch.randn(3, 8, 5), torch.randint(0, 5, (8,))
    expected = nn.functional.cross_entropy(out.mean(0), labels)
    assert torch.allclose(snnc.train.sdt_loss(out, labels), expected)
    assert not torch.allclose(snnc.train.tet_loss(out, labels, lamb=0.0), expected)


def test_loss_argument_errors():
    with pytest.raises(SnncError, match=r"outputs: expected \[T, B, C\]"):
        snnc.train.tet_loss(torch.randn(8, 5), torch.zeros(8, dtype=torch.long))
    with pytest.raises(SnncError, match="labels: expected shape"):
        snnc.train.tet_loss(torch.randn(2, 8, 5), torch.zeros(7, dtype=torch.long))
    with pytest.raises(SnncError, match="lamb"):
        snnc.train.tet_loss(torch.randn(2, 8, 5), torch.zeros(8, dtype=torch.long), lamb=1.5)


# ---- the neuron against TET's LIFSpike --------------------------------------------------


class _ZIF(torch.autograd.Function):
    """TET's spike function (models/layers.py): step forward, triangle of half-width γ backward."""

    @staticmethod
    def forward(ctx, u, gamma):
        ctx.save_for_backward(u)
        ctx.gamma = gamma
        return (u > 0).float()

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        g = ctx.gamma
        return grad * (1 / g) * (1 / g) * (g - u.abs()).clamp(min=0), None


def tet_lif_spike(x, thresh=1.0, tau=0.5, gamma=1.0):
    """TET's LIFSpike over x [T, ...], written after the authors' code (the independent oracle)."""
    mem, out = 0, []
    for t in range(x.shape[0]):
        mem = mem * tau + x[t]
        spike = _ZIF.apply(mem - thresh, gamma)
        mem = (1 - spike) * mem
        out.append(spike)
    return torch.stack(out)


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_lif_matches_tet_lifspike(backend, gamma):
    g = torch.Generator().manual_seed(1)
    steps, batch = 6, 4
    dev = device_for(backend)
    x = (torch.randn(steps, batch, 3, 5, 5, generator=g) * 1.2 + 0.4).to(dev).requires_grad_()
    weight = torch.randn(steps, batch, 3, 5, 5, generator=g).to(dev)
    lif = LIF(alpha=1 / gamma, backend=backend)
    lif.timesteps = steps
    ours = lif(x.flatten(0, 1)).reshape(x.shape)
    (ours * weight).sum().backward()
    grad_ours = x.grad.clone()
    x.grad = None
    expected = tet_lif_spike(x, gamma=gamma)
    (expected * weight).sum().backward()
    assert torch.equal(ours.detach(), expected.detach())
    assert 0 < float(expected.detach().mean()) < 1  # spikes and silences both exercised
    assert torch.allclose(grad_ours, x.grad, atol=1e-5, rtol=1e-5)
    assert float(x.grad.abs().sum()) > 0


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("per_channel", [False, True])
def test_learned_threshold_gradient_matches_tet_lifspike(backend, per_channel):
    g = torch.Generator().manual_seed(2)
    steps, batch, channels = 5, 3, 4
    dev = device_for(backend)
    x = (torch.randn(steps, batch, channels, 3, 3, generator=g) + 0.5).to(dev).requires_grad_()
    weight = torch.randn(x.shape, generator=g).to(dev)
    start = torch.tensor([0.8, 1.0, 1.2, 0.9]) if per_channel else 1.1
    lif = LIF(theta=start, learn_theta=True, backend=backend).to(dev)
    lif.timesteps = steps
    ours = lif(x.flatten(0, 1)).reshape(x.shape)
    (ours * weight).sum().backward()
    thresh = torch.as_tensor(start).clone().to(dev).requires_grad_()
    view = thresh.reshape(1, -1, 1, 1) if per_channel else thresh
    expected = tet_lif_spike(x.detach(), thresh=view) * view  # LIF outputs θ·s
    (expected * weight).sum().backward()
    assert torch.equal(ours.detach(), expected.detach())
    assert lif.theta.grad.shape == thresh.shape
    assert torch.allclose(lif.theta.grad, thresh.grad, atol=1e-4, rtol=1e-5)
    assert float(thresh.grad.abs().sum()) > 0


def test_lif_settings_and_errors():
    lif = LIF()
    assert lif.attrs == {"neuron": "lif", "tau": 2.0, "reset": "hard", "v0": "zero"}
    assert LIF(neuron="if").attrs["tau"] == 0.0
    with pytest.raises(SnncError, match="time axis is unknown"):
        lif(torch.randn(4, 3))
    lif.timesteps = 3
    with pytest.raises(SnncError, match="not a multiple of T=3"):
        lif(torch.randn(4, 3))
    with pytest.raises(SnncError, match="theta"):
        LIF(theta=0)
    with pytest.raises(SnncError, match="1-D"):
        LIF(theta=torch.ones(2, 2))
    with pytest.raises(SnncError, match="positive"):
        LIF(theta=torch.tensor([1.0, -1.0]))
    per_channel = LIF(theta=torch.ones(3))
    per_channel.timesteps = 2
    with pytest.raises(SnncError, match="3 per-channel thresholds, but the input has 5 channels"):
        per_channel(torch.randn(4, 5, 2, 2))
    with pytest.raises(SnncError, match="tau"):
        LIF(tau=1.0)
    with pytest.raises(SnncError, match="reset"):
        LIF(reset="zero")
    with pytest.raises(SnncError, match="surrogate"):
        LIF(surrogate="relu")
    with pytest.raises(SnncError, match="no snncompiler.train.LIF"):
        run_steps(nn.Linear(3, 2), torch.randn(2, 3), 4)
    with pytest.raises(SnncError, match="timesteps"):
        run_steps(nn.Sequential(LIF()), torch.randn(2, 3), 0)


def test_run_steps_gives_every_step():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), LIF(), nn.Linear(8, 3))
    out = run_steps(net, torch.randn(7, 5), 4)
    assert out.shape == (4, 7, 3)
    assert net[1].timesteps is None  # cleared: a stray call outside run_steps is an error
    # a LIF starting from 0 with decay 0.5 and a constant input fires later than it would with IF
    assert not torch.equal(out[0], out[-1])


# ---- training -----------------------------------------------------------------------------
def small_cnn(maxpool: bool = False, bn: bool = True) -> nn.Module:
    pool = nn.MaxPool2d(2) if maxpool else nn.AvgPool2d(2)
    norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
    return nn.Sequential(
        nn.Conv2d(1, 12, 3, padding=1),
        norm(12),
        LIF(),
        pool,
        nn.Conv2d(12, 24, 3, padding=1),
        norm(24),
        LIF(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24 * 4, 10),
    )


@pytest.fixture(scope="module")
def digits_data():
    return digits()


@pytest.fixture(scope="module")
def trained(digits_data):
    train, test = digits_data
    torch.manual_seed(0)
    net = small_cnn()
    history = snnc.train.fit(net, train, timesteps=4, epochs=12, lr=5e-3, val=test, progress=False)
    return net, history


def test_fit_learns_digits(trained, digits_data):
    net, history = trained
    losses = [row["loss"] for row in history["epochs"]]
    assert losses[-1] < 0.6 * losses[0]
    assert history["epochs"][-1]["val_accuracy"] >= 0.93
    assert history["settings"]["method"] == "tet" and history["settings"]["lamb"] == 1e-3
    result = snnc.train.evaluate(net, digits_data[1], timesteps=[1, 2, 4, 8])
    assert result["accuracy"]["4"] == history["epochs"][-1]["val_accuracy"]
    assert result["accuracy"]["8"] >= 0.93  # TET's temporal scalability: longer T does not hurt
    assert 0 < result["firing_rate"] < 1


def test_fit_errors(digits_data):
    train, _ = digits_data
    net = small_cnn()
    with pytest.raises(SnncError, match="loss: expected one of tet, sdt"):
        snnc.train.fit(net, train, loss="mse", progress=False)
    with pytest.raises(SnncError, match="epochs"):
        snnc.train.fit(net, train, epochs=0, progress=False)
    with pytest.raises(SnncError, match="train: labels 'y' are required"):
        snnc.train.fit(net, (train.x, None), progress=False)
    with pytest.raises(SnncError, match="labels span 5..12 but the model has 10 outputs"):
        snnc.train.fit(net, (train.x[:8], np.arange(8) + 5), progress=False)
    with pytest.raises(SnncError, match="NaN"):
        x = train.x.copy()
        x[3, 0, 0, 0] = np.nan
        snnc.train.fit(net, (x, train.y), progress=False)
    for bad in (dict(lr=float("nan")), dict(lr=-1.0), dict(lr=0)):
        with pytest.raises(SnncError, match="lr: must be a positive number"):
            snnc.train.fit(net, train, progress=False, **bad)
    with pytest.raises(SnncError, match="weight_decay: must be a non-negative number"):
        snnc.train.fit(net, train, weight_decay=-0.1, progress=False)
    with pytest.raises(SnncError, match="model: expected a torch.nn.Module, got str"):
        snnc.train.fit("net", train, progress=False)


def test_dataloaders_train_and_evaluate(trained, digits_data):
    from torch.utils.data import DataLoader, TensorDataset

    net, _ = trained
    train, test = digits_data
    loader = DataLoader(TensorDataset(torch.from_numpy(test.x), torch.from_numpy(test.y)), batch_size=100)
    from_loader = snnc.train.evaluate(net, loader, timesteps=[1, 4])
    from_arrays = snnc.train.evaluate(net, test, timesteps=[1, 4])
    assert from_loader["samples"] == len(test)
    assert from_loader["accuracy"] == from_arrays["accuracy"]
    assert from_loader["firing_rate"] == pytest.approx(from_arrays["firing_rate"], rel=1e-6)
    torch.manual_seed(3)
    fresh = small_cnn()
    batches = DataLoader(
        TensorDataset(torch.from_numpy(train.x), torch.from_numpy(train.y)), batch_size=64, shuffle=True
    )
    history = snnc.train.fit(fresh, batches, timesteps=2, epochs=2, val=loader, progress=False)
    assert history["settings"]["train_samples"] == len(train)
    assert history["epochs"][-1]["val_accuracy"] > 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (benchmarks/gpu_session.sh runs it)")
def test_fit_on_gpu_and_export(digits_data, tmp_path):
    train, test = digits_data
    torch.manual_seed(5)
    net = small_cnn()
    history = snnc.train.fit(net, train, timesteps=4, epochs=6, lr=5e-3, device="cuda", progress=False)
    assert next(net.parameters()).is_cuda
    assert history["epochs"][-1]["loss"] < 0.7 * history["epochs"][0]["loss"]
    on_gpu = snnc.train.evaluate(net, test, timesteps=[4], device="cuda")
    assert on_gpu["accuracy"]["4"] >= 0.85
    snnc.train.export(net, tmp_path / "gpu.snn.onnx", (1, 8, 8))  # copies to the CPU itself
    on_cpu = snnc.load(tmp_path / "gpu.snn.onnx").evaluate(test.x, test.y, timesteps=[4])
    assert abs(on_cpu["snn_accuracy"]["4"] - on_gpu["accuracy"]["4"]) <= 0.01


def test_bad_batches_are_named():
    net = small_cnn()
    with pytest.raises(SnncError, match="train: batch 1 is not an"):
        snnc.train.fit(net, [torch.zeros(4, 1, 8, 8)], epochs=1, progress=False)
    with pytest.raises(SnncError, match="train: batch 2: y must be integer class labels"):
        snnc.train.fit(
            net,
            [(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)), (torch.zeros(4, 1, 8, 8), torch.zeros(4))],
            epochs=1,
            progress=False,
        )
    with pytest.raises(SnncError, match="train: yielded no batches"):
        snnc.train.fit(net, [], epochs=1, progress=False)
    with pytest.raises(SnncError, match="data: expected a Dataset"):
        snnc.train.evaluate(net, 3)


# ---- export: the artifact runs the trained network ----------------------------------------
def _per_step(compiled, x, steps):
    return compiled.runner().run_steps(torch.from_numpy(x), steps)


def test_export_without_bn_reproduces_every_step(digits_data, tmp_path):
    train, test = digits_data
    torch.manual_seed(1)
    net = small_cnn(maxpool=True, bn=False)
    snnc.train.fit(net, (train.x[:256], train.y[:256]), timesteps=3, epochs=2, progress=False)
    path = tmp_path / "tet.snn.onnx"
    snnc.train.export(net, path, (1, 8, 8))
    loaded = snnc.load(path)
    x = test.x[:64]
    with torch.no_grad():
        expected = run_steps(net, torch.from_numpy(x), 6)
    got = _per_step(loaded, x, 6)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert loaded.options["timesteps"] == 3 and loaded.options["maxpool"] == "output"
    assert [n.attrs["reset"] for n in loaded.graph.find("neuron")] == ["hard", "hard"]
    assert loaded.report["direct_training"]["method"] == "tet"


def test_export_with_bn_folds_it_and_agrees(trained, digits_data, tmp_path):
    net, history = trained
    test = digits_data[1]
    compiled = snnc.train.export(net, tmp_path / "tet_bn.snn.onnx", (1, 8, 8))
    assert not compiled.graph.find("batchnorm")
    loaded = snnc.load(tmp_path / "tet_bn.snn.onnx")
    result = loaded.evaluate(test.x, test.y, timesteps=[1, 4, 8])
    torch_result = snnc.train.evaluate(net, test, timesteps=[1, 4, 8])
    for t in ("1", "4", "8"):  # folding BN rounds differently: a spike or two may move, no more
        assert abs(result["snn_accuracy"][t] - torch_result["accuracy"][t]) <= 0.005
    assert abs(result["firing_rate"] - torch_result["firing_rate"]) < 1e-3


def test_export_with_a_residual_connection(tmp_path):
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.lif1 = nn.Linear(6, 8), LIF(neuron="if", reset="soft", v0="half")
            self.body, self.lif2 = nn.Linear(8, 8), LIF(theta=0.5)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            s = self.lif1(self.stem(x))
            return self.head(self.lif2(self.body(s) + s))

    torch.manual_seed(2)
    net = Residual().eval()
    compiled = snnc.train.export(net, tmp_path / "res.snn.onnx", (6,), timesteps=5)
    neurons = compiled.graph.find("neuron")
    assert [(n.attrs["neuron"], n.attrs["reset"], n.attrs["v0"]) for n in neurons] == [
        ("if", "soft", "half"),
        ("lif", "hard", "zero"),
    ]
    assert compiled.report["neuron_settings"] == "per neuron (mixed)"
    x = np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32)
    with torch.no_grad():
        expected = run_steps(net, torch.from_numpy(x), 5)
    assert torch.allclose(_per_step(snnc.load(tmp_path / "res.snn.onnx"), x, 5), expected, atol=1e-5)


def test_learned_per_channel_thresholds_train_and_export(digits_data, tmp_path):
    train, test = digits_data
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        LIF(theta=torch.ones(6), learn_theta=True),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 16, 10),
    )
    snnc.train.fit(net, (train.x[:512], train.y[:512]), timesteps=3, epochs=3, lr=1e-2, progress=False)
    learned = net[1].threshold()
    assert learned.shape == (6,) and not torch.allclose(learned, torch.ones(6))
    compiled = snnc.train.export(net, tmp_path / "theta.snn.onnx", (1, 8, 8))
    assert torch.equal(compiled.graph.find("neuron")[0].params["theta"], learned)
    x = test.x[:64]
    with torch.no_grad():
        expected = run_steps(net, torch.from_numpy(x), 4)
    assert torch.allclose(_per_step(snnc.load(tmp_path / "theta.snn.onnx"), x, 4), expected, atol=1e-5)
    with torch.no_grad():
        net[1].theta[2] = -0.5
    with pytest.raises(SnncError, match=r"LIF '1' has a threshold ≤ 0"):
        snnc.train.export(net, tmp_path / "bad.snn.onnx", (1, 8, 8))


def test_export_a_lif_used_at_two_sites(tmp_path):
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head, self.lif = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2), LIF()

        def forward(self, x):
            return self.head(self.lif(self.b(self.lif(self.a(x)))))

    torch.manual_seed(6)
    net = Shared().eval()
    compiled = snnc.train.export(net, tmp_path / "shared.snn.onnx", (4,), timesteps=3)
    assert [n.name for n in compiled.graph.find("neuron")] == ["/lif/LIF", "/lif/LIF#2"]
    x = np.random.default_rng(1).normal(size=(16, 4)).astype(np.float32) * 2
    with torch.no_grad():
        expected = run_steps(net, torch.from_numpy(x), 3)
    assert torch.allclose(_per_step(snnc.load(tmp_path / "shared.snn.onnx"), x, 3), expected, atol=1e-5)


def test_export_errors(tmp_path):
    net = small_cnn()
    with pytest.raises(SnncError, match="training mode"):
        snnc.train.export(net, tmp_path / "a.onnx", (1, 8, 8), timesteps=4)
    net.eval()
    with pytest.raises(SnncError, match="timesteps"):
        snnc.train.export(net, tmp_path / "a.onnx", (1, 8, 8))
    with pytest.raises(SnncError, match="timesteps: must be a positive integer, got 0"):
        snnc.train.export(net, tmp_path / "a.onnx", (1, 8, 8), timesteps=0)
    with pytest.raises(SnncError, match=r"input_shape \[3, 8, 8\]: exporting the network failed"):
        snnc.train.export(net, tmp_path / "a.onnx", (3, 8, 8), timesteps=4)
    with pytest.raises(SnncError, match="input_shape: expected one sample's shape"):
        snnc.train.export(net, tmp_path / "a.onnx", "1x8x8", timesteps=4)

    class WithSpare(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.spare = net, LIF()

        def forward(self, x):
            return self.net(x)

    with pytest.raises(SnncError, match="'spare' is not on the forward path"):
        snnc.train.export(WithSpare().eval(), tmp_path / "a.onnx", (1, 8, 8), timesteps=4)
    with pytest.raises(SnncError, match="no snncompiler.train.LIF"):
        snnc.train.export(nn.Linear(3, 2).eval(), tmp_path / "a.onnx", (3,), timesteps=4)


# ---- sequence inputs: one frame per step ---------------------------------------------------
def test_moving_dot_hides_the_class_from_the_time_mean():
    data = moving_dot(64, seed=3, noise=0.0)
    right, left = data.x[data.y == 0], data.x[data.y == 1]
    # played backwards, a right-moving dot is a left-moving one over the same cells
    assert {tuple(s.mean(0).ravel()) for s in right} == {tuple(s[::-1].mean(0).ravel()) for s in right}
    assert np.all(np.diff(right[:, :, 0].argmax(-1), axis=1) == 1)
    assert np.all(np.diff(left[:, :, 0].argmax(-1), axis=1) == -1)


def sequence_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(1, 8, 3, padding=1), LIF(), nn.Conv1d(8, 16, 3, padding=1), LIF(), nn.Flatten(), nn.Linear(16 * 16, 2)
    )


@pytest.fixture(scope="module")
def sequence_model():
    train, test = moving_dot(2000, seed=0), moving_dot(500, seed=1)
    torch.manual_seed(0)
    net = sequence_net()
    history = snnc.train.fit(net, train, epochs=8, lr=1e-2, sequence=True, progress=False)
    return net, history, test


def test_sequence_training_learns_direction_and_exports(sequence_model, tmp_path):
    net, history, test = sequence_model
    assert history["settings"]["timesteps"] == 8 and history["settings"]["sequence"] is True
    result = snnc.train.evaluate(net, test, sequence=True)
    assert list(result["accuracy"]) == ["1", "2", "4", "8"]
    assert result["accuracy"]["8"] >= 0.95  # the time-mean alone is at chance by construction
    path = tmp_path / "dot.snn.onnx"
    snnc.train.export(net, path, (1, 16))
    loaded = snnc.load(path)
    assert loaded.options["encoding"] == "sequence" and loaded.sequence
    assert loaded.evaluate(test.x, test.y)["snn_accuracy"] == result["accuracy"]
    with torch.no_grad():
        expected = run_steps(net, torch.from_numpy(test.x[:32]), sequence=True)
    assert torch.allclose(loaded.runner().run_steps(torch.from_numpy(test.x[:32]), 8), expected, atol=1e-5)
    assert loaded.run(test.x[:4]).shape == (4, 2)  # T defaults to the sequence's length


def test_sequence_errors(sequence_model, tmp_path):
    net, _, test = sequence_model
    with pytest.raises(SnncError, match="the input sequence has 8"):
        run_steps(net, torch.from_numpy(test.x[:2]), 9, sequence=True)
    with pytest.raises(SnncError, match=r"a sequence input must be \[B, T, ...\]"):
        run_steps(net, torch.zeros(3), sequence=True)
    path = tmp_path / "dot.snn.onnx"
    snnc.train.export(net, path, (1, 16))
    loaded = snnc.load(path)
    with pytest.raises(SnncError, match=r"expected shape \[N, T, 1, 16\], got \[4, 1, 16\]"):
        loaded.run(test.x[:4, 0])
    with pytest.raises(SnncError, match="16 steps asked for, but the input sequence has 8"):
        loaded.run(test.x[:4], 16)
    with pytest.raises(SnncError, match="encoding: .sequence.: conversion calibrates on static inputs"):
        snnc.compile(path, test.x[:, 0], encoding="sequence")


def test_cli_evaluates_a_sequence_artifact(sequence_model, tmp_path):
    import subprocess
    import sys

    net, _, test = sequence_model
    snnc.train.export(net, tmp_path / "dot.snn.onnx", (1, 16))
    np.savez(tmp_path / "dot.npz", x=test.x, y=test.y)
    run = lambda *a: subprocess.run(
        [sys.executable, "-m", "snncompiler.cli", *map(str, a)], capture_output=True, text=True
    )
    proc = run("eval", tmp_path / "dot.snn.onnx", "--data", tmp_path / "dot.npz")
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()[2:]] == ["1", "2", "4", "8"]
    proc = run("eval", tmp_path / "dot.snn.onnx", "--data", tmp_path / "dot.npz", "--layers")
    assert proc.returncode == 2 and "--layers: per-layer conversion errors need static inputs" in proc.stderr


def test_a_compiled_network_trains_through_the_op():
    """torch.compile traces LIF through the registered op (fake impl + autograd formula).

    backend aot_eager: the trace, the fake impl and the autograd formula are what is tested; the
    inductor backend adds C++ code generation, which fails under ATEN_CPU_CAPABILITY=default (its
    generated code uses at::vec while the precompiled header was built without it)."""
    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(8, 16), LIF(), nn.Linear(16, 3))
    x, y = torch.randn(4, 8), torch.randint(0, 3, (4,))
    compiled = torch.compile(net, backend="aot_eager")
    out = run_steps(compiled, x, 4)
    snnc.train.tet_loss(out, y).backward()
    grad = net[0].weight.grad.clone()
    net.zero_grad()
    eager = run_steps(net, x, 4)
    snnc.train.tet_loss(eager, y).backward()
    assert torch.allclose(out, eager) and torch.allclose(grad, net[0].weight.grad, atol=1e-6)
    assert float(grad.abs().sum()) > 0


# ---- knowledge distillation ------------------------------------------------------------------
@pytest.mark.parametrize("steps, temperature", [(1, 1.0), (3, 4.0)])
def test_distill_loss_is_the_softened_kl_per_step(steps, temperature):
    from snncompiler.train.trainer import distill_loss

    g = torch.Generator().manual_seed(steps)
    out = torch.randn(steps, 5, 7, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(5, 7, generator=g, dtype=torch.float64) * 3
    p = np.exp(teacher.numpy() / temperature)
    p /= p.sum(-1, keepdims=True)
    expected = 0.0
    for t in range(steps):  # Hinton et al.: τ² · Σ p (log p − log q), mean over the samples, then the steps
        logq = out[t].numpy() / temperature
        logq = logq - np.log(np.exp(logq).sum(-1, keepdims=True))
        expected += temperature**2 * (p * (np.log(p) - logq)).sum(-1).mean() / steps
    assert float(distill_loss(out, teacher, temperature)) == pytest.approx(expected, rel=1e-9)
    assert float(distill_loss(teacher.expand(steps, 5, 7), teacher, temperature)) == pytest.approx(0, abs=1e-12)


def test_fit_distils_a_teacher_over_the_labels(digits_data):
    """With distill=1 the labels carry no weight: a teacher that always answers class 3 wins over
    the true labels (an assertion that fails if the teacher's loss were dropped or mis-weighted)."""
    train, _ = digits_data
    x, y = train.x[:256], train.y[:256]

    def teacher(batch):
        logits = torch.zeros(len(batch), 10)
        logits[:, 3] = 8.0
        return logits

    torch.manual_seed(0)
    net = small_cnn()
    history = snnc.train.fit(net, (x, y), timesteps=2, epochs=6, lr=1e-2, teacher=teacher, distill=1.0, progress=False)
    assert history["settings"]["distill"] == 1.0 and history["settings"]["temperature"] == 4.0
    with torch.no_grad():
        predicted = run_steps(net, torch.as_tensor(x), 2).mean(0).argmax(-1)
    assert (predicted == 3).float().mean() > 0.9
    assert (predicted == torch.as_tensor(y)).float().mean() < 0.3  # the labels were not what it learnt


def test_fit_distillation_errors(digits_data):
    train, _ = digits_data
    data = (train.x[:32], train.y[:32])
    net = small_cnn()
    for bad, match in [
        (dict(teacher=lambda b: torch.zeros(len(b), 10), distill=1.5), "^distill: must lie in"),
        (dict(teacher=lambda b: torch.zeros(len(b), 10), temperature=0), "^temperature: must be a positive"),
        (dict(teacher="ann"), "^teacher: expected a callable"),
        (dict(teacher=lambda b: torch.zeros(len(b), 7)), r"^teacher: returned logits of shape \[32, 7\]"),
    ]:
        with pytest.raises(SnncError, match=match):
            snnc.train.fit(net, data, timesteps=1, epochs=1, batch_size=32, progress=False, **bad)


def test_training_keeps_learned_thresholds_positive(digits_data):
    """A learned θ at or below zero (what fine-tuning the random ResNet-18 reached) is held at
    THETA_FLOOR after every optimiser step, so training goes on and the result exports; fixed
    thresholds are left alone."""
    from snncompiler.train.neuron import THETA_FLOOR, keep_thresholds_positive

    train, _ = digits_data
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 16),
        LIF(theta=torch.ones(16), learn_theta=True),
        nn.Linear(16, 10),
        LIF(theta=0.7),
    )
    with torch.no_grad():
        net[2].theta[:4] = torch.tensor([-0.5, 0.0, float("nan"), 2e-7])
    keep_thresholds_positive(net)
    got = net[2].theta.detach()
    assert got[0] == got[1] == got[3] == THETA_FLOOR and torch.isnan(got[2]) and torch.all(got[4:] == 1)
    assert net[4].theta == 0.7
    with torch.no_grad():
        net[2].theta[:4] = -0.5  # as if the last step had driven them there
    snnc.train.fit(net, (train.x[:128], train.y[:128]), timesteps=2, epochs=1, lr=1e-9, progress=False)
    held = net[2].threshold()[:4]  # fit clamps after each step (Adam moves θ by ~lr per step)
    assert bool((held >= THETA_FLOOR).all()) and bool((held < 1e-5).all()), held
