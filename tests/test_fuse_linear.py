"""``fuse_linear``: 1×1 conv and linear layers reading a linear function of spikes read the spikes.

Oracles: onnxruntime for the fused ANN (the composition must be exact); the unfused compile of
the same model for the SNN (every neuron must see the same input at every step, so it fires the
same spikes); the spiking share for which layers read spikes.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from conftest import assert_graph_is_onnx_model, reloaded_and_recalibrated

import snncompiler as snnc
from snncompiler.analysis.summary import spiking_share
from snncompiler.formats.onnx import load_graph
from snncompiler.formats.onnx.from_torch import export_onnx
from snncompiler.passes import PassContext, fuse_linear, run_pipeline
from tests.test_signed_inputs import TinyMobileNet, _data, _randomise_bn


class StridedBottleneck(nn.Module):
    """ReLU, a strided 1×1 projection and a plain one (no activation), two readers of the second:
    a 1×1 conv (fused: strides compose) and a 3×3 conv (not pointwise: left as it is)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(4, 3, 1, stride=2), nn.Conv2d(3, 3, 1))
        self.pointwise = nn.Sequential(nn.Conv2d(3, 5, 1), nn.ReLU())
        self.spatial = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(5 * 9 * 2, 4)

    def forward(self, x):
        v = self.project(self.stem(x))
        return self.head(torch.cat([self.pointwise(v), self.spatial(v)], 1).flatten(1))


class BottleneckMLP(nn.Sequential):
    """Linear → ReLU → Linear (no activation) → Linear → ReLU → Linear."""

    def __init__(self):
        super().__init__(nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 4), nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 3))


def _fused_ann(path):
    """The fusion pass alone on the ANN read from ``path`` (ReLU sites count as spikes)."""
    ctx = PassContext(options={"fuse_linear": True}, calib=None)
    return run_pipeline(load_graph(path), ctx, [fuse_linear])


@pytest.mark.parametrize(
    "build,shape",
    [
        (lambda: _randomise_bn(TinyMobileNet()), (1, 6, 6)),
        (lambda: StridedBottleneck().eval(), (1, 6, 6)),
        (lambda: BottleneckMLP().eval(), (36,)),
    ],
    ids=["mobilenet", "strided", "mlp"],
)
def test_the_fused_ann_is_the_onnx_model(build, shape, tmp_path):
    torch.manual_seed(0)
    path = export_onnx(build(), shape, tmp_path / "m.onnx")
    fused = _fused_ann(path)
    assert spiking_share(fused)["spiking_share"] > spiking_share(load_graph(path))["spiking_share"]
    x = np.random.default_rng(1).uniform(-1, 1, (16, *shape)).astype(np.float32)
    assert_graph_is_onnx_model(fused, path, x, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    torch.manual_seed(0)
    path = export_onnx(_randomise_bn(TinyMobileNet()), (1, 6, 6), tmp_path_factory.mktemp("fuse") / "m.onnx")
    plain = snnc.compile(path, _data(), timesteps=8, quiet=True)
    fused = snnc.compile(path, _data(), timesteps=8, fuse_linear=True, quiet=True)
    return path, plain, fused


def test_every_layer_reads_spikes_and_fires_as_before(mobilenet):
    """Same neurons, same spikes at every step (the neuron inputs differ by float rounding only),
    every MAC after the input layer spike-driven, at the price of the MACs the report names."""
    _, plain, fused = mobilenet
    assert plain.report["spiking"]["spiking_share"] < 0.9 and fused.report["spiking"]["spiking_share"] == 1.0
    assert fused.report["spiking"]["neurons"] == plain.report["spiking"]["neurons"]
    macs = fused.report["fuse_linear_macs"]
    assert macs["before"] == plain.report["spiking"]["macs"] and macs["after"] == fused.report["spiking"]["macs"]
    assert macs["after"] > macs["before"]
    x = torch.from_numpy(_data(32, seed=3))
    names = [n.outputs[0] for n in plain.graph.find("neuron")]
    assert names == [n.outputs[0] for n in fused.graph.find("neuron")]
    for t in (1, 8):
        a, b = plain.runner().rates(x, t, names), fused.runner().rates(x, t, names)
        for name in names:
            assert float((a[name] - b[name]).abs().max()) <= 1e-5 * max(1.0, float(a[name].abs().max())), name
    for t in (4, 32):
        np.testing.assert_allclose(fused.run(x.numpy(), t), plain.run(x.numpy(), t), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fused.ann(x.numpy()), plain.ann(x.numpy()), rtol=1e-4, atol=1e-5)


def test_calibrated_networks_fuse_after_calibration(mobilenet):
    """Calibration runs on the network it knows; fusion then keeps what it computes."""
    path, _, _ = mobilenet
    x = _data(16, seed=4)
    plain = snnc.compile(path, _data(), timesteps=4, calibration="light", quiet=True)
    fused = snnc.compile(path, _data(), timesteps=4, calibration="light", fuse_linear=True, quiet=True)
    np.testing.assert_allclose(fused.run(x, 4), plain.run(x, 4), rtol=1e-4, atol=1e-5)


def test_saved_reloaded_and_recalibrated(mobilenet, tmp_path):
    _, _, fused = mobilenet
    loaded, again = reloaded_and_recalibrated(fused, tmp_path, _data(8, seed=5), _data())
    assert loaded.options["fuse_linear"] is True
    assert again.report["spiking"]["spiking_share"] == 1.0


def test_what_cannot_fuse_is_left_alone_and_signed_spikes_takes_it(tmp_path):
    """The 3×3 conv reading the bottleneck stays analog under fuse_linear alone; with
    signed_spikes too it reads a pair of neurons, and the 1×1 reader is still fused (no pair)."""
    torch.manual_seed(0)
    path = export_onnx(StridedBottleneck().eval(), (1, 6, 6), tmp_path / "s.onnx")
    data = np.random.default_rng(0).uniform(-1, 1, (64, 1, 6, 6)).astype(np.float32)
    fused = snnc.compile(path, data, fuse_linear=True, quiet=True)
    assert fused.report["spiking"]["spiking_share"] < 1.0
    both = snnc.compile(path, data, fuse_linear=True, signed_spikes=True, quiet=True)
    assert both.report["spiking"]["spiking_share"] == 1.0
    assert both.report["spiking"]["neurons"] == fused.report["spiking"]["neurons"] + 2


def test_cli_flag(tmp_path):
    torch.manual_seed(0)
    path = export_onnx(BottleneckMLP().eval(), (36,), tmp_path / "mlp.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).uniform(-1, 1, (64, 36)).astype(np.float32))
    cmd = [sys.executable, "-m", "snncompiler.cli", "compile", str(path), "--calib", str(tmp_path / "calib.npz")]
    proc = subprocess.run([*cmd, "-o", str(tmp_path / "out.snn.onnx"), "--fuse-linear"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "100.0% of the MACs after the input layer read spikes" in proc.stdout + proc.stderr


def test_the_option_is_checked():
    with pytest.raises(snnc.errors.OptionError, match="fuse_linear"):
        snnc.compile(BottleneckMLP().eval(), np.zeros((4, 36), np.float32), fuse_linear=1)


def test_to_torch_and_the_standard_onnx_export_run_the_fused_network(mobilenet, tmp_path):
    _, _, fused = mobilenet
    x = _data(8, seed=6)
    want = fused.run(x, 8)
    got = fused.to_torch()(torch.from_numpy(x), 8).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    fused.save_onnx(tmp_path / "std.onnx", 8)
    session = ort.InferenceSession(str(tmp_path / "std.onnx"))
    exported = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(exported, want, rtol=1e-4, atol=1e-4)
