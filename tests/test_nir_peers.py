"""NIR both ways with the peers that exist: snnTorch (``snntorch.import_nir`` /
``snntorch.export_nir``) and Norse (``norse.torch.from_nir`` / ``norse.torch.to_nir``).

Each direction runs the same input for T steps in both frameworks and compares the running mean
of the output at every step (what ``snnc run`` reports at T = t). Measured max abs differences
(snncompiler 0.1.0, snnTorch 1.0.0, Norse 1.1.0, nir 1.0.8, nirtorch 2.6; README "NIR
interoperability"): snnc → snnTorch (LIF) 3.6e-8, snnc → Norse (IF) 2.8e-8, snnTorch → snnc
7.0e-8, Norse → snnc 4.7e-8 (IF) and 1.5e-8 (LIF, with --dt 1e-6); asserted at 1e-5. Where a
peer cannot match, the test asserts the failure and its upstream cause, named in the README.
The peers are not patched.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import snncompiler as snnc
from examples.workloads import export_onnx

nir = pytest.importorskip("nir")
T = 16
ATOL = 1e-5  # measured 1.5e-8 .. 7.0e-8: float32 rounding of the same arithmetic


def _compile(tmp_path, neuron: str):
    """A conv/avgpool/linear net compiled with hard reset from 0 (what NIR can say exactly)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(24, 3),
    )
    path = export_onnx(net, (1, 8, 8), tmp_path / "m.onnx")
    x = np.random.default_rng(0).random((24, 1, 8, 8), dtype=np.float32)
    extra = {"tau": 4.0} if neuron == "lif" else {}
    model = snnc.compile(str(path), x, timesteps=T, quiet=True, reset="hard", v0="zero", neuron=neuron, **extra)
    return model, x


def _snnc_steps(model, x: np.ndarray) -> np.ndarray:
    """[T, N, ...]: snnc's mean output over the first t steps, t = 1..T."""
    ck = model.run(x, T, checkpoints=list(range(1, T + 1)))
    return np.stack([ck[t] for t in range(1, T + 1)])


def _running_mean(outputs) -> np.ndarray:
    out = np.stack([np.asarray(o) for o in outputs])
    return np.cumsum(out, 0) / np.arange(1, T + 1).reshape(-1, *([1] * (out.ndim - 1)))


def _run_imported(module, x: np.ndarray) -> np.ndarray:
    """Run a nirtorch-built module for T steps on a constant input, threading its state."""
    xt, state, outs = torch.from_numpy(x), None, []
    with torch.no_grad():
        for _ in range(T):
            out, state = module(xt, state)
            outs.append(out.numpy())
    return _running_mean(outs)


def _export(*args) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "snncompiler.cli", "export", *map(str, args)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


# ---- snnc → peers -----------------------------------------------------------------------
def test_snnc_lif_runs_in_snntorch(tmp_path):
    pytest.importorskip("snntorch")
    from snntorch.import_nir import import_from_nir

    model, x = _compile(tmp_path, "lif")
    model.save_nir(tmp_path / "m.nir", flatten="torch")
    theirs = _run_imported(import_from_nir(nir.read(str(tmp_path / "m.nir"), type_check=False)), x)
    ours = _snnc_steps(model, x)
    assert np.abs(ours).max() > 0.05
    np.testing.assert_allclose(theirs, ours, atol=ATOL)
    # the same file reads back into snnc (NIR's type check refuses the batched Flatten: retried without)
    np.testing.assert_allclose(_snnc_steps(snnc.load(tmp_path / "m.nir"), x), ours, atol=ATOL)


def test_snntorch_needs_the_torch_flatten_convention(tmp_path):
    """snnTorch builds torch.nn.Flatten(start_dim, end_dim) from NIR's per-sample start_dim 0 and
    runs it on a batch, flattening the batch axis too: hence --nir-flatten torch."""
    pytest.importorskip("snntorch")
    from snntorch.import_nir import import_from_nir

    model, x = _compile(tmp_path, "lif")
    model.save_nir(tmp_path / "m.nir")
    module = import_from_nir(nir.read(str(tmp_path / "m.nir")))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        _run_imported(module, x)


def test_snntorch_cannot_run_if_neurons(tmp_path):
    """snnTorch's importer accepts nir.IF only with r = 1 (our r = 1/dt fails its assertion), and
    even then builds snn.Leaky(beta=0.9), a leaky neuron: IF models go to snnTorch as LIF only."""
    pytest.importorskip("snntorch")
    from snntorch.import_nir import import_from_nir

    model, _ = _compile(tmp_path, "if")
    model.save_nir(tmp_path / "m.nir", flatten="torch")
    with pytest.raises(Exception, match="r != 1 not supported"):
        import_from_nir(nir.read(str(tmp_path / "m.nir"), type_check=False))


def test_snnc_if_runs_in_norse(tmp_path):
    """Norse reads no AvgPool2d and no Scale: `--nir-avgpool sum` writes SumPool2d and folds 1/k²
    into the next layer; its IAF adds the input current as is, which our IF's r·dt = 1 means."""
    pytest.importorskip("norse")
    import norse.torch

    model, x = _compile(tmp_path, "if")
    artifact = tmp_path / "m.snn.onnx"
    model.save(artifact)
    _export(artifact, "-o", tmp_path / "m.nir", "--nir-flatten", "torch", "--nir-avgpool", "sum")
    graph = nir.read(str(tmp_path / "m.nir"), type_check=False)
    kinds = [type(n).__name__ for n in graph.nodes.values()]
    assert "SumPool2d" in kinds and "AvgPool2d" not in kinds and "Scale" not in kinds
    assert graph.metadata["flatten"] == "torch" and graph.metadata["avgpool"] == "sum"
    theirs = _run_imported(norse.torch.from_nir(graph, dt=float(graph.metadata["dt"]), ignore_warnings=True), x)
    ours = _snnc_steps(model, x)
    assert np.abs(ours).max() > 0.05
    np.testing.assert_allclose(theirs, ours, atol=ATOL)
    np.testing.assert_allclose(_snnc_steps(snnc.load(tmp_path / "m.nir"), x), ours, atol=ATOL)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="Norse's from_nir ignores nir.LIF's r (it logs 'r is expected to be set to 1'): our LIF "
    "writes r = τ, so Norse feeds 1/τ of the current (measured max difference 0.052)",
)
def test_snnc_lif_in_norse(tmp_path):
    pytest.importorskip("norse")
    import norse.torch

    model, x = _compile(tmp_path, "lif")
    model.save_nir(tmp_path / "m.nir", flatten="torch", avgpool="sum")
    graph = nir.read(str(tmp_path / "m.nir"), type_check=False)
    theirs = _run_imported(norse.torch.from_nir(graph, dt=float(graph.metadata["dt"]), ignore_warnings=True), x)
    np.testing.assert_allclose(theirs, _snnc_steps(model, x), atol=ATOL)


# ---- peers → snnc -----------------------------------------------------------------------
def test_snntorch_export_runs_on_snnc(tmp_path):
    """snnTorch's export_to_nir needs per-neuron beta and threshold tensors: with scalars its own
    nir type inference fails (LIF input_type [] from 0-d parameters, asserted below)."""
    pytest.importorskip("snntorch")
    import snntorch as snn
    import snntorch.utils
    from snntorch.export_nir import export_to_nir

    def leaky(shape, beta, threshold, per_neuron=True):
        if per_neuron:
            beta, threshold = torch.full(shape, beta), torch.full(shape, threshold)
        return snn.Leaky(beta=beta, threshold=threshold, init_hidden=True, reset_mechanism="zero")

    def net(per_neuron=True):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            leaky((4, 8, 8), 0.75, 0.5, per_neuron),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(64, 10),
            leaky((10,), 0.75, 0.3, per_neuron),
            nn.Linear(10, 3),
        )

    x = torch.rand(6, 1, 8, 8)
    with pytest.raises(ValueError, match="Type inference error"):
        export_to_nir(net(per_neuron=False), x[:1], ignore_dims=[0])
    module = net()
    nir.write(str(tmp_path / "snt.nir"), export_to_nir(module, x[:1], ignore_dims=[0]))
    snntorch.utils.reset(module)
    with torch.no_grad():
        theirs = _running_mean([module(x).numpy() for _ in range(T)])
    assert np.abs(theirs).max() > 0.05
    loaded = snnc.load(tmp_path / "snt.nir")  # no dt in the file: r = tau/1e-4 is snnTorch's fixed dt
    assert loaded.report["dt"] == pytest.approx(1e-4)
    assert [n.attrs["neuron"] for n in loaded.graph.find("neuron")] == ["lif", "lif"]
    np.testing.assert_allclose(_snnc_steps(loaded, x.numpy()), theirs, atol=ATOL)


def _norse_mlp(cell: str, per_neuron: bool = True):
    import norse.torch as norse

    def make(n):
        shape = (n,) if per_neuron else ()
        if cell == "if":
            return norse.IAFCell(norse.IAFParameters(v_th=torch.full(shape, 0.5)))
        return norse.LIFBoxCell(
            norse.LIFBoxParameters(
                tau_mem_inv=torch.full(shape, 100.0), v_leak=torch.zeros(shape), v_th=torch.full(shape, 0.5)
            )
        )

    torch.manual_seed(0)
    return norse.SequentialState(nn.Linear(16, 12), make(12), nn.Linear(12, 10), make(10), nn.Linear(10, 3))


def _norse_steps(module, x: torch.Tensor) -> np.ndarray:
    state, outs = None, []
    with torch.no_grad():
        for _ in range(T):
            out, state = module(x, state)
            outs.append(out.numpy())
    return _running_mean(outs)


def test_norse_if_export_runs_on_snnc(tmp_path):
    """Norse writes IF with r = 1 and adds the current as is: snnc reads r = 1 as dt = 1. Norse's
    to_nir maps no Flatten or pooling (their nodes come out as None), so the peer net is an MLP;
    scalar neuron parameters make nir.write fail on 0-d datasets (asserted)."""
    pytest.importorskip("norse")
    import norse.torch

    x = torch.rand(6, 16)
    with pytest.raises(TypeError, match="Scalar datasets"):
        nir.write(str(tmp_path / "scalar.nir"), norse.torch.to_nir(_norse_mlp("if", per_neuron=False), x[0]))
    module = _norse_mlp("if")
    nir.write(str(tmp_path / "norse.nir"), norse.torch.to_nir(module, x[0]))
    theirs = _norse_steps(module, x)
    assert np.abs(theirs).max() > 0.05
    loaded = snnc.load(tmp_path / "norse.nir")
    assert loaded.report["dt"] == 1.0
    np.testing.assert_allclose(_snnc_steps(loaded, x.numpy()), theirs, atol=ATOL)


def test_norse_lif_export_needs_dt_squared(tmp_path):
    """Norse's to_nir writes LIF tau = dt/τ_mem_inv (dt·τ seconds, not τ): read as written, tau/dt
    is < 1 and snnc refuses it; with --dt = Norse's dt² (1e-6 for its default 1e-3) the file runs
    as in Norse."""
    pytest.importorskip("norse")
    import norse.torch

    x = torch.rand(6, 16)
    module = _norse_mlp("lif")
    nir.write(str(tmp_path / "norse.nir"), norse.torch.to_nir(module, x[0]))
    theirs = _norse_steps(module, x)
    assert np.abs(theirs).max() > 0.05
    with pytest.raises(snnc.SnncError, match="tau / dt must be one value > 1"):
        snnc.load(tmp_path / "norse.nir")
    loaded = snnc.load(tmp_path / "norse.nir", dt=1e-3**2)
    np.testing.assert_allclose(_snnc_steps(loaded, x.numpy()), theirs, atol=ATOL)
