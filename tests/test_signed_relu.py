"""LeakyReLU and PReLU compile to two spiking neurons, relu(x) − α·relu(−x), not an analog island.

Oracles: onnxruntime for the ANN the compiler builds (the split must be exact), the clipped ANN
the artifact carries for the SNN's convergence. The spiking blocks of test_spiking_blocks.py
run the same ops through every runtime (reloaded artifact, to_torch, standard-ONNX export).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import assert_graph_is_onnx_model

import snncompiler as snnc
from snncompiler.analysis.summary import spiking_share
from snncompiler.formats.onnx import load_graph
from snncompiler.formats.onnx.from_torch import export_onnx


class Net(nn.Module):
    """conv → activation → conv → activation → flatten → linear → activation → linear."""

    def __init__(self, first: nn.Module, second: nn.Module, third: nn.Module):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), first, nn.Conv2d(4, 4, 3, padding=1), second, nn.Flatten()
        )
        self.head = nn.Sequential(nn.Linear(144, 16), third, nn.Linear(16, 5))

    def forward(self, x):
        return self.head(self.body(x))


def _prelu(channels: int, slopes) -> nn.PReLU:
    act = nn.PReLU(channels)
    with torch.no_grad():
        act.weight.copy_(torch.tensor(slopes, dtype=torch.float32))
    return act


CASES = {
    # LeakyReLU; per-channel PReLU with a negative slope and one above 1; a scalar PReLU on a linear layer
    "mixed": lambda: Net(nn.LeakyReLU(0.1), _prelu(4, [0.25, -0.5, 1.5, 0.0]), nn.PReLU(1, 0.3)),
    "leaky only": lambda: Net(nn.LeakyReLU(0.2), nn.LeakyReLU(0.01), nn.LeakyReLU(0.3)),
}


def _data(n=64, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 1, 6, 6)).astype(np.float32)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    torch.manual_seed(0)
    path = export_onnx(CASES[request.param]().eval(), (1, 6, 6), tmp_path_factory.mktemp("signed") / "m.onnx")
    return path, snnc.compile(path, _data(), timesteps=8, threshold="max", quiet=True)


def test_the_split_ann_is_the_onnx_model(case):
    """The compiler's ANN (before neurons clip it) computes what onnxruntime computes."""
    path, model = case
    ann = model.ann_graph
    assert not [n for n in ann.nodes if n.op in ("leaky_relu", "prelu")]
    assert_graph_is_onnx_model(ann, path, _data(32, seed=1), rtol=1e-5, atol=1e-6)


def test_each_activation_is_two_neurons_and_nothing_is_analog(case):
    path, model = case
    share = model.report["spiking"]
    assert (share["neurons"], share["analog_islands"], share["spiking_share"]) == (6, 0, 1.0)
    assert spiking_share(load_graph(path)) == {k: share[k] for k in share if k != "warning"}
    snnc.compile(path, _data(), timesteps=8, strict=True, quiet=True)  # nothing for --strict to refuse
    x = _data(32, seed=2)
    spikes = model.runner().rates(torch.from_numpy(x), 8, [n.outputs[0] for n in model.graph.find("neuron")])
    assert all(float(r.abs().sum()) > 0 for r in spikes.values())  # both halves of every pair fire


def test_snn_converges_to_its_ann(case):
    """θ at the activation maximum, no calibration: the rate error shrinks with T (measured:
    mean error / output scale 0.015–0.024 at T=16, 0.0003–0.0004 at T=1024 on these nets, the
    same under ATEN_CPU_CAPABILITY=default, avx2 and avx512)."""
    _, model = case
    x = _data(32, seed=3)
    ann = model.ann(x)
    scale = float(np.abs(ann).max())
    errors = [float(np.abs(model.run(x, t) - ann).mean()) / scale for t in (16, 1024)]
    assert errors[1] < 0.005 and errors[1] < 0.1 * errors[0], errors


def test_zero_slope_is_a_plain_relu(tmp_path):
    torch.manual_seed(0)
    path = export_onnx(Net(nn.LeakyReLU(0.0), nn.ReLU(), nn.ReLU()).eval(), (1, 6, 6), tmp_path / "zero.onnx")
    model = snnc.compile(path, _data(), quiet=True)
    assert model.report["spiking"]["neurons"] == 3 and not model.graph.find("neg")


def test_inspect_says_spiking(tmp_path):
    torch.manual_seed(0)
    path = export_onnx(CASES["mixed"]().eval(), (1, 6, 6), tmp_path / "m.onnx")
    proc = subprocess.run(
        [sys.executable, "-m", "snncompiler.cli", "inspect", str(path)], capture_output=True, text=True, check=True
    )
    rows = [line for line in proc.stdout.splitlines() if "PRelu" in line or "LeakyRelu" in line]
    assert len(rows) == 3 and all("spiking" in r and "2 neurons" in r for r in rows)
    assert "6 neuron layers, 0 analog islands" in proc.stdout
