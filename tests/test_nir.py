"""NIR export: read back with nir, run by SpikingJelly's NIR importer and by a small simulator
written from NIR's published neuron equations, each against snnc's own runtime."""

from __future__ import annotations

import subprocess
import sys
from graphlib import TopologicalSorter

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import Residual

import snncompiler as snnc
from examples.workloads import export_onnx

nir = pytest.importorskip("nir")
T = 16


def _compile(make_net, shape, tmp_path, **options):
    torch.manual_seed(0)  # before the weights are drawn: the same model whatever ran before
    path = export_onnx(make_net(), shape, tmp_path / "m.onnx")
    x = np.random.default_rng(0).random((24,) + shape, dtype=np.float32)
    return snnc.compile(str(path), x, timesteps=T, quiet=True, **options), x


def simulate(graph, x: np.ndarray, steps: int) -> np.ndarray:
    """Run a NIR graph for ``steps`` Euler steps of its own dt on a constant input; mean output.

    Written from NIR's definitions, not from the exporter: every node's input is the sum of its
    incoming edges; IF: v += r·dt·I; LIF: v += dt/τ·(v_leak − v + r·I); a neuron spikes when v
    exceeds its threshold and then resets to v_reset.
    """
    dt = float(graph.metadata["dt"])
    preds: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for src, dst in graph.edges:
        preds[dst].append(src)
    order = list(TopologicalSorter(preds).static_order())
    state: dict[str, torch.Tensor] = {}
    xt = torch.from_numpy(x).double()
    total = 0.0
    for _ in range(steps):
        vals: dict[str, torch.Tensor] = {}
        for name in order:
            node = graph.nodes[name]
            kind = type(node).__name__
            inp = xt if kind == "Input" else sum(vals[p] for p in preds[name])
            t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float64)
            if kind in ("Input", "Output"):
                out = inp
            elif kind == "Conv2d":
                out = F.conv2d(
                    inp,
                    t(node.weight),
                    t(node.bias),
                    tuple(node.stride),
                    tuple(node.padding),
                    tuple(node.dilation),
                    node.groups,
                )
            elif kind == "Affine":
                out = inp @ t(node.weight).T + t(node.bias)
            elif kind == "Flatten":
                out = inp.flatten(1)
            elif kind == "AvgPool2d":
                out = F.avg_pool2d(inp, tuple(node.kernel_size), tuple(node.stride), tuple(node.padding))
            elif kind == "Scale":
                out = inp * t(node.scale)
            elif kind in ("IF", "LIF"):
                v = state.get(name, torch.zeros_like(inp))
                if kind == "IF":
                    v = v + t(node.r) * dt * inp
                else:
                    v = v + dt / t(node.tau) * (t(node.v_leak) - v + t(node.r) * inp)
                spike = v > t(node.v_threshold)  # NIR: strictly above; ties have measure zero here
                state[name] = torch.where(spike, t(node.v_reset).expand_as(v), v)
                out = spike.double()
            else:
                raise AssertionError(f"simulator does not know {kind}")
            vals[name] = out
        total = total + vals["output"]
    return (total / steps).numpy()


def test_roundtrip_through_spikingjelly_matches_runtime(tmp_path):
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    model, x = _compile(
        lambda: nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(24, 3),
        ),
        (1, 8, 8),
        tmp_path,
        reset="hard",
        v0="zero",
    )
    path = tmp_path / "m.nir"
    assert model.save_nir(path) == []  # hard reset from 0: nothing lost
    graph = nir.read(str(path))
    sj = import_from_nir(graph, dt=float(graph.metadata["dt"]), step_mode="m")
    functional.reset_net(sj)
    with torch.no_grad():
        out = sj(torch.from_numpy(x).unsqueeze(0).expand(T, *x.shape))[0].mean(0).numpy()
    ours = model.run(x, T)
    assert np.abs(ours).max() > 0.01
    np.testing.assert_allclose(out, ours, atol=1e-5)
    np.testing.assert_allclose(simulate(graph, x, T), ours, atol=1e-5)


@pytest.mark.parametrize("neuron", ["if", "lif"])
def test_per_channel_theta_and_residual_add(tmp_path, neuron):
    model, x = _compile(
        Residual,
        (1, 8, 8),
        tmp_path,
        reset="hard",
        v0="zero",
        channelwise=True,
        neuron=neuron,
        **({"tau": 4.0} if neuron == "lif" else {}),
    )
    path = tmp_path / "m.nir"
    model.save_nir(path)
    graph = nir.read(str(path))
    kinds = [type(n).__name__ for n in graph.nodes.values()]
    assert kinds.count("IF" if neuron == "if" else "LIF") == 3
    thetas = [n.params["theta"] for n in model.graph.find("neuron")]
    assert all(t.numel() == 4 for t in thetas)  # per channel
    assert kinds.count("Scale") == 2  # the add's two inputs spike with different θ
    ours, theirs = model.run(x, T), simulate(graph, x, T)
    assert np.abs(ours).max() > 0.01
    if neuron == "if":
        np.testing.assert_allclose(theirs, ours, atol=1e-5)
    else:  # Euler's v + (0 − v)/τ + x and the kernel's (1 − 1/τ)·v + x round differently
        assert np.abs(theirs - ours).mean() < 1e-3 * np.abs(ours).mean() + 1e-4
        assert (theirs.argmax(1) == ours.argmax(1)).mean() >= 0.95


def test_soft_reset_export_says_what_is_lost(tmp_path):
    model, _ = _compile(
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2)), (16,), tmp_path
    )
    out = tmp_path / "m.nir"
    artifact = tmp_path / "m.snn.onnx"
    model.save(artifact)
    r = subprocess.run(
        [sys.executable, "-m", "snncompiler.cli", "export", str(artifact), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "no soft reset" in r.stderr and "initial membrane" in r.stderr
    meta = nir.read(str(out)).metadata
    assert meta["reset"] == "soft" and meta["v0"] == "half" and "no soft reset" in meta["lossy"]


def test_unsupported_models_are_one_line_errors(tmp_path):
    model, _ = _compile(
        lambda: nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 2)
        ),
        (1, 8, 8),
        tmp_path,
    )
    artifact = tmp_path / "m.snn.onnx"
    model.save(artifact)
    cases = [
        (artifact, "maxpool has no NIR equivalent (NIR has no max pooling node, and every --maxpool strategy"),
        (artifact, "use AvgPool in the ANN and recompile, or export with --format onnx"),
        (tmp_path / "m.onnx", "compile it with `snnc compile`"),
    ]
    for src, message in cases:
        r = subprocess.run(
            [sys.executable, "-m", "snncompiler.cli", "export", str(src), "-o", str(tmp_path / "x.nir")],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "x.nir").exists()


def test_peer_conventions_read_back_and_bad_values_are_named(tmp_path):
    """`--nir-flatten torch` and `--nir-avgpool sum` (for snnTorch and Norse, tests/test_nir_peers.py)
    are the same network: snnc reads each back to the default export's outputs."""
    model, x = _compile(
        lambda: nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 2)
        ),
        (1, 8, 8),
        tmp_path,
        reset="hard",
        v0="zero",
    )
    ours = model.run(x, T)
    for flatten, avgpool in [("torch", "avg"), ("nir", "sum"), ("torch", "sum")]:
        path = tmp_path / f"{flatten}_{avgpool}.nir"
        model.save_nir(path, flatten=flatten, avgpool=avgpool)
        graph = nir.read(str(path), type_check=False)
        flat = next(n for n in graph.nodes.values() if type(n).__name__ == "Flatten")
        assert int(flat.start_dim) == (1 if flatten == "torch" else 0)
        kinds = [type(n).__name__ for n in graph.nodes.values()]
        assert ("SumPool2d" if avgpool == "sum" else "AvgPool2d") in kinds
        np.testing.assert_allclose(snnc.load(path).run(x, T), ours, atol=1e-5)
    with pytest.raises(snnc.SnncError, match="flatten: expected one of nir, torch, got 'numpy'"):
        model.save_nir(tmp_path / "x.nir", flatten="numpy")
    artifact = tmp_path / "m.snn.onnx"
    model.save(artifact)
    r = _snnc("export", artifact, "--format", "onnx", "--nir-avgpool", "sum", "-o", tmp_path / "x.onnx")
    assert r.returncode == 2 and "--nir-avgpool: only with --format nir" in r.stderr, r.stderr


def test_a_file_nir_type_check_refuses_is_read_with_our_shapes(tmp_path):
    """Peers write declared shapes NIR's own type check refuses (nirtorch traces a batch, so a
    Flatten's input_type carries a batch axis of 1): nir.read raises, snnc reads the file with the
    type check off and infers every shape from the Input node and the parameters."""
    rng = np.random.default_rng(0)
    w_conv, w_fc = rng.normal(size=(2, 1, 3, 3)).astype(np.float32), rng.normal(size=(3, 32)).astype(np.float32)

    def graph(flatten):
        return nir.NIRGraph(
            nodes={
                "in": nir.Input(input_type={"input": np.array([1, 4, 4])}),
                "conv": nir.Conv2d(
                    input_shape=(4, 4), weight=w_conv, stride=1, padding=1, dilation=1, groups=1, bias=np.zeros(2)
                ),
                "if": nir.IF(r=np.ones((2, 4, 4)), v_threshold=np.full((2, 4, 4), 0.5), v_reset=np.zeros((2, 4, 4))),
                "flat": flatten,
                "fc": nir.Affine(weight=w_fc, bias=np.zeros(3, np.float32)),
                "out": nir.Output(output_type={"output": np.array([3])}),
            },
            edges=[("in", "conv"), ("conv", "if"), ("if", "flat"), ("flat", "fc"), ("fc", "out")],
            type_check=False,
        )

    batched = nir.Flatten(input_type={"input": np.array([1, 2, 4, 4])}, start_dim=1, end_dim=-1)
    nir.write(str(tmp_path / "peer.nir"), graph(batched))
    nir.write(
        str(tmp_path / "plain.nir"),
        graph(nir.Flatten(input_type={"input": np.array([2, 4, 4])}, start_dim=0, end_dim=-1)),
    )
    with pytest.raises(ValueError, match="type mismatch"):
        nir.read(str(tmp_path / "peer.nir"))
    x = rng.random((5, 1, 4, 4), dtype=np.float32)
    expect = snnc.load(tmp_path / "plain.nir").run(x, T)
    assert np.abs(expect).max() > 0.01
    np.testing.assert_allclose(snnc.load(tmp_path / "peer.nir").run(x, T), expect, atol=1e-6)
    # with the check off, shapes that really do not fit are still refused, naming the node
    w_fc = w_fc[:, :31]
    nir.write(str(tmp_path / "bad.nir"), graph(batched))
    r = _snnc("inspect", tmp_path / "bad.nir")
    assert r.returncode == 2 and "NIR Affine 'fc'" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


# ---- reading NIR ------------------------------------------------------------------------
def _sj_net():
    from spikingjelly.activation_based import functional, layer, neuron

    torch.manual_seed(0)
    net = nn.Sequential(
        layer.Conv2d(1, 4, 3, padding=1),
        neuron.IFNode(v_reset=0.0, v_threshold=0.7),
        layer.AvgPool2d(2),
        layer.Flatten(),
        layer.Linear(64, 10),
        neuron.LIFNode(tau=3.0, v_reset=0.0),
        layer.Linear(10, 3),
    )
    functional.set_step_mode(net, "m")
    return net


def test_spikingjelly_export_runs_on_snnc_as_in_spikingjelly(tmp_path):
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    net = _sj_net()
    x = torch.rand(6, 1, 8, 8)
    export_to_nir(net, x.unsqueeze(0), save_path=tmp_path / "sj.nir")
    functional.reset_net(net)
    with torch.no_grad():
        expect = net(x.unsqueeze(0).expand(T, *x.shape)).mean(0).numpy()
    model = snnc.load(tmp_path / "sj.nir")  # SpikingJelly records no dt: its r = 1/1e-4 convention
    assert [n.attrs["neuron"] for n in model.graph.find("neuron")] == ["if", "lif"]
    assert np.abs(expect).max() > 0.01
    np.testing.assert_allclose(model.run(x.numpy(), T), expect, atol=1e-5)
    from snncompiler.data import save_npz

    save_npz(tmp_path / "x.npz", x.numpy())
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "snncompiler.cli",
            "run",
            str(tmp_path / "sj.nir"),
            "--input",
            str(tmp_path / "x.npz"),
            "-o",
            str(tmp_path / "y.npz"),
            "--timesteps",
            str(T),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["y"], expect, atol=1e-5)
    r = _snnc("inspect", tmp_path / "sj.nir")
    assert r.returncode == 0 and "Conv2d" in r.stdout and "LIF" in r.stdout, r.stderr


@pytest.mark.parametrize(
    "neuron, reset, v0",
    [("if", "hard", "zero"), ("lif", "hard", "zero"), ("if", "soft", "half"), ("lif", "soft", "half")],
)
def test_export_then_import_gives_the_same_model(tmp_path, neuron, reset, v0):
    """Also with snnc's defaults (soft reset, v0 = θ/2), which NIR cannot express: the reader takes
    them from the metadata `snnc export` writes (it used to read hard reset from 0: up to 7.56 off)."""
    model, x = _compile(
        Residual,
        (1, 8, 8),
        tmp_path,
        reset=reset,
        v0=v0,
        channelwise=True,
        neuron=neuron,
        **({"tau": 4.0} if neuron == "lif" else {}),
    )
    model.save_nir(tmp_path / "m.nir")
    back = snnc.load(tmp_path / "m.nir")
    assert back.options["timesteps"] == T and back.report["dt"] == pytest.approx(1e-4)
    assert (back.options["reset"], back.options["v0"]) == (reset, v0)
    ours, theirs = model.run(x, T), back.run(x, T)
    # the file holds W·θ and the import multiplies spikes by 1/θ (and, for LIF, runs θ·τ and
    # v·τ): the same arithmetic up to rounding, so a near-tie may rarely flip a spike
    assert (np.abs(theirs - ours) <= 1e-5).mean() >= 0.95
    assert (theirs.argmax(1) == ours.argmax(1)).mean() >= 0.95


def _snnc(*args):
    return subprocess.run([sys.executable, "-m", "snncompiler.cli", *map(str, args)], capture_output=True, text=True)


def test_bad_nir_files_are_one_line_errors(tmp_path):
    from snncompiler.data import save_npz

    save_npz(tmp_path / "d.npz", np.zeros((2, 4), np.float32), np.zeros(2, np.int64))
    good = nir.NIRGraph(
        nodes={
            "in": nir.Input(input_type={"input": np.array([4])}),
            "fc": nir.Affine(weight=np.ones((2, 4), np.float32), bias=np.zeros(2, np.float32)),
            "lif": nir.IF(r=np.full(2, 5.0), v_threshold=np.ones(2), v_reset=np.zeros(2)),
            "out": nir.Output(output_type={"output": np.array([2])}),
        },
        edges=[("in", "fc"), ("fc", "lif"), ("lif", "out")],
    )
    nir.write(str(tmp_path / "no_dt.nir"), good)
    raw = (tmp_path / "no_dt.nir").read_bytes()
    (tmp_path / "cut.nir").write_bytes(raw[: len(raw) // 2])
    cases = [
        (tmp_path / "no_dt.nir", [], "does not say its time step; pass --dt"),
        (tmp_path / "cut.nir", [], "not a readable NIR file"),
        (tmp_path / "no_dt.nir", ["--dt", "nan"], "--dt: must be a finite number > 0"),
    ]
    good.nodes["lif"] = nir.IF(r=np.full(2, 5.0), v_threshold=np.ones(2), v_reset=np.full(2, -1.0))
    nir.write(str(tmp_path / "reset.nir"), good)
    cases.append((tmp_path / "reset.nir", ["--dt", "0.2"], "'lif' (IF): v_reset must be 0"))
    good.nodes["lif"] = nir.LI(tau=np.ones(2), r=np.ones(2), v_leak=np.zeros(2))
    nir.write(str(tmp_path / "li.nir"), good)
    cases.append((tmp_path / "li.nir", ["--dt", "1"], "NIR node 'lif' (LI): not supported"))
    for path, extra, message in cases:
        r = _snnc("eval", path, "--data", tmp_path / "d.npz", *extra)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, (path, r.stderr)
    bad_steps = nir.NIRGraph(
        nodes=dict(good.nodes, lif=nir.IF(r=np.full(2, 5.0), v_threshold=np.ones(2), v_reset=np.zeros(2))),
        edges=good.edges,
        metadata={"dt": 0.2, "timesteps": "many"},
    )
    nir.write(str(tmp_path / "steps.nir"), bad_steps)
    r = _snnc("eval", tmp_path / "steps.nir", "--data", tmp_path / "d.npz")
    assert r.returncode == 2 and "metadata 'timesteps' must be a positive integer, got 'many'" in r.stderr, r.stderr
    r = _snnc("eval", tmp_path / "no_dt.nir", "--data", tmp_path / "d.npz", "--dt", "0.2", "--timesteps", "4")
    assert r.returncode == 0, r.stderr  # with the time step given, the same file runs
    onnx_model = tmp_path / "ann.onnx"
    export_onnx(nn.Sequential(nn.Linear(4, 2)), (4,), onnx_model)
    r = _snnc("eval", onnx_model, "--data", tmp_path / "d.npz", "--dt", "1")
    assert r.returncode == 2 and "--dt: only for NIR files" in r.stderr


def test_a_file_whose_reading_never_ends_is_a_one_line_error(tmp_path, monkeypatch):
    """Some damaged HDF5 files make the HDF5 library loop forever (found by fuzzing); the file is
    read in a child process first, under a time limit. Here the child is made to hang."""
    from snncompiler.formats.nir import reader as nir_loader

    model, _ = _compile(
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2)), (16,), tmp_path
    )
    model.save_nir(tmp_path / "m.nir")
    monkeypatch.setattr(nir_loader, "PROBE_SECONDS", 1)
    monkeypatch.setattr(nir_loader, "PROBE_CODE", "import time; time.sleep(30)")
    with pytest.raises(snnc.SnncError, match="reading it did not finish in 1 s"):
        snnc.load(tmp_path / "m.nir")


# ---- damaged NIR graphs (what the fuzz suite found) -----------------------------------------
@pytest.mark.parametrize("case", ["pool padding of 5 values", "NaN bias"])
def test_damaged_nir_files_are_one_line_errors(tmp_path, case):
    """An exported file, then one HDF5 dataset edited as the fuzz suite's mutators do."""
    import h5py

    model, _ = _compile(
        lambda: nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 2)
        ),
        (1, 8, 8),
        tmp_path,
    )
    path = tmp_path / "m.nir"
    model.save_nir(path)
    with h5py.File(path, "r+") as f:
        names = []
        f.visit(names.append)

        def edit(suffix, value):
            key = next(n for n in names if n.endswith(suffix))
            del f[key]
            if value is not None:
                f[key] = value

        if case == "NaN bias":
            edit("Gemm/bias", np.full(2, np.nan, np.float32))
            expect = "parameter 'bias' has 2 non-finite value(s)"
        else:
            edit("Pool/padding", np.zeros(5, np.int64))
            expect = "its parameters do not fit the node"
    r = subprocess.run([sys.executable, "-m", "snncompiler.cli", "inspect", str(path)], capture_output=True, text=True)
    assert r.returncode == 2 and expect in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("act", ["leaky", "prelu"])
def test_leaky_relu_pairs_export(tmp_path, act):
    """A LeakyReLU or PReLU compiles to relu(x) − α·relu(−x) (passes/signed_relu.py): the
    Neg becomes Scale(−1) ahead of the second neuron, α and the difference are θ factors."""

    def net():
        first = nn.LeakyReLU(0.2) if act == "leaky" else nn.PReLU(4, 0.25)
        if act == "prelu":
            with torch.no_grad():
                first.weight.copy_(torch.tensor([0.25, -0.5, 1.5, 0.1]))
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            first,
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(64, 8),
            nn.LeakyReLU(0.1),
            nn.Linear(8, 3),
        )

    model, x = _compile(net, (1, 8, 8), tmp_path, reset="hard", v0="zero", channelwise=act == "prelu")
    x = x * 2 - 1  # both signs of every current
    path = tmp_path / "m.nir"
    assert model.save_nir(path) == []
    graph = nir.read(str(path))
    kinds = [type(n).__name__ for n in graph.nodes.values()]
    assert kinds.count("IF") == 4 and kinds.count("Scale") >= 2
    ours, theirs = model.run(x, T), simulate(graph, x, T)
    assert np.abs(ours).max() > 0.01
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    np.testing.assert_allclose(snnc.load(str(path)).run(x, T), ours, atol=1e-5)  # and read back by snnc


@pytest.mark.parametrize(
    "options", [{}, {"fuse_linear": True}, {"signed_spikes": True}], ids=["plain", "fused", "signed"]
)
def test_depthwise_mobilenet_export(tmp_path, options):
    """Depthwise convs (groups > 1) are written as the equal dense conv: nir 1.0.8 declares a conv's
    input channels as weight.shape[1], so nir.read refused a grouped conv's file. The linear
    bottlenecks, fused or as signed pairs, export too."""
    from tests.test_signed_inputs import TinyMobileNet, _randomise_bn

    model, x = _compile(lambda: _randomise_bn(TinyMobileNet()), (1, 6, 6), tmp_path, reset="hard", v0="zero", **options)
    assert any(n.attrs.get("groups", 1) > 1 for n in model.graph.find("conv"))
    x = x * 2 - 1
    path = tmp_path / "m.nir"
    assert model.save_nir(path) == []
    graph = nir.read(str(path))
    ours, theirs = model.run(x, T), simulate(graph, x, T)
    assert np.abs(ours).max() > 0.01
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    np.testing.assert_allclose(snnc.load(str(path)).run(x, T), ours, atol=1e-5)
