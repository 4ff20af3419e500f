"""How much of a network spikes: the counts `snnc compile` and `snnc inspect` report, the
analog-heavy warning, --strict, and --substitute relu."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import snncompiler as snnc
from examples.workloads import export_onnx
from snncompiler.analysis.summary import MIN_SPIKING_SHARE, analog_heavy_warning, spiking_share
from snncompiler.formats.onnx import load_graph

CLI = [sys.executable, "-m", "snncompiler.cli"]


class Known(nn.Module):
    """conv 1→4 (3×3, pad 1) on 6×6 → ReLU → conv 4→4 → Sigmoid → flatten → linear 144→5.
    MACs per sample: encoding 36·4·9 = 1296, spiking 36·4·36 = 5184, analog (the linear reads
    the sigmoid) 144·5 = 720; 1 neuron layer, 1 analog island; share 5184 / 5904."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.Sigmoid(),
            nn.Flatten(),
            nn.Linear(144, 5),
        )

    def forward(self, x):
        return self.net(x)


def _data(n=64, shape=(1, 6, 6), seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n,) + shape).astype(np.float32)


def test_share_counts_on_a_known_model(tmp_path):
    torch.manual_seed(0)
    path = export_onnx(Known().eval(), (1, 6, 6), tmp_path / "known.onnx")
    share = spiking_share(load_graph(path))
    assert (share["neurons"], share["analog_islands"]) == (1, 1)
    assert share["islands_by_activation"] == {"Sigmoid": 1}
    assert (share["encoding_macs"], share["spiking_macs"], share["analog_macs"]) == (1296, 5184, 720)
    assert share["spiking_share"] == pytest.approx(5184 / 5904)
    compiled = snnc.compile(path, _data())  # the same counts on the compiled network
    assert {k: compiled.report["spiking"][k] for k in share} == share
    assert compiled.report["spiking"]["warning"] is None


def test_share_follows_spikes_through_pooling_and_residual_adds(tmp_path):
    from conftest import Residual

    torch.manual_seed(0)
    share = spiking_share(load_graph(export_onnx(Residual().eval(), (1, 8, 8), tmp_path / "res.onnx")))
    # stem conv reads the input; branch conv and head linear read spikes (the head through an
    # add of two neurons, a ReLU, an average pool and a flatten)
    assert share["neurons"] == 3 and share["analog_islands"] == 0
    assert share["encoding_macs"] == 64 * 4 * 9 and share["spiking_macs"] == 64 * 4 * 36 + 64 * 3
    assert share["spiking_share"] == 1.0


class SiLUNet(nn.Module):
    def __init__(self, act=nn.SiLU):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(36, 24), act(), nn.Linear(24, 16), act(), nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x)


def test_zero_neurons_warns_names_the_activations_and_the_option(tmp_path, caplog):
    torch.manual_seed(0)
    path = export_onnx(SiLUNet().eval(), (1, 6, 6), tmp_path / "silu.onnx")
    with caplog.at_level("WARNING"):
        model = snnc.compile(path, _data())
    warning = model.report["spiking"]["warning"]
    assert "0 neurons" in warning and "2 analog islands (SiLU ×2)" in warning and "--substitute relu" in warning
    assert warning in caplog.text and "\n" not in warning
    with pytest.raises(snnc.SnncError, match="--strict: .*0 neurons"):
        snnc.compile(path, _data(), strict=True)


def test_analog_heavy_rule():
    base = {"neurons": 3, "analog_islands": 4, "islands_by_activation": {"HardSwish": 4}, "spiking_share": 0.49}
    graph = snnc.Graph([], [], [])
    assert "49%" in analog_heavy_warning(base, graph, "m")
    assert analog_heavy_warning({**base, "spiking_share": MIN_SPIKING_SHARE}, graph, "m") is None
    assert analog_heavy_warning({**base, "spiking_share": None}, graph, "m") is None  # nothing after the input layer
    assert "0 neurons" in analog_heavy_warning({**base, "neurons": 0, "spiking_share": None}, graph, "m")


def test_substitute_relu_spikes_and_its_ann_is_the_clipped_relu_model(tmp_path):
    torch.manual_seed(0)
    net = SiLUNet().eval()
    path = export_onnx(net, (1, 6, 6), tmp_path / "silu.onnx")
    model = snnc.compile(path, _data(), substitute="relu")
    assert [n.op for n in model.graph.nodes if n.op not in ("linear", "flatten")] == ["neuron", "neuron"]
    assert model.report["spiking"]["analog_islands"] == 0 and model.report["spiking"]["warning"] is None
    assert model.report["substituted"] == {"SiLU": 2}
    thetas = [float(n.params["theta"]) for n in model.graph.find("neuron")]

    def reference(x):  # the same network with each SiLU replaced by clip(x, 0, θ) of its neuron
        h = torch.clamp(net.net[1](net.net[0](x)), 0, thetas[0])
        h = torch.clamp(net.net[3](h), 0, thetas[1])
        return net.net[5](h)

    x = _data(16, seed=3)
    with torch.no_grad():
        want = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.ann(x), want, rtol=1e-5, atol=1e-6)
    # the artifact records the setting, and SNN output approaches that ANN
    assert model.settings()["substitute"] == "relu"
    snn = model.run(x, 256)
    assert float(np.abs(snn - want).max()) < 0.1 * float(np.abs(want).max())


@pytest.mark.parametrize("act,name", [(nn.Hardswish, "HardSwish"), (nn.GELU, "GELU")])
def test_substitute_replaces_hardswish_and_gelu(act, name, tmp_path):
    torch.manual_seed(0)
    path = export_onnx(SiLUNet(act).eval(), (1, 6, 6), tmp_path / "m.onnx")
    model = snnc.compile(path, _data(), substitute="relu")
    assert len(model.graph.find("neuron")) == 2 and model.report["substituted"] == {name: 2}


def test_substitute_is_validated():
    with pytest.raises(snnc.SnncError, match="substitute: expected one of relu"):
        snnc.compile(snnc.Graph([], [], []), _data(), substitute="tanh")


def test_cli_reports_share_warns_and_strict_exits_2(tmp_path):
    torch.manual_seed(0)
    path = export_onnx(SiLUNet().eval(), (1, 6, 6), tmp_path / "silu.onnx")
    np.savez(tmp_path / "calib.npz", x=_data())
    out = tmp_path / "out.snn.onnx"
    proc = subprocess.run(
        CLI + ["compile", str(path), "--calib", str(tmp_path / "calib.npz"), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "spiking: 0 neuron layers, 2 analog islands" in proc.stdout
    assert sum("0 neurons, nothing spikes" in line for line in proc.stderr.splitlines()) == 1
    proc = subprocess.run(
        CLI + ["compile", str(path), "--calib", str(tmp_path / "calib.npz"), "-o", str(out), "--strict"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "--strict" in proc.stderr and "SiLU ×2" in proc.stderr
    proc = subprocess.run(
        CLI + ["compile", str(path), "--calib", str(tmp_path / "calib.npz"), "-o", str(out), "--substitute", "relu"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "spiking: 2 neuron layers, 0 analog islands" in proc.stdout and "snnc finetune" in proc.stderr
    proc = subprocess.run(CLI + ["inspect", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0 and "spiking: 0 neuron layers, 2 analog islands" in proc.stdout
    assert "--substitute relu" in proc.stderr
    proc = subprocess.run(CLI + ["inspect", str(path), "--strict"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    proc = subprocess.run(CLI + ["inspect", str(path), "--json"], capture_output=True, text=True, check=True)
    spiking = json.loads(proc.stdout)["totals"]["spiking"]
    assert spiking["neurons"] == 0 and spiking["islands_by_activation"] == {"SiLU": 2}


class Readout(nn.Module):
    """conv-ReLU-conv-ReLU → flatten → linear, then a softmax (and argmax) readout; optionally a
    SiLU gate inside the network, ahead of the linear layer (most MACs still read spikes)."""

    def __init__(self, gate: bool = False, argmax: bool = False):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(144, 5)
        self.gate, self.argmax = gate, argmax

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        if self.gate:
            h = h * torch.sigmoid(h)  # a SiLU inside the network: it feeds the linear layer
        p = torch.softmax(self.fc(h.flatten(1)), 1)
        return p.argmax(1) if self.argmax else p


@pytest.mark.parametrize("argmax", [False, True])
def test_strict_allows_a_readout_island_and_refuses_one_inside(argmax, tmp_path):
    torch.manual_seed(0)
    path = export_onnx(Readout(argmax=argmax).eval(), (1, 6, 6), tmp_path / "readout.onnx")
    share = spiking_share(load_graph(path))
    islands = 2 if argmax else 1
    assert (share["analog_islands"], share["readout_islands"]) == (islands, islands)
    model = snnc.compile(path, _data(), strict=True)  # decoding is not computation: allowed
    assert model.report["spiking"]["readout_islands"] == islands
    gated = export_onnx(Readout(gate=True, argmax=argmax).eval(), (1, 6, 6), tmp_path / "gated.onnx")
    share = spiking_share(load_graph(gated))
    assert (share["analog_islands"], share["readout_islands"]) == (islands + 1, islands)
    assert share["readout_by_activation"] == ({"Softmax": 1, "ArgMax": 1} if argmax else {"Softmax": 1})
    with pytest.raises(snnc.SnncError, match=r"--strict: .*1 analog islands inside the network.*\(SiLU ×1\)$"):
        snnc.compile(gated, _data(), strict=True)


def test_an_island_read_by_a_layer_and_by_the_output_is_not_a_readout(tmp_path):
    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(36, 8), nn.Linear(8, 3)

        def forward(self, x):
            s = torch.sigmoid(torch.relu(self.a(x.flatten(1))))
            return s, self.b(s)

    torch.manual_seed(0)
    path = export_onnx(Both().eval(), (1, 6, 6), tmp_path / "both.onnx")
    share = spiking_share(load_graph(path))
    assert (share["analog_islands"], share["readout_islands"]) == (1, 0)
    with pytest.raises(snnc.SnncError, match="Sigmoid ×1"):
        snnc.compile(path, _data(), strict=True)
