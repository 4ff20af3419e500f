"""Torch in and out, and SNNs onnxruntime runs (issue #20):

* ``snnc.compile`` / ``snnc.calibrate`` of a ``torch.nn.Module`` give the artifact the ONNX route
  gives (the module exported to a file, compiled from the file), byte for byte; calibration data
  and evaluation data may come as a DataLoader or any iterable of batches;
* ``CompiledModel.to_torch()`` returns what ``CompiledModel.run`` returns (the runtime is the
  oracle), on the kernel op and on the plain-torch path, under ``torch.compile`` too, and trains;
* ``snnc export --format onnx`` writes standard ONNX that onnxruntime runs to ``snnc run``'s
  outputs within 1e-5.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import snncompiler as snnc
from examples.workloads import DigitsCNN, DigitsResNet, digits, export_onnx
from snncompiler.errors import SnncError
from snncompiler.model import CompiledModel

T = 8


def snnc_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "snncompiler.cli", *map(str, args)], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def one_line_error(rc, err, *needles):
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def resnet(data):
    """An untrained DigitsResNet (BN, residual adds, global average pool), compiled."""
    torch.manual_seed(1)
    train, _ = data
    return snnc.compile(DigitsResNet(width=8).eval(), train.x[:128], timesteps=T)


# ---- 1. torch modules and iterables in ----------------------------------------------------------
def test_resnet18_module_compiles_to_the_onnx_routes_artifact(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    module = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(4, 3, 32, 32)
    direct = snnc.compile(module, x, example_input=x[:1], timesteps=4)
    direct.save(tmp_path / "module.snn.onnx")
    export_onnx(module, (3, 32, 32), tmp_path / "resnet18.onnx")
    via_file = snnc.compile(tmp_path / "resnet18.onnx", x.numpy(), timesteps=4)
    via_file.save(tmp_path / "file.snn.onnx")
    assert len(direct.graph.find("neuron")) == 17
    assert (tmp_path / "module.snn.onnx").read_bytes() == (tmp_path / "file.snn.onnx").read_bytes()


def test_calibrate_module_and_dataloader_equal_the_array_route(data, tmp_path):
    train, test = data
    torch.manual_seed(0)
    module = DigitsCNN(width=4).eval()
    export_onnx(module, (1, 8, 8), tmp_path / "cnn.onnx")
    # a copy: digits' x has a non-standard stride on its size-1 channel axis, which sends torch's conv
    # down its channels-last path (other roundings); a collated batch has standard strides
    x, y = train.x[:96].copy(), train.y[:96]
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=32)
    ref = snnc.calibrate(tmp_path / "cnn.onnx", x, timesteps=4, pipeline="light")
    for model in (
        snnc.calibrate(module, loader, timesteps=4, pipeline="light"),  # shape from the data
        snnc.calibrate(
            module,
            (torch.from_numpy(b) for b in np.split(x, 3)),
            timesteps=4,
            pipeline="light",
            example_input=(1, 8, 8),
        ),
    ):
        model.save(tmp_path / "a.snn.onnx")
        ref.save(tmp_path / "b.snn.onnx")
        assert (tmp_path / "a.snn.onnx").read_bytes() == (tmp_path / "b.snn.onnx").read_bytes()
    # evaluate takes a DataLoader of (x, y) batches as well as arrays
    test_loader = DataLoader(TensorDataset(torch.from_numpy(test.x[:64]), torch.from_numpy(test.y[:64])), batch_size=20)
    assert ref.evaluate(test_loader, timesteps=[1, 4]) == ref.evaluate(test.x[:64], test.y[:64], timesteps=[1, 4])


def test_bad_iterables_and_example_inputs_are_one_line_errors(data, tmp_path):
    train, _ = data
    module = DigitsCNN(width=4).eval()
    with pytest.raises(SnncError, match="empty"):
        snnc.compile(module, iter([]))
    with pytest.raises(SnncError, match="different sample shapes"):
        snnc.compile(module, [train.x[:4], train.x[:4, :, :4]])
    with pytest.raises(SnncError, match="some batches have labels"):
        snnc.compile(module, [(train.x[:4], train.y[:4]), train.x[4:8]])
    with pytest.raises(SnncError, match="exporter failed"):
        snnc.compile(module, train.x[:8], example_input=(3, 8, 8))  # 3 channels into a 1-channel conv
    export_onnx(module, (1, 8, 8), tmp_path / "cnn.onnx")
    with pytest.raises(SnncError, match="only for a torch.nn.Module"):
        snnc.compile(tmp_path / "cnn.onnx", train.x[:8], example_input=(1, 8, 8))
    model = snnc.compile(module, train.x[:8])
    with pytest.raises(SnncError, match="labels"):
        model.evaluate(train.x[:8])
    # the module's own mode is left as it was
    module.train()
    snnc.compile(module, train.x[:8])
    assert module.training


# ---- 2. to_torch --------------------------------------------------------------------------------
def _max_diff(module, model, x, steps):
    with torch.no_grad():
        out = module(torch.from_numpy(x), timesteps=steps).numpy()
    ref = model.run(x, timesteps=steps)
    assert out.shape == ref.shape
    return float(np.abs(out - ref).max()), float(np.abs(ref).max())


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_to_torch_equals_run_on_the_digits_cnn_and_a_resnet(small_digits_cnn, resnet, backend):
    path, train, test = small_digits_cnn
    cnn = snnc.compile(path, train.x[:256], timesteps=T)
    assert cnn.graph.find("maxpool") and all(m.attrs["spiking"] == "rate" for m in cnn.graph.find("maxpool"))
    hard = snnc.compile(path, train.x[:256], timesteps=T, neuron="lif", reset="hard", channelwise=True)
    out_pool = snnc.compile(path, train.x[:256], timesteps=T, maxpool="output", calibration="light")
    for model in (cnn, hard, out_pool, resnet):
        module = model.to_torch(backend=backend)
        for steps in (1, T, 13):
            diff, scale = _max_diff(module, model, test.x[:64], steps)
            assert scale > 0.1  # the outputs are not all zero
            assert diff < 1e-5, (steps, diff)


def test_to_torch_is_trainable(small_digits_cnn):
    path, train, test = small_digits_cnn
    model = snnc.compile(path, train.x[:256], timesteps=4)
    module = model.to_torch()
    names = {name.rsplit(".", 1)[-1] for name, p in module.named_parameters()}
    assert names == {"weight", "bias", "theta"}
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in module.parameters())
    x, y = torch.from_numpy(train.x[:64]), torch.from_numpy(train.y[:64])
    loss = nn.functional.cross_entropy(module(x, timesteps=4), y)
    loss.backward()
    grads = {name: float(p.grad.abs().sum()) for name, p in module.named_parameters()}
    assert all(g > 0 for g in grads.values()), grads  # every weight, bias and θ gets a surrogate gradient
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    before = loss.item()
    for _ in range(5):
        opt.step()
        opt.zero_grad()
        loss = nn.functional.cross_entropy(module(x, timesteps=4), y)
        loss.backward()
    assert loss.item() < before
    # the trained tensors go back into an artifact the runtime runs as the module does
    tuned = CompiledModel(module.write_back(), model.options)
    diff, _ = _max_diff(module, tuned, test.x[:32], 4)
    assert diff < 1e-5


def test_to_torch_compiles(small_digits_cnn, resnet):
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is not available")
    path, train, test = small_digits_cnn
    cnn = snnc.compile(path, train.x[:256], timesteps=T)
    for model in (cnn, resnet):
        module = model.to_torch(backend="torch")
        torch._dynamo.reset()
        try:
            compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
            with torch.no_grad():
                out = compiled(torch.from_numpy(test.x[:32]), timesteps=T).numpy()
        except RuntimeError as exc:  # e.g. a Python version dynamo does not support
            if "not supported" in str(exc):
                pytest.skip(f"torch.compile unavailable here: {exc}")
            raise
        assert np.abs(out - model.run(test.x[:32], timesteps=T)).max() < 1e-5


def test_to_torch_refuses_what_it_cannot_run(small_digits_cnn):
    path, train, _ = small_digits_cnn
    with pytest.raises(SnncError, match="rate-encoded"):
        snnc.compile(path, train.x[:64], timesteps=4, encoding="rate").to_torch()
    with pytest.raises(SnncError, match="backend"):
        snnc.compile(path, train.x[:64]).to_torch(backend="nope")


class PaddedPool(nn.Module):
    """A 3×3 max pool with stride 2, padding 1 and ceil mode: windows overlap and reach past the edges."""

    def __init__(self):
        super().__init__()
        self.conv, self.pool, self.fc = (
            nn.Conv2d(1, 6, 3, padding=1),
            nn.MaxPool2d(3, 2, 1, ceil_mode=True),
            nn.Linear(6 * 5 * 5, 10),
        )

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def test_gated_max_pooling_in_to_torch_and_onnx(small_digits_cnn, tmp_path):
    path, train, test = small_digits_cnn
    torch.manual_seed(0)
    for source in (path, PaddedPool().eval()):
        model = snnc.compile(source, train.x[:128], timesteps=T, maxpool="gated")
        assert all(m.attrs["spiking"] == "gated" for m in model.graph.find("maxpool"))
        for steps in (T, 20):
            ref = model.run(test.x[:100], timesteps=steps)
            model.save_onnx(tmp_path / "g.onnx", timesteps=steps)
            # onnxruntime sums its convolutions in another order than torch: a current within rounding of
            # θ can spike in one engine and not the other, and gated pooling then passes another input
            # on. Measured across ATEN_CPU_CAPABILITY=default|avx2|avx512: 1 sample of 100 flips (avx2,
            # T=20), all others agree to 1e-6; allow 2, hold the rest to 1e-5.
            err = np.abs(_ort(tmp_path / "g.onnx", test.x[:100]) - ref).max(axis=1)
            assert (err > 1e-5).sum() <= 2 and np.median(err) < 1e-5, err
            diff, scale = _max_diff(model.to_torch(), model, test.x[:100], steps)
            assert diff < 1e-5 and scale > 0.1


# ---- 3. standard ONNX ---------------------------------------------------------------------------
def _ort(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_export_onnx_cli_runs_in_onnxruntime_as_snnc_run(small_digits_cnn, tmp_path):
    path, train, test = small_digits_cnn
    np.savez(tmp_path / "calib.npz", x=train.x[:256])
    np.savez(tmp_path / "x.npz", x=test.x[:100])
    rc, _, err = snnc_cli("compile", path, "--calib", tmp_path / "calib.npz", "-o", tmp_path / "cnn.snn.onnx")
    assert rc == 0, err
    rc, out, err = snnc_cli(
        "export", tmp_path / "cnn.snn.onnx", "--format", "onnx", "--timesteps", T, "-o", tmp_path / "cnn.std.onnx"
    )
    assert rc == 0, err
    assert f"T={T}" in out
    model = onnx.load(tmp_path / "cnn.std.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert {op.domain for op in model.opset_import} == {""}  # standard operators only
    assert "Scan" in {n.op_type for n in model.graph.node}
    rc, _, err = snnc_cli(
        "run", tmp_path / "cnn.snn.onnx", "--input", tmp_path / "x.npz", "--timesteps", T, "-o", tmp_path / "y.npz"
    )
    assert rc == 0, err
    ref = np.load(tmp_path / "y.npz")["y"]
    got = _ort(tmp_path / "cnn.std.onnx", test.x[:100])
    assert np.abs(ref).max() > 0.1
    assert np.abs(got - ref).max() < 1e-5


@pytest.mark.parametrize(
    "options",
    [
        dict(neuron="lif"),
        dict(reset="hard"),
        dict(neuron="lif", tau=4.0, reset="hard", v0="zero", channelwise=True),
        dict(maxpool="output", calibration="light"),
        dict(calibration="advanced", iterations=20),
    ],  # potential offsets v_init
    ids=["lif", "hard", "lif-hard-zero-channelwise", "output-pool", "advanced"],
)
def test_export_onnx_equals_run(small_digits_cnn, tmp_path, options):
    path, train, test = small_digits_cnn
    model = snnc.compile(path, train.x[:256], timesteps=T, **options)
    for steps in (T, 3):
        model.save_onnx(tmp_path / "m.onnx", timesteps=steps)
        ref = model.run(test.x[:100], timesteps=steps)
        assert np.abs(_ort(tmp_path / "m.onnx", test.x[:100]) - ref).max() < 1e-5


def test_export_onnx_resnet_equals_run(resnet, data, tmp_path):
    _, test = data
    resnet.save_onnx(tmp_path / "r.onnx", timesteps=T)
    ref = resnet.run(test.x[:100], timesteps=T)
    assert np.abs(ref).max() > 0.1
    assert np.abs(_ort(tmp_path / "r.onnx", test.x[:100]) - ref).max() < 1e-5


class Gated(nn.Module):
    """conv-ReLU gated by its own sigmoid, then a softmax head: two analog islands."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(512, 10)

    def forward(self, x):
        a = torch.relu(self.conv(x))
        return torch.softmax(self.fc(torch.relu(torch.sigmoid(a) * a).flatten(1)), 1)


def test_analog_islands_in_to_torch_and_onnx(data, tmp_path):
    train, test = data
    torch.manual_seed(0)
    model = snnc.compile(Gated().eval(), train.x[:64], timesteps=T)
    assert model.report["spiking"]["analog_islands"] == 2
    for steps in (T, 40):  # 40: more steps than the runtime's largest chunk (MAX_CHUNK), whose running sums carry over
        ref = model.run(test.x[:50], timesteps=steps)
        model.save_onnx(tmp_path / "g.onnx", timesteps=steps)
        assert np.abs(_ort(tmp_path / "g.onnx", test.x[:50]) - ref).max() < 1e-5
        diff, scale = _max_diff(model.to_torch(), model, test.x[:50], steps)
        assert diff < 1e-5 and scale > 0.1


def test_export_onnx_refusals_are_one_line_errors(small_digits_cnn, tmp_path):
    path, train, _ = small_digits_cnn
    snnc.compile(path, train.x[:64], timesteps=4, encoding="rate").save(tmp_path / "rate.snn.onnx")
    rc, _, err = snnc_cli("export", tmp_path / "rate.snn.onnx", "--format", "onnx", "-o", tmp_path / "g.onnx")
    one_line_error(rc, err, "rate-encoded")
    rc, _, err = snnc_cli("export", tmp_path / "rate.snn.onnx", "--timesteps", "4", "-o", tmp_path / "g.nir")
    one_line_error(rc, err, "--timesteps", "--format onnx")
    rc, _, err = snnc_cli("export", path, "--format", "onnx", "-o", tmp_path / "ann.onnx")
    one_line_error(rc, err, "compile it")
    assert not (tmp_path / "g.onnx").exists() and not (tmp_path / "ann.onnx").exists()


def test_sequence_inputs_in_to_torch_and_onnx(tmp_path):
    """A directly trained artifact on [N, T_in, ...] frames (LIF, output max pooling, a sigmoid
    island): both take the first T frames, as the runtime does."""
    from snncompiler.train import LIF
    from snncompiler.train.lowering import to_compiled

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1),
        LIF(theta=0.5),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5),
        nn.Sigmoid(),
        nn.Linear(5, 3),
    ).eval()
    model = to_compiled(net, (2, 8, 8), timesteps=6, sequence=True)
    assert model.sequence
    x = (torch.rand(10, 6, 2, 8, 8) < 0.4).float().numpy()
    for steps in (6, 4):
        ref = model.run(x, timesteps=steps)
        model.save_onnx(tmp_path / "s.onnx", timesteps=steps)
        assert np.abs(_ort(tmp_path / "s.onnx", x) - ref).max() < 1e-5
        diff, scale = _max_diff(model.to_torch(), model, x, steps)
        assert diff < 1e-5 and scale > 0.1


def test_export_works_with_a_torch_without_the_dynamo_switch(monkeypatch):
    """torch>=2.4 is the declared bound; torch.onnx.export's `dynamo` keyword is newer, so it is
    passed only where the signature has it (the TorchScript exporter is the only one before)."""
    import inspect

    from snncompiler.formats.onnx import from_torch

    real = torch.onnx.export
    calls = []

    def old_export(model, args, f, input_names=None, output_names=None, opset_version=None, dynamic_axes=None):
        calls.append(opset_version)
        return real(
            model,
            args,
            f,
            input_names=input_names,
            output_names=output_names,
            opset_version=opset_version,
            dynamic_axes=dynamic_axes,
            **({"dynamo": False} if "dynamo" in inspect.signature(real).parameters else {}),
        )

    monkeypatch.setattr(torch.onnx, "export", old_export)
    data = from_torch.export_onnx_bytes(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), (4,))
    assert calls == [17] and len(onnx.load_from_string(data).graph.node) == 2
