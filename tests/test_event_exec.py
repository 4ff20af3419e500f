"""Event-driven execution (snncompiler.kernels.event, SpikingRunner exec_mode, --exec): the C++
kernel against F.conv2d / F.linear on random geometries, spike densities, θ and weight
sparsity; a compiled CNN giving the same outputs dense, event and auto; the CLI flag."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snncompiler.errors import SnncError
from snncompiler.kernels import event

pytestmark = pytest.mark.skipif(not event.available(), reason="snncompiler.kernels._event_cpu is not built")

EPS = 2.0**-23
DENSITIES = st.sampled_from([0.0, 0.01, 0.5, 1.0])


@pytest.fixture(params=["simd", "portable"])
def simd(request):
    """Run a test with the kernel's AVX-512 paths (where the CPU has them) and its portable loops."""
    lib = event.load()
    before = lib.simd()
    lib.set_simd(request.param == "simd")
    yield
    lib.set_simd(before)


def _spikes(shape, density: float, per_channel: bool, gen: torch.Generator) -> torch.Tensor:
    """0 or θ: θ per tensor or per channel (axis 1), the values neurons emit."""
    fire = torch.rand(shape, generator=gen) < density
    channels = shape[1] if per_channel else 1
    theta = 0.1 + 2 * torch.rand(channels, generator=gen)
    theta = theta.reshape((1, channels) + (1,) * (len(shape) - 2))
    return fire * theta


def _weights(shape, density: float, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * (torch.rand(shape, generator=gen) < density)


def _assert_within_summation_error(got, want, magnitude, fan_in: int):
    """|got - want| ≤ 2·(fan_in + 1)·ε·Σ|x·w|: each of two float32 sums of fan_in + 1 terms (the
    bias too) is within (fan_in + 1)·ε·Σ|terms| of the exact one, whatever its order."""
    assert got.shape == want.shape
    bound = 2 * (fan_in + 1) * EPS * magnitude
    error = (got - want).abs()
    assert bool((error <= bound).all()), (
        f"max error {float(error.max())}, bound there {float(bound.flatten()[error.argmax()])}"
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 3),
    groups=st.integers(1, 3),
    cin=st.integers(1, 3),
    cout=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    sh=st.integers(1, 3),
    sw=st.integers(1, 3),
    dh=st.integers(1, 2),
    dw=st.integers(1, 2),
    pads=st.tuples(*[st.integers(0, 2)] * 4),
    density=DENSITIES,
    per_channel=st.booleans(),
    weight_density=st.sampled_from([0.05, 0.3, 1.0]),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_conv2d_matches_dense(
    simd, n, groups, cin, cout, h, w, kh, kw, sh, sw, dh, dw, pads, density, per_channel, weight_density, bias, seed
):
    pt, pl, pb, pr = pads
    if h + pt + pb < dh * (kh - 1) + 1 or w + pl + pr < dw * (kw - 1) + 1:
        return  # no output position: F.conv2d refuses the shape
    gen = torch.Generator().manual_seed(seed)
    x = _spikes((n, groups * cin, h, w), density, per_channel, gen)
    wt = _weights((groups * cout, cin, kh, kw), weight_density, gen)
    b = torch.randn(groups * cout, generator=gen) if bias else None
    layer = event.EventLayer(wt, b, stride=(sh, sw), pads=pads, dilation=(dh, dw), groups=groups)
    got = layer(x)
    want = event.conv2d_reference(x, wt, b, (sh, sw), pads, (dh, dw), groups)
    magnitude = event.conv2d_reference(
        x.abs(), wt.abs(), None if b is None else b.abs(), (sh, sw), pads, (dh, dw), groups
    )
    _assert_within_summation_error(got, want, magnitude, cin * kh * kw)
    assert layer.weight_density == pytest.approx(float((wt != 0).float().mean()))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lead=st.lists(st.integers(1, 3), min_size=1, max_size=2),
    features=st.integers(1, 70),
    outputs=st.integers(1, 20),
    density=DENSITIES,
    weight_density=st.sampled_from([0.05, 0.3, 1.0]),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_linear_matches_dense(simd, lead, features, outputs, density, weight_density, bias, seed):
    gen = torch.Generator().manual_seed(seed)
    x = _spikes(tuple(lead) + (features,), density, False, gen)
    wt = _weights((outputs, features), weight_density, gen)
    b = torch.randn(outputs, generator=gen) if bias else None
    got = event.EventLayer(wt, b, kind="linear")(x)
    want = event.linear_reference(x, wt, b)
    _assert_within_summation_error(got, want, F.linear(x.abs(), wt.abs(), None if b is None else b.abs()), features)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 3),
    cin=st.integers(1, 4),
    cout=st.integers(1, 4),
    length=st.integers(3, 20),
    k=st.integers(1, 3),
    stride=st.integers(1, 3),
    pad=st.integers(0, 2),
    density=DENSITIES,
    seed=st.integers(0, 2**16),
)
def test_conv1d_runs_as_a_one_row_image(simd, n, cin, cout, length, k, stride, pad, density, seed):
    gen = torch.Generator().manual_seed(seed)
    x = _spikes((n, cin, length), density, True, gen)
    wt = _weights((cout, cin, k), 0.5, gen)
    got = event.EventLayer(wt, None, stride=(stride,), pads=(pad, pad), dilation=(1,))(x)
    want = F.conv1d(x, wt, None, stride, pad)
    _assert_within_summation_error(got, want, F.conv1d(x.abs(), wt.abs(), None, stride, pad), cin * k)


def test_kernel_uses_the_values_not_ones_and_counts_nothing_for_silence():
    """Spikes carry θ (here 0.25 and 3.0 per channel): a kernel that treated events as 1 would
    be off by those factors. An all-zero input gives the bias exactly."""
    x = torch.zeros(2, 2, 5, 5)
    x[0, 0, 2, 2], x[1, 1, 0, 4] = 0.25, 3.0
    wt = torch.arange(2 * 2 * 3 * 3, dtype=torch.float32).reshape(2, 2, 3, 3) - 10
    b = torch.tensor([0.5, -1.0])
    layer = event.EventLayer(wt, b, pads=(1, 1, 1, 1))
    assert torch.equal(layer(x), F.conv2d(x, wt, b, padding=1))  # one term per output: exact
    assert torch.equal(layer(torch.zeros_like(x)), b.reshape(1, 2, 1, 1).expand(2, 2, 5, 5))


def test_layer_cache_follows_the_weights():
    from snncompiler.ir import Node

    node = Node(
        "conv",
        "c",
        ["x"],
        ["y"],
        {"stride": [1, 1], "pads": [0, 0, 0, 0]},
        {"weight": torch.ones(2, 1, 1, 1), "bias": torch.zeros(2)},
    )
    first = event.layer_for(node)
    assert event.layer_for(node) is first  # compressed once across runners
    with torch.no_grad():
        node.params["weight"][0] = 0.0  # an in-place change bumps the tensor's version
    again = event.layer_for(node)
    assert again is not first and again.weight_density == 0.5
    x = torch.ones(1, 1, 2, 2)
    assert torch.equal(again(x), F.conv2d(x, node.params["weight"], node.params["bias"]))


def test_compress_keeps_only_nonzero_weights_per_group():
    wt = torch.zeros(4, 1, 1, 2)  # groups=2: outputs 0,1 read input 0; outputs 2,3 read input 1
    wt[1, 0, 0, 1], wt[2, 0, 0, 0], wt[3, 0, 0, 1] = 1.0, 2.0, 3.0
    offsets, index, value = event.compress(wt, groups=2)
    # rows (c, ky, kx): (0,0,0) empty, (0,0,1) -> o=1, (1,0,0) -> o=2, (1,0,1) -> o=3
    assert offsets.tolist() == [0, 0, 1, 2, 3]
    assert index.tolist() == [1, 2, 3] and value.tolist() == [1.0, 2.0, 3.0]


# ---- the runtime ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compiled_cnn(tmp_path_factory):
    """A DigitsCNN (untrained: parity needs spikes, not accuracy) compiled on digits: conv2 reads a
    neuron, conv3 a rate max pool of one, the classifier a flatten of a pool."""
    import snncompiler as snnc
    from examples.workloads import DigitsCNN, digits, export_onnx
    from snncompiler.data import Dataset

    train, test = digits()
    torch.manual_seed(0)
    path = export_onnx(DigitsCNN(width=8).eval(), (1, 8, 8), tmp_path_factory.mktemp("cnn") / "cnn.onnx")
    return snnc.compile(path, Dataset(train.x[:128]), quiet=True), test


def test_dense_event_and_auto_agree_end_to_end(compiled_cnn, monkeypatch):
    model, test = compiled_cnn
    x = test.x[:48]
    dense = model.run(x, 8)
    runs = {}
    for mode, max_work in (("event", None), ("auto", 1.0), ("auto", 0.0)):
        if max_work is not None:  # auto with a break-even that sends every chunk one way
            monkeypatch.setattr(event, "AUTO_MAX_WORK", max_work)
        runs[(mode, max_work)] = (model.run(x, 8, exec=mode), model.last_runner.exec_counts)
    out, counts = runs[("event", None)]
    assert model.last_runner.firing_rate > 0.01  # the layers had spikes to process
    assert len(counts) == 3 and all(dense_n == 0 and event_n > 0 for dense_n, event_n in counts.values())
    assert all(c[1] > 0 for c in runs[("auto", 1.0)][1].values())
    assert all(c[1] == 0 and c[0] > 0 for c in runs[("auto", 0.0)][1].values())
    for result, _ in runs.values():
        np.testing.assert_allclose(result, dense, rtol=0, atol=1e-4)
        assert (result.argmax(1) == dense.argmax(1)).all()
    np.testing.assert_array_equal(runs[("auto", 0.0)][0], dense)  # all dense: the same computation


def test_auto_measures_density_per_chunk(compiled_cnn):
    """auto's rule on the layer's own numbers: a silent chunk is event-driven work 0."""
    from snncompiler.runtime.snn import SpikingRunner

    model, _ = compiled_cnn
    runner = SpikingRunner(model.graph, exec_mode="auto")
    name, layer = next(iter(runner._event_layers.items()))
    assert runner._event_pays(name, layer, torch.zeros(4, *layer.weight_shape[1:2], 8, 8))
    dense_work = torch.ones(4, layer.weight_shape[1], 8, 8)
    assert runner._event_pays(name, layer, dense_work) == (layer.weight_density <= event.AUTO_MAX_WORK)
    assert runner.exec_counts[name] == [
        int(layer.weight_density > event.AUTO_MAX_WORK),
        1 + int(layer.weight_density <= event.AUTO_MAX_WORK),
    ]


def test_invalid_mode_and_missing_extension(compiled_cnn, monkeypatch):
    from snncompiler.runtime import snn

    model, test = compiled_cnn
    with pytest.raises(SnncError, match="^--exec: expected dense, event, auto, got 'sparse'$"):
        model.run(test.x[:2], 2, exec="sparse")
    monkeypatch.setattr(event, "available", lambda: False)
    monkeypatch.setattr(snn, "_warned", set())
    with pytest.warns(RuntimeWarning, match="--exec event: .* not built; running every layer dense") as caught:
        out = model.run(test.x[:4], 4, exec="event")
        model.run(test.x[:4], 4, exec="event")
    assert len(caught) == 1  # said once, not per runner
    np.testing.assert_array_equal(out, model.run(test.x[:4], 4))


# ---- the CLI --------------------------------------------------------------------------------
def test_cli_exec_flag(compiled_cnn, tmp_path, capsys):
    from snncompiler.cli.main import main

    model, test = compiled_cnn
    artifact = tmp_path / "cnn.snn.onnx"
    model.save(artifact)
    np.savez(tmp_path / "d.npz", x=test.x[:32], y=test.y[:32])
    results = {}
    for mode in ("dense", "event", "auto"):
        assert (
            main(
                ["eval", str(artifact), "--data", str(tmp_path / "d.npz"), "--timesteps", "8", "--exec", mode, "--json"]
            )
            == 0
        )
        results[mode] = json.loads(capsys.readouterr().out)
    assert results["event"]["snn_accuracy"] == results["dense"]["snn_accuracy"] == results["auto"]["snn_accuracy"]
    assert (
        main(
            [
                "run",
                str(artifact),
                "--input",
                str(tmp_path / "d.npz"),
                "-o",
                str(tmp_path / "y.npz"),
                "--timesteps",
                "8",
                "--exec",
                "event",
            ]
        )
        == 0
    )
    capsys.readouterr()
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["y"], model.run(test.x[:32], 8), rtol=0, atol=1e-4)
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(artifact), "--data", str(tmp_path / "d.npz"), "--exec", "sparse"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exc.value.code == 2 and len(err) == 1 and "--exec" in err[0] and "'sparse'" in err[0], err
