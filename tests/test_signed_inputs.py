"""``signed_spikes``: layers that read an analog value read it as relu(x) − relu(−x), two neurons.

Oracles: onnxruntime for the ANN the compiler builds (the rewrite must be exact), the clipped ANN
the artifact carries for the SNN's convergence; the spiking share (analysis/summary.py) for which
layers read spikes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import assert_graph_is_onnx_model, reloaded_and_recalibrated

import snncompiler as snnc
from examples.workloads import InvertedResidual
from snncompiler.analysis.summary import analog_heavy_warning, spiking_share
from snncompiler.errors import OptionError
from snncompiler.formats.onnx import load_graph
from snncompiler.formats.onnx.from_torch import export_onnx
from tests.test_cli_ux import snnc_cli


class TinyMobileNet(nn.Module):
    """Stem, two inverted residual blocks (the first with its residual Add), 1×1 head conv, GAP, linear:
    the expansion conv of the second block reads the first block's linear bottleneck plus its input."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(4, 4, expand=2), InvertedResidual(4, 6, 2, expand=2))
        self.head = nn.Sequential(
            nn.Conv2d(6, 8, 1), nn.BatchNorm2d(8), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)
        )

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class IslandNet(nn.Module):
    """conv → ReLU → conv → Sigmoid (an analog island) → conv → flatten → linear."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.Sigmoid(),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.Flatten(),
            nn.Linear(144, 5),
        )

    def forward(self, x):
        return self.body(x)


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Batch-norm statistics and affine terms away from the identity, so folding them is tested."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.num_features, generator=g))
    return model.eval()


def _data(n=64, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 1, 6, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    torch.manual_seed(0)
    path = export_onnx(_randomise_bn(TinyMobileNet()), (1, 6, 6), tmp_path_factory.mktemp("signed") / "m.onnx")
    plain = snnc.compile(path, _data(), timesteps=8, threshold="max", quiet=True)
    signed = snnc.compile(path, _data(), timesteps=8, threshold="max", signed_spikes=True, quiet=True)
    return path, plain, signed


def test_the_rewritten_ann_is_the_onnx_model(mobilenet):
    """The compiler's ANN with the pairs (before neurons clip it) computes what onnxruntime computes."""
    path, _, signed = mobilenet
    assert_graph_is_onnx_model(signed.ann_graph, path, _data(32, seed=1), rtol=1e-5, atol=1e-6)


def test_every_layer_after_the_input_reads_spikes(mobilenet):
    """Without the option the second block's expansion conv reads the bottleneck (analog); with it,
    one pair of neurons per analog value read by a layer: two (the first block's residual sum, the
    second block's bottleneck read by the head conv)."""
    path, plain, signed = mobilenet
    before, after = plain.report["spiking"], signed.report["spiking"]
    assert before["spiking_share"] < 0.9 and after["spiking_share"] == 1.0
    assert (before["neurons"], after["neurons"]) == (6, 10)
    assert after["encoding_macs"] == before["encoding_macs"] and after["macs"] == before["macs"]
    assert spiking_share(load_graph(path))["spiking_share"] == pytest.approx(before["spiking_share"])
    # the residual Add still reads the exact bottleneck: the pair sits on the layer's input only
    ann = signed.ann_graph
    (add,) = [n for n in ann.nodes if n.op == "add" and len(n.inputs) == 2]
    producers = {o: n for n in ann.nodes for o in n.outputs}
    assert {producers[i].op for i in add.inputs} == {"conv", "clip"}
    # the stem reads the graph input: the encoding layer is left alone
    assert ann.nodes[0].op == "conv" and ann.nodes[0].inputs[0] == ann.inputs[0].name
    assert signed.options["signed_spikes"] is True and not plain.options["signed_spikes"]


def test_both_halves_fire_and_the_snn_converges(mobilenet):
    """θ at the activation maximum, no calibration: every neuron of every pair fires, and the rate
    error shrinks with T as it does without the option."""
    _, _, signed = mobilenet
    x = _data(32, seed=3)
    spikes = signed.runner().rates(torch.from_numpy(x), 8, [n.outputs[0] for n in signed.graph.find("neuron")])
    assert all(float(r.abs().sum()) > 0 for r in spikes.values())
    ann = signed.ann(x)
    scale = float(np.abs(ann).max())
    errors = [float(np.abs(signed.run(x, t) - ann).mean()) / scale for t in (16, 1024)]
    assert errors[1] < 0.01 and errors[1] < 0.2 * errors[0], errors


def test_recorded_reloaded_and_recalibrated_without_a_second_pair(mobilenet, tmp_path):
    _, _, signed = mobilenet
    loaded, again = reloaded_and_recalibrated(signed, tmp_path, _data(8, seed=4), _data())
    assert loaded.options["signed_spikes"] is True
    assert again.report["spiking"]["neurons"] == signed.report["spiking"]["neurons"]


def test_an_island_output_read_by_a_layer_is_paired(tmp_path):
    """The Sigmoid stays an analog island; the conv after it reads its output as spikes."""
    torch.manual_seed(0)
    path = export_onnx(IslandNet().eval(), (1, 6, 6), tmp_path / "island.onnx")
    plain = snnc.compile(path, _data(), quiet=True)
    signed = snnc.compile(path, _data(), signed_spikes=True, quiet=True)
    assert plain.report["spiking"]["analog_islands"] == signed.report["spiking"]["analog_islands"] == 1
    assert plain.report["spiking"]["spiking_share"] < 0.5 and signed.report["spiking"]["spiking_share"] == 1.0
    assert_graph_is_onnx_model(signed.ann_graph, path, _data(16, seed=5), rtol=1e-5, atol=1e-6)


def test_a_product_of_two_activations_is_left_alone(tmp_path):
    """MatMul of two activations is analog whatever it reads: no pair is put in front of it."""

    class Gram(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            h = self.fc(x)
            return torch.relu(h) @ h.transpose(1, 2)

    torch.manual_seed(0)
    path = export_onnx(Gram().eval(), (4, 6), tmp_path / "gram.onnx")
    data = np.random.default_rng(0).normal(size=(32, 4, 6)).astype(np.float32)
    model = snnc.compile(path, data, signed_spikes=True, quiet=True)
    assert not model.graph.find("sub") and model.report["spiking"]["neurons"] == 1


def test_the_option_is_checked():
    with pytest.raises(OptionError, match="signed_spikes"):
        snnc.compile(TinyMobileNet().eval(), _data(), signed_spikes="yes")


def test_the_warning_names_the_option_when_no_activation_is_to_blame(tmp_path):
    """A ReLU after the first conv, then three linear convs: most MACs read analog values, no island."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), *[nn.Conv2d(8, 8, 3, padding=1) for _ in range(3)]
    ).eval()
    path = export_onnx(net, (1, 6, 6), tmp_path / "linear.onnx")
    graph = load_graph(path)
    warning = analog_heavy_warning(spiking_share(graph), graph, "linear.onnx")
    assert "--signed-spikes" in warning and "analog islands" not in warning
    proc = snnc_cli(
        "compile",
        path,
        "--calib",
        _calib(tmp_path),
        "-o",
        tmp_path / "out.snn.onnx",
        "--signed-spikes",
        "--strict",
    )
    assert proc.returncode == 0, proc.stderr
    assert "100.0% of the MACs after the input layer read spikes" in proc.stdout + proc.stderr


def _calib(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, x=_data())
    return path
