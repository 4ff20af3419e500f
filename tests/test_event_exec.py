"""Event-driven execution (snncompiler.kernels.event, SpikingRunner exec_mode, --exec): the C++
kernel's three forms (gather, scatter, pruned) against F.conv2d / F.linear on random geometries, spike
densities, θ and weight sparsity, on every instruction set the CPU runs; the per-layer cost
model (kernels/exec_cost.py); a compiled CNN giving the same outputs dense, event and auto;
the CLI flag."""

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


ISAS = event.load().supported_isas() if event.available() else ["baseline"]


@pytest.fixture(params=ISAS)
def simd(request):
    """Run a test on each instruction set of the kernel this CPU runs (baseline: the portable
    loops; avx2: the gather form's AVX2+FMA micro-kernels; avx512: every SIMD path)."""
    lib = event.load()
    before = lib.isa()
    lib.set_isa(request.param)
    yield request.param
    lib.set_isa(before)


FORMS = st.sampled_from(list(event.FORMS))
LINEAR_FORMS = st.sampled_from(["scatter", "gather"])  # pruned vectorises over a conv's output plane


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
    form=FORMS,
)
def test_conv2d_matches_dense(
    simd,
    n,
    groups,
    cin,
    cout,
    h,
    w,
    kh,
    kw,
    sh,
    sw,
    dh,
    dw,
    pads,
    density,
    per_channel,
    weight_density,
    bias,
    seed,
    form,
):
    if form == "gather":
        groups = 1  # the gather form's domain
    pt, pl, pb, pr = pads
    if h + pt + pb < dh * (kh - 1) + 1 or w + pl + pr < dw * (kw - 1) + 1:
        return  # no output position: F.conv2d refuses the shape
    gen = torch.Generator().manual_seed(seed)
    x = _spikes((n, groups * cin, h, w), density, per_channel, gen)
    wt = _weights((groups * cout, cin, kh, kw), weight_density, gen)
    b = torch.randn(groups * cout, generator=gen) if bias else None
    layer = event.EventLayer(wt, b, stride=(sh, sw), pads=pads, dilation=(dh, dw), groups=groups)
    got = layer(x, form)
    want = event.conv2d_reference(x, wt, b, (sh, sw), pads, (dh, dw), groups)
    magnitude = event.conv2d_reference(
        x.abs(), wt.abs(), None if b is None else b.abs(), (sh, sw), pads, (dh, dw), groups
    )
    _assert_within_summation_error(got, want, magnitude, cin * kh * kw)
    assert layer.weight_density == pytest.approx(float((wt != 0).float().mean()))
    # the same spikes as uint8 0/1 with θ per channel (what a neuron feeding only event layers
    # emits): bit for bit the float32 result
    theta = x.amax(dim=(0, 2, 3))
    assert torch.equal(layer((x != 0).to(torch.uint8), form, theta), got)
    if form == "pruned" and groups == 1:  # the gather form's summation order, so its bits
        assert torch.equal(got, layer(x, "gather"))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lead=st.lists(st.integers(1, 3), min_size=1, max_size=2),
    features=st.integers(1, 70),
    outputs=st.integers(1, 20),
    density=DENSITIES,
    weight_density=st.sampled_from([0.05, 0.3, 1.0]),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
    form=LINEAR_FORMS,
)
def test_linear_matches_dense(simd, lead, features, outputs, density, weight_density, bias, seed, form):
    gen = torch.Generator().manual_seed(seed)
    x = _spikes(tuple(lead) + (features,), density, False, gen)
    wt = _weights((outputs, features), weight_density, gen)
    b = torch.randn(outputs, generator=gen) if bias else None
    layer = event.EventLayer(wt, b, kind="linear")
    got = layer(x, form)
    assert torch.equal(layer((x != 0).to(torch.uint8), form, x.reshape(-1, features).amax(0)), got)
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
    form=FORMS,
)
def test_conv1d_runs_as_a_one_row_image(simd, n, cin, cout, length, k, stride, pad, density, seed, form):
    gen = torch.Generator().manual_seed(seed)
    x = _spikes((n, cin, length), density, True, gen)
    wt = _weights((cout, cin, k), 0.5, gen)
    got = event.EventLayer(wt, None, stride=(stride,), pads=(pad, pad), dilation=(1,))(x, form)
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
    for form in event.FORMS:
        assert torch.equal(layer(x, form), F.conv2d(x, wt, b, padding=1))  # one term per output: exact
        assert torch.equal(layer(torch.zeros_like(x), form), b.reshape(1, 2, 1, 1).expand(2, 2, 5, 5))


@pytest.mark.parametrize("shape", [(37, 70, 5, 5), (9, 33, 1, 1), (5, 3, 23, 11)])
def test_gather_and_pruned_results_do_not_depend_on_isa_or_threads(shape):
    """The gather and pruned forms sum in one fixed order (the same one) with one rounding per
    fused multiply-add on every instruction set, and a sample's sum never crosses threads:
    bit-identical results on any x86-64 CPU and thread count (outputs 70 = one full tile of 64
    and a part tile; a 23×11 map = a pruned output plane of more than one block of vectors), and
    binary spikes give the float32 route's bits."""
    n, o, h, w = shape
    gen = torch.Generator().manual_seed(1)
    x = _spikes((n, 19, h, w), 0.3, True, gen)
    weight = _weights((o, 19, 3, 3), 0.4, gen)
    layer = event.EventLayer(weight, torch.randn(o, generator=gen), pads=(1, 1, 1, 1))
    narrow = event.EventLayer(weight[:, :16].contiguous(), layer.bias, pads=(1, 1, 1, 1))
    lib, before, threads = event.load(), event.load().isa(), torch.get_num_threads()
    results, narrow_results = [], []
    try:
        for isa in ISAS:
            lib.set_isa(isa)
            for t in (1, 2):
                torch.set_num_threads(t)
                results += [layer(x, "gather"), layer(x, "pruned")]
                # binary spikes (19 channels: expanded; the first 16: the route from masks)
                bits, theta = (x != 0).to(torch.uint8), x.amax(dim=(0, 2, 3))
                results.append(layer(bits, "gather", theta))
                narrow_results.append(narrow(bits[:, :16].contiguous(), "gather", theta[:16]))
    finally:
        lib.set_isa(before)
        torch.set_num_threads(threads)
    assert all(torch.equal(r, results[0]) for r in results[1:])
    assert all(torch.equal(r, narrow(x[:, :16].contiguous(), "gather")) for r in narrow_results)
    _assert_within_summation_error(
        results[0],
        F.conv2d(x, layer._dense_weight, layer.bias, padding=1),
        F.conv2d(x.abs(), layer._dense_weight.abs(), layer.bias.abs(), padding=1),
        19 * 9,
    )


def test_gather_skips_padding_taps_and_refuses_groups():
    """A 3×3 convolution on a 1×1 map reads only the centre tap: the other taps' weights may be
    anything (here NaN) without reaching the output, as they only ever meet zero padding."""
    wt = torch.full((4, 3, 3, 3), float("nan"))
    wt[:, :, 1, 1] = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    x = torch.tensor([[1.0, 0.0, 2.0]]).reshape(1, 3, 1, 1)
    got = event.EventLayer(wt, None, pads=(1, 1, 1, 1))(x, "gather")
    assert torch.equal(got.flatten(), (wt[:, :, 1, 1] * x.flatten()).sum(1))
    grouped = event.EventLayer(torch.ones(4, 1, 1, 1), None, groups=2)
    assert not grouped.gather_ok and not grouped.supports("gather") and grouped.supports("pruned")
    with pytest.raises(ValueError, match="groups = 1"):
        grouped(torch.ones(1, 2, 1, 1), "gather")


def test_pruned_form_runs_only_nonzero_weights_and_refuses_linear():
    """The pruned form never reads a zero weight's input: with the weights of every tap but the
    centre zero, a NaN input beside a pixel reaches no output it would reach through those taps.
    A linear layer has no output plane: refused, with the form named."""
    wt = torch.zeros(2, 1, 3, 3)
    wt[:, 0, 1, 1] = torch.tensor([2.0, -1.0])
    x = torch.zeros(1, 1, 3, 4)
    x[0, 0, 1, 1], x[0, 0, 0, 3] = float("nan"), 1.5
    got = event.EventLayer(wt, None, pads=(1, 1, 1, 1))(x, "pruned")
    assert torch.isnan(got[:, :, 1, 1]).all() and int(torch.isnan(got).sum()) == 2  # only the centre tap
    assert got[0, 0, 0, 3] == 3.0 and got[0, 1, 0, 3] == -1.5
    linear = event.EventLayer(torch.ones(3, 4), None, kind="linear")
    assert not linear.supports("pruned")
    with pytest.raises(ValueError, match="pruned form is for convolutions"):
        linear(torch.ones(2, 4), "pruned")


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


def _forcing(form: str):
    """Costs under which ``form`` is the cheapest at every density (the others cost 1 s/sample)."""
    from snncompiler.kernels.exec_cost import Costs

    cost = {f: 0.0 if f == form else 1.0 for f in ("dense", *event.FORMS)}
    return Costs(cost["dense"], {f: (cost[f], 0.0) for f in event.FORMS})


def test_dense_event_and_auto_agree_end_to_end(compiled_cnn, monkeypatch):
    from snncompiler.kernels import exec_cost

    model, test = compiled_cnn
    x = test.x[:48]
    dense = model.run(x, 8)
    runs = {}
    for mode, forced in (("event", None), *(("event", f) for f in event.FORMS), ("auto", "dense")):
        if forced is not None:  # a cost model that sends every chunk one way
            monkeypatch.setattr(exec_cost, "costs_for", lambda *a, f=forced, **k: _forcing(f))
        runs[(mode, forced)] = (model.run(x, 8, exec=mode), model.last_runner.exec_counts)
    assert model.last_runner.firing_rate > 0.01  # the layers had spikes to process
    _, measured = runs[("event", None)]
    assert len(measured) == 3 and all(c["dense"] == 0 and sum(c.values()) > 0 for c in measured.values())
    for form in ("gather", "scatter"):
        assert all(c[form] > 0 and sum(c.values()) == c[form] for c in runs[("event", form)][1].values())
    # pruned where it applies (the convolutions); the classifier takes the cheapest form it has
    for name, c in runs[("event", "pruned")][1].items():
        applies = model.last_runner._event_layers[name].supports("pruned")
        assert (c["pruned"] > 0 and sum(c.values()) == c["pruned"]) if applies else c["pruned"] == 0
    assert sum(c["pruned"] > 0 for c in runs[("event", "pruned")][1].values()) == 2
    assert all(c["dense"] > 0 and sum(c.values()) == c["dense"] for c in runs[("auto", "dense")][1].values())
    for result, _ in runs.values():
        np.testing.assert_allclose(result, dense, rtol=0, atol=1e-4)
        assert (result.argmax(1) == dense.argmax(1)).all()
    np.testing.assert_array_equal(runs[("auto", "dense")][0], dense)  # all dense: the same computation


def test_binary_spikes_feed_event_layers_bit_for_bit(compiled_cnn, monkeypatch):
    """A neuron whose only reader is an event layer emits uint8 spikes (θ per channel beside
    them): outputs equal the float32 route's exactly; readers that need values (a rate max pool,
    observed values) still get them; dense execution never emits binary spikes."""
    from snncompiler.runtime.snn import SpikingRunner

    model, test = compiled_cnn
    x = torch.from_numpy(test.x[:24])
    runner = SpikingRunner(model.graph, exec_mode="event")
    first = next(n for n in model.graph.nodes if n.op == "neuron")
    assert list(runner._binary_spikes) == [first.outputs[0]]  # conv2 reads it; the others feed rate pools
    assert runner._binary_spikes[first.outputs[0]].shape == (8,)
    assert SpikingRunner(model.graph, exec_mode="dense")._binary_spikes == {}
    bits = (torch.rand(3, 1000, generator=torch.Generator().manual_seed(1)) < 0.2).to(torch.uint8)
    assert event.count_nonzero(bits) == int(torch.count_nonzero(bits))  # auto's density of binary input
    binary = runner.run(x, 8)[8]
    rates = runner.rates(x, 8, [first.outputs[0]])[first.outputs[0]]
    monkeypatch.setattr(SpikingRunner, "_binary_setup", lambda self: {})
    plain = SpikingRunner(model.graph, exec_mode="event")
    assert torch.equal(binary, plain.run(x, 8)[8])
    assert torch.equal(rates, plain.rates(x, 8, [first.outputs[0]])[first.outputs[0]])
    assert bool((rates > 0).any())


def test_auto_chooses_by_the_chunk_density(compiled_cnn, monkeypatch):
    """auto's rule on the layer's cost model: gather costs 2 s/sample per unit density and dense
    1 s/sample, so gather wins below density 0.5: a silent chunk runs gather, a full one dense;
    ``event`` never runs dense."""
    from snncompiler.kernels import exec_cost
    from snncompiler.kernels.exec_cost import Costs
    from snncompiler.runtime.snn import SpikingRunner

    costs = Costs(1.0, {"gather": (0.0, 2.0), "scatter": (0.5, 10.0)})
    assert costs.break_even("gather") == 0.5 and costs.break_even("scatter") == 0.05
    assert costs.only_choice(("dense", "gather", "scatter")) is None  # depends on the density: counted
    assert costs.only_choice(("gather", "scatter")) == "gather"  # cheaper at 0 and at 1: never counted
    monkeypatch.setattr(exec_cost, "costs_for", lambda *a, **k: costs)
    model, _ = compiled_cnn
    runner = SpikingRunner(model.graph, exec_mode="auto")
    name, layer = next(iter(runner._event_layers.items()))
    node = next(n for n in model.graph.nodes if n.name == name)
    shape = (4, layer.weight_shape[1], 8, 8)
    assert runner._event_form(node, layer, torch.zeros(shape)) == "gather"
    assert runner._event_form(node, layer, torch.ones(shape)) == "dense"
    assert runner.exec_counts[name] == {"dense": 1, "gather": 1, "scatter": 0, "pruned": 0}
    assert SpikingRunner(model.graph, exec_mode="event")._event_form(node, layer, torch.ones(shape)) == "gather"


def test_cost_model_is_measured_once_and_cached_on_disk(tmp_path, monkeypatch):
    """First use measures (every applicable form, two densities) and writes the cache; the same
    layer again comes from memory, a new process from disk; a corrupt cache is remeasured."""
    from snncompiler.kernels import exec_cost

    monkeypatch.setenv("SNNC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(exec_cost, "_memory", {})
    monkeypatch.setattr(exec_cost, "SAMPLES", 8)
    calls = []
    real = exec_cost.measure
    monkeypatch.setattr(exec_cost, "measure", lambda *a: calls.append(1) or real(*a))
    pruned = torch.randn(8, 4, 3, 3) * (torch.rand(8, 4, 3, 3) < 0.2)
    layer = event.EventLayer(pruned, None, pads=(1, 1, 1, 1))
    dense_fn = lambda t: F.conv2d(t, pruned, padding=1)
    costs = exec_cost.costs_for(layer, (4, 6, 6), dense_fn)
    assert set(costs.event) == {"gather", "scatter", "pruned"} and costs.dense > 0  # pruned: all three measured
    assert all(a >= 0 and b >= 0 for a, b in costs.event.values())
    assert exec_cost.costs_for(layer, (4, 6, 6), dense_fn) is costs and len(calls) == 1
    monkeypatch.setattr(exec_cost, "_memory", {})
    assert exec_cost.costs_for(layer, (4, 6, 6), dense_fn) == costs and len(calls) == 1  # from disk
    unpruned = event.EventLayer(torch.randn(8, 4, 3, 3), None, pads=(1, 1, 1, 1))
    assert set(exec_cost.costs_for(unpruned, (4, 6, 6), dense_fn).event) == {"gather"}
    exec_cost.cache_path().write_text("{not json")
    monkeypatch.setattr(exec_cost, "_memory", {})
    assert set(exec_cost.costs_for(layer, (4, 6, 6), dense_fn).event) == {"gather", "scatter", "pruned"}
    assert len(calls) == 3
    assert exec_cost.layer_key(layer, (4, 6, 6)) != exec_cost.layer_key(layer, (4, 7, 7))
    # a layer fed binary spikes is timed on them (another entry): the event forms get uint8 inputs
    # and the per-channel value of a spike
    assert exec_cost.layer_key(layer, (4, 6, 6)) != exec_cost.layer_key(layer, (4, 6, 6), binary=True)
    seen = []
    real_call = event.EventLayer.__call__
    monkeypatch.setattr(
        event.EventLayer, "__call__", lambda self, x, f, s=None: seen.append((x.dtype, s)) or real_call(self, x, f, s)
    )
    binary = exec_cost.costs_for(layer, (4, 6, 6), dense_fn, binary=True)
    assert len(calls) == 4 and set(binary.event) == {"gather", "scatter", "pruned"}
    assert seen and all(dtype == torch.uint8 and torch.equal(s, torch.ones(4)) for dtype, s in seen)


def test_cost_model_times_as_many_samples_as_a_chunk_feeds():
    from snncompiler.kernels.exec_cost import MAX_MEASURE_ELEMENTS, SAMPLES, measure_samples

    assert measure_samples(2048, (1024,)) == 2048  # 64 samples × 32 steps into a classifier
    assert measure_samples(3000, (1024,)) == 2048  # a power of two: few cache entries
    assert measure_samples(1 << 20, (1024,)) == MAX_MEASURE_ELEMENTS // 1024
    assert measure_samples(2048, (64, 32, 32)) == SAMPLES  # a large input: the budget holds it
    assert measure_samples(16, (16,)) == SAMPLES and measure_samples(0, (4, 6, 6)) == SAMPLES


def test_invalid_mode_and_missing_extension(compiled_cnn, monkeypatch):
    from snncompiler.runtime import snn

    model, test = compiled_cnn
    with pytest.raises(SnncError, match="^exec: expected dense, event, auto, got 'sparse'$"):
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


@pytest.mark.skipif(not event.available(), reason="event extension not built")
@pytest.mark.parametrize("shape", [(32, 4, 16, 8, 8), (7, 5000), (1, 3), (0, 4), (5, 0), (3,), (9, 3000)])
def test_cumsum_steps_is_torchs_cumsum_bit_for_bit(shape):
    """The runtime's running sums over time (analog islands, outputs, max pooling): torch's
    ``x.cumsum(0) + init`` bit for bit (sums in double, rounded per step, then + init), with and
    without an init (broadcast from a per-channel one too); float64 and tensors that need a
    gradient fall back to torch (same values, and the gradient flows)."""
    gen = torch.Generator().manual_seed(len(shape))
    x = torch.randn(shape, generator=gen) * 1000 + torch.rand(shape, generator=gen)
    inits = [None, torch.randn(shape[1:], generator=gen)]
    if len(shape) == 5:
        inits.append(torch.randn((shape[2], 1, 1), generator=gen))
    for init in inits:
        got = event.cumsum_steps(x, init)
        want = x.cumsum(0) + (0 if init is None else init)
        assert got.shape == want.shape and torch.equal(got, want)
    assert torch.equal(event.cumsum_steps(x.double()), x.double().cumsum(0))
    xg = x.clone().requires_grad_(True)
    event.cumsum_steps(xg).sum().backward()
    assert xg.grad is not None and xg.grad.shape == x.shape


@pytest.mark.parametrize("shape", [(32, 4, 16, 8, 8), (7, 5000), (1, 3), (0, 4), (5, 0), (9, 3000)])
def test_running_sums_do_not_depend_on_the_chunking(shape):
    """The analog islands' running sums: float64 sums rounded per step, continued from a float64
    carry, so any split of the steps over calls gives the same bits as one call (the C++ kernel
    and torch's fallback alike); sums of spikes are exact, so equal counts give equal sums
    whatever their timing."""
    gen = torch.Generator().manual_seed(len(shape))
    x = torch.randn(shape, generator=gen) * 1000 + torch.rand(shape, generator=gen)
    whole, carry = event.running_sums(x)
    assert whole.dtype == torch.float32 and carry.dtype == torch.float64 and carry.shape == x.shape[1:]
    assert torch.equal(whole, x.double().cumsum(0).float())
    for split in (1, 2, 3, 5):
        parts, c = [], None
        for start in range(0, max(len(x), 1), split):
            part, c = event.running_sums(x[start : start + split], c)
            parts.append(part)
        assert torch.equal(torch.cat(parts), whole), split
        assert torch.equal(c, carry)
    theta = torch.tensor(0.7123)  # two trains of the same count, at different steps
    a = torch.tensor([0.5, 0.5, 1.0, 0.5, 0.0, 1.0]) * theta
    b = torch.tensor([1.0, 0.0, 0.5, 0.5, 1.0, 0.5]) * theta
    assert event.running_sums(a)[0][-1] == event.running_sums(b)[0][-1]
    fallback, _ = event.running_sums(x.clone().requires_grad_(True))  # torch's path: a gradient to track
    assert torch.equal(fallback.detach(), whole)


def test_cost_model_times_the_fastest_of_interleaved_rounds(monkeypatch):
    """The micro-benchmark interleaves its tasks (so a burst of other work on the machine is
    spread over all of them) and keeps each task's fastest round (other work only adds time): a
    task slowed down once still gets its true time."""
    from snncompiler.kernels import exec_cost

    order, calls = [], {"a": 0, "b": 0}
    clock = [0.0]

    def task(name, cost, slow_call=None):
        def run():
            calls[name] += 1
            order.append(name)
            clock[0] += 100.0 if calls[name] == slow_call else cost

        return run

    monkeypatch.setattr(exec_cost.time, "perf_counter", lambda: clock[0])
    best = exec_cost._fastest_times({"a": task("a", 1.0, slow_call=2), "b": task("b", 2.0)}, 4)
    assert best == {"a": 1.0, "b": 2.0}
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warm-ups, then rotating rounds


def _rate_max_pool_steps_oracle(s, theta, kernel, stride, pads, ceil_mode, sums, previous):
    """The runtime's rate max pooling of spikes, written out in torch: running spike counts
    (float64), max_pool2d with implicit -inf padding, increments times θ per channel."""
    counts = (s != 0).double().cumsum(0) + (0 if sums is None else sums.double())
    steps = s.shape[0]
    pooled = F.max_pool2d(counts.flatten(0, 1), kernel, stride, pads, ceil_mode=bool(ceil_mode))
    pooled = pooled.reshape((steps,) + tuple(s.shape[1:3]) + tuple(pooled.shape[-2:]))
    start = torch.zeros_like(pooled[0]) if previous is None else previous.double()
    out = torch.diff(pooled, dim=0, prepend=start.unsqueeze(0)).float() * theta.reshape(1, 1, -1, 1, 1)
    return out, counts[-1].float(), pooled[-1].float()


@pytest.mark.skipif(not event.available(), reason="event extension not built")
@pytest.mark.parametrize(
    "kernel, stride, pads, ceil_mode, hw",
    [
        ((2, 2), (2, 2), (0, 0), 0, (8, 8)),
        ((2, 2), (2, 2), (0, 0), 0, (7, 9)),
        ((3, 3), (2, 2), (1, 1), 0, (9, 10)),
        ((3, 3), (2, 2), (0, 0), 1, (8, 7)),
        ((2, 3), (1, 2), (1, 0), 0, (5, 6)),
    ],
)
def test_runtime_rate_max_pool_kernel_equals_torch(kernel, stride, pads, ceil_mode, hw):
    """The spiking runtime's rate max pooling on the C++ kernel, over three chunks that carry the
    running counts and maxima: outputs and carried state equal to the torch oracle (per-channel
    θ, negative θ included: a spike is any nonzero value), windows clipped at padding, floor and
    ceil mode."""
    gen = torch.Generator().manual_seed(sum(hw))
    C = 3
    theta = torch.tensor([0.7, 1.3, -0.4])
    spikes = (torch.rand((10, 4, C) + hw, generator=gen) < 0.3).float() * theta.reshape(1, 1, C, 1, 1)
    h_out = F.max_pool2d(torch.zeros((1, 1) + hw), kernel, stride, pads, ceil_mode=bool(ceil_mode)).shape[-2:]
    ours, want = (None, None), (None, None)
    for chunk in (spikes[:4], spikes[4:7], spikes[7:]):
        got = event.rate_max_pool_steps(chunk, theta, kernel, stride, pads, tuple(h_out), *ours)
        expected = _rate_max_pool_steps_oracle(chunk, theta, kernel, stride, pads, ceil_mode, *want)
        for a, b in zip(got, expected):
            assert a.shape == b.shape and torch.equal(a, b)
        ours, want = got[1:], expected[1:]
    assert event.rate_max_pool_steps(spikes.double(), theta, kernel, stride, pads, tuple(h_out)) is None
    assert event.rate_max_pool_steps(spikes, torch.rand(5), kernel, stride, pads, tuple(h_out)) is None


@pytest.mark.skipif(not event.available(), reason="event extension not built")
@settings(max_examples=40, deadline=None)
@given(
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    sh=st.integers(1, 3),
    sw=st.integers(1, 3),
    ph=st.integers(0, 2),
    pw=st.integers(0, 2),
    ceil_mode=st.booleans(),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_runtime_rate_max_pool_kernel_on_random_windows(kh, kw, sh, sw, ph, pw, ceil_mode, h, w, seed):
    """Random 2-D windows, strides, pads (at most half the window, as max_pool2d allows), floor or
    ceil mode and map sizes: the kernel's outputs and carried state equal the torch oracle's over
    two chunks."""
    from hypothesis import assume

    assume(ph <= kh // 2 and pw <= kw // 2 and h + 2 * ph >= kh and w + 2 * pw >= kw)
    gen = torch.Generator().manual_seed(seed)
    theta = torch.tensor([0.5, 2.0])
    spikes = (torch.rand((5, 2, 2, h, w), generator=gen) < 0.4).float() * theta.reshape(1, 1, 2, 1, 1)
    out_hw = tuple(
        F.max_pool2d(torch.zeros((1, 1, h, w)), (kh, kw), (sh, sw), (ph, pw), ceil_mode=ceil_mode).shape[-2:]
    )
    ours, want = (None, None), (None, None)
    for chunk in (spikes[:2], spikes[2:]):
        got = event.rate_max_pool_steps(chunk, theta, (kh, kw), (sh, sw), (ph, pw), out_hw, *ours)
        expected = _rate_max_pool_steps_oracle(chunk, theta, (kh, kw), (sh, sw), (ph, pw), ceil_mode, *want)
        assert all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(got, expected))
        ours, want = got[1:], expected[1:]


def test_runtime_runs_rate_max_pools_on_the_kernel_as_torch_did(small_digits_cnn, monkeypatch):
    """A compiled digits CNN (two 2×2 rate max pools) gives the same outputs, bit for bit, with
    the pools on the C++ kernel and on the torch composition, in one chunk and in chunks of 3."""
    import snncompiler as snnc
    from snncompiler.runtime import snn

    if not event.available():
        pytest.skip("event extension not built")
    path, train, test = small_digits_cnn
    model = snnc.compile(str(path), train.x[:128], quiet=True)
    x = torch.from_numpy(test.x[:32])
    calls = []
    original = snn._rate_maxpool_kernel

    def counted(*args):
        result = original(*args)
        calls.append(result is not None)
        return result

    monkeypatch.setattr(snn, "_rate_maxpool_kernel", counted)
    fast = [model.runner(chunk=chunk).run_steps(x, 8) for chunk in (None, 3)]
    assert calls and all(calls)
    monkeypatch.setattr(snn, "_rate_maxpool_kernel", lambda *args: None)
    slow = [model.runner(chunk=chunk).run_steps(x, 8) for chunk in (None, 3)]
    assert all(torch.equal(a, b) for a, b in zip(fast, slow))


def _rate_max_pool_composed(x: torch.Tensor) -> torch.Tensor:
    """Rate max pooling as fine-tuning composed it in torch before the kernel (the oracle)."""
    from snncompiler.runtime.ops import _separable_max

    pooled = _separable_max(x.cumsum(0), [2, 2])
    return torch.diff(pooled, dim=0, prepend=torch.zeros_like(pooled[:1]))


@pytest.mark.skipif(not event.available(), reason="event extension not built")
@pytest.mark.parametrize("shape", [(6, 40, 8, 8), (5, 3, 7, 9), (1, 2, 2, 2), (3, 4, 1, 6), (0, 2, 4, 4)])
def test_rate_max_pool_kernel_equals_torch_autograd(shape):
    """The C++ rate max pooling used by fine-tuning: values and gradient bit for bit those of
    torch autograd through cumsum → max over row pairs, then column pairs → diff, on spike-like
    inputs (sums tie all the time: the gradient splits in halves at each maximum), odd sizes
    (the last row/column gets no gradient), a NaN (passes the whole gradient to both sides), ±inf
    and an empty time axis."""
    gen = torch.Generator().manual_seed(sum(shape))
    x = (torch.rand(shape, generator=gen) < 0.3).float() * 0.5
    if x.numel():
        x[..., 0, 0] += torch.randn(shape[:2], generator=gen) * 0.1
        flat = x.view(-1)
        picks = torch.randint(0, flat.numel(), (3,), generator=gen)
        flat[picks[0]], flat[picks[1]], flat[picks[2]] = float("nan"), float("inf"), -float("inf")
    ours, theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    got, want = event.rate_max_pool_2x2(ours), _rate_max_pool_composed(theirs)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(want))
    grad = torch.randn(want.shape, generator=gen)
    got.backward(grad)
    want.backward(grad)
    assert torch.equal(torch.isnan(ours.grad), torch.isnan(theirs.grad))
    assert torch.equal(torch.nan_to_num(ours.grad), torch.nan_to_num(theirs.grad))
    clean = (torch.rand((4, 8, 6, 6), generator=gen) < 0.4).float()
    ours, theirs = clean.clone().requires_grad_(True), clean.clone().requires_grad_(True)
    event.rate_max_pool_2x2(ours).sum().backward()
    _rate_max_pool_composed(theirs).sum().backward()
    assert torch.equal(ours.grad, theirs.grad) and bool((ours.grad == 0.5).any())  # a tie was split
    assert event.rate_max_pool_2x2(x.double()) is None and event.rate_max_pool_2x2(x.flatten(0, 1)) is None


@pytest.mark.parametrize("shape", [(64, 32, 8, 8), (3, 70, 17, 13), (2, 3, 5, 3)])
def test_max_pool_2x2_kernel_matches_max_pool2d(simd, shape):
    """The runtime's 2×2/2 max pool on the C++ kernel (float32 CPU maps of 2^16 elements and up;
    smaller ones take torch's path): max_pool2d's values, NaN and ±inf included, odd sizes
    floored (rows of 8 output columns and more take the vector path, the rest the scalar one)."""
    from snncompiler.ir import Node
    from snncompiler.runtime.ops import IMPLEMENTATIONS

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen) * (torch.rand(shape, generator=gen) < 0.3)
    flat = x.view(-1)
    picks = torch.randint(0, flat.numel(), (6,), generator=gen)
    flat[picks[:2]], flat[picks[2:4]], flat[picks[4:]] = float("nan"), float("inf"), -float("inf")
    direct = event.max_pool_2x2(x)
    node = Node("maxpool", "p", ["x"], ["y"], {"kernel": [2, 2], "stride": [2, 2]}, {})
    (via_op,) = IMPLEMENTATIONS["maxpool"](node, x)  # narrower than 8 or small: torch's path
    want = F.max_pool2d(x, 2)
    for got in (direct, via_op):
        assert got.shape == want.shape
        assert torch.equal(torch.isnan(got), torch.isnan(want))
        assert torch.equal(torch.nan_to_num(got, nan=0.0), torch.nan_to_num(want, nan=0.0))
    assert event.max_pool_2x2(x.double()) is None and event.max_pool_2x2(x.transpose(2, 3)) is None
