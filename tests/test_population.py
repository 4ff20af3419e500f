"""Populations of B neurons per unit (``population``): the op against B independent reference
neurons and against Hermite's identity, the compiled model against onnxruntime (the standard-ONNX
export) and against itself reloaded, what B buys on a converted model, energy counting, fine-tuning,
and the errors for bad values."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import Residual
from hypothesis import given, settings
from hypothesis import strategies as st

import snncompiler as snnc
from examples.workloads import export_onnx
from snncompiler.errors import OptionError, SnncError
from snncompiler.ir.neuron import NeuronSpec, population_inverse
from snncompiler.kernels import (
    neuron_multistep,
    neuron_multistep_reference,
    population_multistep,
    population_output,
)
from snncompiler.options import CompileOptions
from snncompiler.train import run_steps
from snncompiler.train.finetune import GraphNet


def _staggered(spec: NeuronSpec, theta: torch.Tensor, ndim: int) -> torch.Tensor:
    offsets = spec.population_offsets(theta, ndim)
    base = spec.initial_potential(theta)
    return base.reshape((1,) + (1,) * ndim) if offsets is None else base + offsets


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("population", [2, 3, 5])
def test_population_is_the_mean_of_independent_neurons(backend, reset, population):
    """Each unit's output is the mean of B reference neurons started at θ·(j + ½)/B, run one by
    one: k of their spikes at a step give exactly k·(θ·float32(1/B)) (population_output), and
    that is the mean of their spikes θ·s to within float32 rounding."""
    if backend not in snnc.kernels.available_backends():
        pytest.skip(f"{backend} backend not built here")
    gen = torch.Generator().manual_seed(population)
    x = torch.rand((7, 3, 4, 5), generator=gen) * 0.8
    theta = (torch.rand((4, 1), generator=gen) + 0.5).float()  # per channel of [3, 4, 5] samples
    spec = NeuronSpec(reset=reset, population=population)
    v0 = _staggered(spec, theta, x.dim() - 1)
    out, v, count = population_multistep(x, v0, theta, population, reset=reset, backend=backend, return_count=True)
    singles = [neuron_multistep_reference(x, v0[j], theta, reset=reset)[0] for j in range(population)]
    counts = torch.stack([s / theta for s in singles]).sum(0)
    assert torch.equal(out, population_output(counts, theta, population))
    torch.testing.assert_close(out, torch.stack(singles).sum(0) / population, rtol=1e-6, atol=1e-7)
    assert torch.equal(torch.round(out * population / theta), torch.round(counts))
    assert int(count) == int(torch.round(counts).sum())
    assert v.shape == (population,) + tuple(x.shape[1:])


def _fused_backend(backend: str) -> None:
    """Skip unless ``backend``'s fused population kernel can run here (Triton: a GPU, or the
    interpreter that tests/conftest.py turns on without one)."""
    if backend not in snnc.kernels.available_backends():
        pytest.skip(f"{backend} backend not usable here")


def _device(backend: str) -> str:
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


@pytest.fixture
def triton_calls(monkeypatch):
    """Counts calls of the Triton population kernel, so that a test knows the fused path ran."""
    from snncompiler.kernels import triton_kernel

    calls = []
    original = triton_kernel.population_forward

    def counted(*args, **kwargs):
        calls.append(args[4])
        return original(*args, **kwargs)

    monkeypatch.setattr(triton_kernel, "population_forward", counted)
    return calls


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("population", [2, 3, 7, 64])
@pytest.mark.parametrize("decay, reset", [(1.0, "soft"), (0.75, "soft"), (0.5, "hard")])
@pytest.mark.parametrize("static", [False, True])
def test_fused_population_equals_counted_spikes_of_the_plain_op(
    backend, population, decay, reset, static, triton_calls
):
    """The fused population kernels (inference on the CPU backend: C++; on the GPU backends:
    Triton) give, bit for bit, the outputs, final membranes and spike count of B plain neurons run
    through the reference op and counted: units in partial blocks (N = 3·5·37 is no multiple of a
    block), per-channel θ, a carried dense [B, ...] membrane and a time-static input read without
    copying."""
    _fused_backend(backend)
    device = _device(backend)
    gen = torch.Generator().manual_seed(population)
    steps, shape = 6, (3, 5, 37)
    x = torch.randn((1 if static else steps,) + shape, generator=gen)
    x = x.expand((steps,) + shape) if static else x
    theta = torch.rand((5, 1), generator=gen) + 0.4
    v0 = torch.randn((population,) + shape, generator=gen) * 0.3  # a carried state: every neuron its own
    x, theta, v0 = x.to(device), theta.to(device), v0.to(device)
    options = dict(decay=decay, reset=reset, return_count=True)
    fused = population_multistep(x, v0, theta, population, backend=backend, **options)
    assert triton_calls == ([population] if backend == "triton" else [])
    composed = population_multistep(x, v0, theta, population, backend="reference", **options)
    for a, b in zip(fused, composed):
        assert torch.equal(a, b)
    assert fused[0].shape == (steps,) + shape and fused[1].shape == (population,) + shape
    if backend == "triton" and population == 64 and not torch.cuda.is_available():
        return  # the interpreted Triton backward of 64·555 neurons takes 10 s; B = 2, 3, 7 check it
    # with gradients the value is the same, and x's gradient that of the B neurons' mean
    xg = x.clone().requires_grad_(True)
    out, _ = population_multistep(xg, v0, theta, population, decay=decay, reset=reset, backend=backend)
    assert torch.equal(out.detach(), fused[0])
    out.sum().backward()
    assert xg.grad is not None and bool(xg.grad.abs().sum() > 0)


@pytest.mark.skipif("cpu" not in snnc.kernels.available_backends(), reason="C++ kernel not built")
@pytest.mark.parametrize("population", [2, 5])
def test_fused_cpu_population_with_streaming_stores(population):
    """Large outputs go out with non-temporal stores and the next step's x prefetched: the same
    bits. The threshold is lowered so that a small layer (N a multiple of 16) takes that path."""
    from snncompiler.kernels import cpu

    gen = torch.Generator().manual_seed(population)
    x = torch.randn((5, 4, 8, 48), generator=gen)
    theta = torch.rand((8, 1), generator=gen) + 0.4
    v0 = torch.randn((population, 4, 8, 48), generator=gen) * 0.3
    previous = cpu.set_stream_min_bytes(64)
    try:
        before = cpu.streamed_calls()
        fused = population_multistep(x, v0, theta, population, backend="cpu", return_count=True)
        assert cpu.streamed_calls() == before + 1
    finally:
        cpu.set_stream_min_bytes(previous)
    composed = population_multistep(x, v0, theta, population, backend="reference", return_count=True)
    for a, b in zip(fused, composed):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("shape", [(3, 0, 5), (0, 4, 5), (1, 1)])
def test_fused_population_edge_sizes(backend, shape):
    _fused_backend(backend)
    device = _device(backend)
    x, v0 = torch.rand(shape, device=device), torch.zeros((2,) + shape[1:], device=device)
    fused = population_multistep(x, v0, 0.5, 2, backend=backend, return_count=True)
    composed = population_multistep(x, v0, 0.5, 2, backend="reference", return_count=True)
    assert [tuple(t.shape) for t in fused] == [shape, (2,) + shape[1:], ()]
    assert all(torch.equal(a, b) for a, b in zip(fused, composed))
    # the fused backward too: with no steps v_final is v0, and so is its gradient
    xg, v0g = x.clone().requires_grad_(True), (v0 + 0.25).requires_grad_(True)
    out, v = population_multistep(xg, v0g, 0.5, 2, backend=backend)
    assert type(out.grad_fn).__name__ == "_FusedPopulationBackward"
    grad_v = torch.rand(v.shape, generator=torch.Generator().manual_seed(0)).to(device)
    (out.sum() + (v * grad_v).sum()).backward()
    assert xg.grad.shape == x.shape and v0g.grad.shape == v0.shape
    if shape[0] == 0:
        assert torch.equal(v0g.grad, grad_v)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_triton_population_low_precision(dtype, triton_calls):
    """On the GPU backends a bfloat16/float16 input runs the fused kernel too (the C++ one takes
    float32 only): the membranes in float32, the outputs in x's dtype, the same bits as B
    reference neurons counted; a θ laid out on non-adjacent axes is expanded, not misread."""
    _fused_backend("triton")
    device = _device("triton")
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn((5, 2, 3, 9), generator=gen) * 0.6).to(dtype).to(device)
    theta = (torch.rand((3, 1), generator=gen) + 0.4).to(device)
    odd_theta = (torch.rand((2, 1, 9), generator=gen) + 0.4).to(device)  # axes 0 and 2: not adjacent
    v0 = (torch.randn((4, 2, 3, 9), generator=gen) * 0.3).to(device)
    for th in (theta, odd_theta):
        fused = population_multistep(x, v0, th, 4, backend="triton", return_count=True)
        composed = population_multistep(x, v0, th, 4, backend="reference", return_count=True)
        assert fused[0].dtype == dtype
        assert torch.equal(fused[1], composed[1]) and torch.equal(fused[2], composed[2])
        if dtype == torch.bfloat16 and not torch.cuda.is_available():
            # the Triton interpreter truncates float32 -> bfloat16 (GPUs round to nearest even):
            # the same value to within one bfloat16 step below
            gap = composed[0].float() - fused[0].float()
            assert bool((gap >= 0).all()) and bool((gap <= composed[0].float().abs() * 2**-7).all())
        else:
            assert torch.equal(fused[0], composed[0])
    assert triton_calls == [4, 4]


def test_runtime_runs_populations_on_the_fused_triton_kernel(residual_onnx, triton_calls):
    """The spiking runtime on the Triton backend (a GPU's, interpreted here) runs each population
    layer through the fused kernel: the same outputs and spike count as on the reference backend."""
    _fused_backend("triton")
    device = _device("triton")
    path, x = residual_onnx
    model = snnc.compile(str(path), x, timesteps=3, quiet=True, population=3)
    runs = {}
    for backend in ("triton", "reference"):
        runner = model.runner(backend=backend, device=device)
        out = runner.run(torch.as_tensor(x[:6]), 3)
        runs[backend] = (next(iter(out.values())).cpu(), runner.spike_count)
    assert triton_calls and set(triton_calls) == {3}
    assert torch.equal(runs["triton"][0], runs["reference"][0])
    assert runs["triton"][1] == runs["reference"][1] > 0


def test_population_inverse_is_the_float32_division():
    one = torch.ones((), dtype=torch.float32)
    for b in range(1, 65):
        assert population_inverse(b) == float(one / b) == float(np.float32(1) / np.float32(b))


def test_population_of_one_is_the_plain_neuron():
    x = torch.rand((5, 2, 6), generator=torch.Generator().manual_seed(1))
    a = population_multistep(x, torch.full((1, 1), 0.25), 0.5, 1)
    b = neuron_multistep(x, torch.full((1,), 0.25), 0.5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@settings(max_examples=60, deadline=None)
@given(
    steps=st.integers(1, 16),
    log_b=st.integers(0, 3),
    level=st.integers(0, 256),
    v0=st.sampled_from(["half", "zero"]),
)
def test_constant_input_is_rounded_to_one_of_t_times_b_levels(steps, log_b, level, v0):
    """Hermite's identity, Σ_j ⌊y + j/B⌋ = ⌊B·y⌋: B staggered IF neurons (θ = 1) fed x at every
    step emit ⌊T·B·x + ½⌋ spikes in all (⌊T·B·x⌋ from v0 = 0), the rate quantiser of T·B steps.
    Dyadic x and B keep every float32 sum exact, so the counts must match exactly."""
    b, x = 2**log_b, level / 256
    spec = NeuronSpec(v0=v0, population=b)
    theta = torch.tensor(1.0)
    inputs = torch.full((steps, 1), x)
    out, _ = population_multistep(inputs, _staggered(spec, theta, 1), theta, b, backend="reference")
    total = int(torch.round(out.sum() * b))
    half = 0.5 if v0 == "half" else 0.0
    assert total == min(steps * b, int(np.floor(steps * b * x + half)))


def test_population_gradient_reaches_input_and_theta():
    x = torch.rand((4, 3, 5), generator=torch.Generator().manual_seed(2), requires_grad=True)
    theta = torch.full((5,), 0.6, requires_grad=True)
    spec = NeuronSpec(population=3)
    out, _ = population_multistep(x, _staggered(spec, theta, 2), theta, 3, surrogate="triangle", alpha=1.0)
    out.sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)
    assert theta.grad is not None and bool(theta.grad.abs().sum() > 0)


@pytest.mark.parametrize("backend", ["cpu", "reference", "triton"])
@pytest.mark.parametrize(
    "decay, reset, surrogate, detach",
    [(1.0, "soft", "atan", False), (0.75, "soft", "triangle", True), (0.5, "hard", "sigmoid", False)],
)
def test_population_gradients_are_those_of_the_mean_of_b_reference_neurons(backend, decay, reset, surrogate, detach):
    """With gradients a population's output is k·(θ/B) and its gradients (x, θ per channel, each
    neuron's v0, and through v_final) those of the mean of B independent reference neurons' value
    spikes, summed in torch here: the oracle. On the CPU and Triton backends the fused forward and
    backward run (no [T, B, ...] copies); on the reference backend the composition. θ's gradient once counted the spike
    term twice (the exact output was not detached from θ): this is what caught it."""
    _fused_backend(backend) if backend != "reference" else None
    device = _device(backend)
    gen = torch.Generator().manual_seed(5)
    b, shape = 3, (2, 4, 6)
    x0 = (torch.randn((5,) + shape, generator=gen) * 0.8).to(device)
    theta0 = (torch.rand((4, 1), generator=gen) + 0.4).to(device)
    v00 = (torch.randn((b,) + shape, generator=gen) * 0.3).to(device)
    g_out = torch.randn((5,) + shape, generator=gen).to(device)
    g_v = torch.randn((b,) + shape, generator=gen).to(device)
    options = dict(decay=decay, reset=reset, surrogate=surrogate, detach_reset=detach)

    def grads(run):
        x, theta, v0 = (t.clone().requires_grad_(True) for t in (x0, theta0, v00))
        out, v = run(x, theta, v0)
        ((out * g_out).sum() + (v * g_v).sum()).backward()
        return out.detach(), v.detach(), x.grad, theta.grad, v0.grad, out.grad_fn

    def oracle(x, theta, v0):
        runs = [neuron_multistep_reference(x, v0[j], theta, **options) for j in range(b)]
        return sum(s for s, _ in runs) / b, torch.stack([v for _, v in runs])

    ours = grads(lambda x, theta, v0: population_multistep(x, v0, theta, b, backend=backend, **options))
    want = grads(oracle)
    assert torch.equal(ours[1], want[1])
    torch.testing.assert_close(ours[0], want[0], rtol=1e-6, atol=1e-7)  # k·(θ/B) vs the float sum / B
    for got, expected in zip(ours[2:5], want[2:5]):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert (type(ours[5]).__name__ == "_FusedPopulationBackward") == (backend != "reference")


@pytest.fixture(scope="module")
def residual_onnx(tmp_path_factory):
    torch.manual_seed(0)
    path = export_onnx(Residual(), (1, 8, 8), tmp_path_factory.mktemp("pop") / "r.onnx")
    x = np.random.default_rng(0).random((256, 1, 8, 8), dtype=np.float32)
    return path, x


@pytest.mark.parametrize("population", [1, 2, 4, 8])
def test_larger_populations_follow_the_ann_more_closely_at_few_steps(residual_onnx, population):
    """At T=2 a unit of B neurons has 2B + 1 levels: the mean squared error against the ANN must
    fall with B like a quantiser's, about 4× per doubling (measured on an AVX2 EPYC under
    ATEN_CPU_CAPABILITY default and avx2 alike: 0.0018, 0.00032, 0.00007, 0.00002; ratios
    0.18-0.23, so the bound of 0.4 leaves room for another CPU's rounding)."""
    path, x = residual_onnx
    plain = snnc.compile(str(path), x, timesteps=2, quiet=True)
    model = snnc.compile(str(path), x, timesteps=2, quiet=True, population=population)
    ann = plain.ann(x)
    err = float(np.mean((model.run(x, 2) - ann) ** 2))
    if population == 1:
        assert err > 0.001, f"B=1 error {err}: the test network no longer shows the quantisation it is for"
    else:
        half = snnc.compile(str(path), x, timesteps=2, quiet=True, population=population // 2)
        assert err < 0.4 * float(np.mean((half.run(x, 2) - ann) ** 2))


def test_population_artifact_round_trip_and_standard_onnx(residual_onnx, tmp_path):
    """The attribute survives save/load, and onnxruntime on the standard-ONNX export (no custom
    op: a Scan over a [B, N, ...] membrane) computes what the runtime does."""
    import onnxruntime as ort

    path, x = residual_onnx
    model = snnc.compile(str(path), x, timesteps=4, quiet=True, population=3, channelwise=True)
    assert all(n.attrs.get("population") == 3 for n in model.graph.find("neuron"))
    model.save(tmp_path / "m.snn.onnx")
    loaded = snnc.load(tmp_path / "m.snn.onnx")
    assert loaded.options["population"] == 3
    ours = model.run(x[:32], 4)
    assert np.array_equal(ours, loaded.run(x[:32], 4))
    sess = ort.InferenceSession(model.to_onnx(4).SerializeToString())
    theirs = sess.run(None, {sess.get_inputs()[0].name: x[:32]})[0]
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=1e-5)
    plain = snnc.compile(str(path), x, timesteps=4, quiet=True, channelwise=True)
    assert "population" not in plain.graph.find("neuron")[0].attrs  # plain artifacts stay as they were


def test_event_driven_layers_read_population_outputs(small_digits_cnn):
    """Layers reading a population get fractions of θ, not 0/θ spikes: the event kernels' float
    route must take them (the binary route must not), with the dense run's outputs."""
    from snncompiler.kernels import event

    if not event.available():
        pytest.skip("event kernel not built")
    path, train, test = small_digits_cnn
    plain = snnc.compile(str(path), train.x[:256], timesteps=4, quiet=True)
    assert plain.runner(exec="event")._binary_spikes, "the plain model no longer uses the binary route"
    model = snnc.compile(str(path), train.x[:256], timesteps=4, quiet=True, population=3)
    runner = model.runner(exec="event")
    assert not runner._binary_spikes, "a population's outputs went down the binary-spike route"
    dense = model.run(test.x[:64], 4)
    np.testing.assert_allclose(model.run(test.x[:64], 4, exec="event"), dense, atol=1e-4, rtol=1e-4)


def test_standard_onnx_of_a_population_through_rate_max_pools(small_digits_cnn):
    """Rate max pooling of a population's outputs sums values, not spike counts (which assume
    outputs of 0 or θ): onnxruntime on the export must still match the runtime."""
    import onnxruntime as ort

    path, train, test = small_digits_cnn
    model = snnc.compile(str(path), train.x[:256], timesteps=4, quiet=True, population=2)
    assert model.graph.find("maxpool") and all(m.attrs["spiking"] == "rate" for m in model.graph.find("maxpool"))
    sess = ort.InferenceSession(model.to_onnx(4).SerializeToString())
    theirs = sess.run(None, {sess.get_inputs()[0].name: test.x[:32]})[0]
    np.testing.assert_allclose(theirs, model.run(test.x[:32], 4), atol=1e-5, rtol=1e-5)


def test_population_spikes_count_as_events_for_energy(tmp_path):
    """A linear layer reading a population: its synaptic operations are the population's spikes
    (not its nonzero outputs) times the layer's synapses per input."""
    from snncompiler.analysis.metrics import synaptic_operations

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    path = export_onnx(net, (6,), tmp_path / "mlp.onnx")
    x = np.random.default_rng(1).random((64, 6), dtype=np.float32)
    model = snnc.compile(str(path), x, timesteps=4, quiet=True, population=4)
    sops = synaptic_operations(model, x, 4)
    runner = model.runner()
    runner.run(torch.from_numpy(x), 4)
    (row,) = [r for r in sops["layers"] if r["input"] == "spikes"]
    assert row["ops"] == pytest.approx(runner.spike_count / len(x) * 3, rel=1e-5)
    nonzero = synaptic_operations(snnc.compile(str(path), x, timesteps=4, quiet=True), x, 4)
    assert sops["snn_acs"] > nonzero["snn_acs"]  # more neurons, more spikes: energy says so


def test_trainable_module_runs_populations_as_the_runtime_does(residual_onnx):
    path, x = residual_onnx
    model = snnc.compile(str(path), x, timesteps=4, quiet=True, population=4, channelwise=True)
    xt = torch.from_numpy(x[:32])
    with torch.no_grad():
        ours = run_steps(GraphNet(model.graph.copy()), xt, 4)
    torch.testing.assert_close(ours, model.runner(backend="reference").run_steps(xt, 4), atol=1e-4, rtol=1e-4)
    module = model.to_torch(backend="torch")
    torch.testing.assert_close(module(xt, 4), torch.from_numpy(model.run(x[:32], 4)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(population=0), "population"),
        (dict(population=65), "from 1 to 64"),
        (dict(population=True), "population"),
        (dict(population=2, maxpool="gated"), "gated"),
    ],
)
def test_bad_population_options_are_refused(options, message):
    with pytest.raises(OptionError, match=message):
        CompileOptions(**options)


def test_bad_population_attribute_in_an_artifact(residual_onnx, tmp_path):
    import onnx

    path, x = residual_onnx
    snnc.compile(str(path), x[:32], timesteps=2, quiet=True, population=2).save(tmp_path / "m.snn.onnx")
    proto = onnx.load(tmp_path / "m.snn.onnx")
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.name == "population":
                attr.i = 0
    onnx.save(proto, tmp_path / "bad.snn.onnx")
    with pytest.raises(SnncError, match="attribute 'population'"):
        snnc.load(tmp_path / "bad.snn.onnx")


def test_nir_export_refuses_a_population(residual_onnx, tmp_path):
    pytest.importorskip("nir")
    path, x = residual_onnx
    model = snnc.compile(str(path), x[:32], timesteps=2, quiet=True, population=2)
    with pytest.raises(SnncError, match="population 2 has no NIR form"):
        model.save_nir(tmp_path / "m.nir")


def test_cli_population(residual_onnx, tmp_path):
    path, x = residual_onnx
    np.savez(tmp_path / "calib.npz", x=x[:64])
    run = [sys.executable, "-m", "snncompiler.cli", "compile", str(path), "--calib", str(tmp_path / "calib.npz")]
    ok = subprocess.run(run + ["--population", "4", "-o", str(tmp_path / "p.snn.onnx")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "population 4" in ok.stdout
    assert snnc.load(tmp_path / "p.snn.onnx").options["population"] == 4
    bad = subprocess.run(
        run + ["--population", "0", "-o", str(tmp_path / "q.snn.onnx")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--population" in bad.stderr and "Traceback" not in bad.stderr


def test_a_trained_population_exports_and_runs_as_trained(tmp_path):
    """snncompiler.train.LIF(population=B) trains like any LIF and exports to an artifact whose
    Neuron nodes carry the population: the runtime reproduces the trained module's every step."""
    from snncompiler.train import LIF

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(64, 32),
        LIF(neuron="if", reset="soft", v0="half", population=3),
        torch.nn.Linear(32, 10),
    )
    x = np.random.default_rng(2).random((128, 1, 8, 8), dtype=np.float32)
    y = np.random.default_rng(3).integers(0, 10, 128)
    snnc.train.fit(net, (x, y), timesteps=4, epochs=1, progress=False)
    compiled = snnc.train.export(net, tmp_path / "p.snn.onnx", (1, 8, 8))
    assert [n.attrs.get("population") for n in compiled.graph.find("neuron")] == [3]
    loaded = snnc.load(tmp_path / "p.snn.onnx")
    with torch.no_grad():
        expected = run_steps(net, torch.from_numpy(x[:32]), 5)
    got = loaded.runner().run_steps(torch.from_numpy(x[:32]), 5)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_calibration_memory_counts_a_populations_spike_planes(residual_onnx):
    from snncompiler.formats.onnx import load_graph
    from snncompiler.passes.layerwise import calibration_memory

    graph = load_graph(residual_onnx[0])
    plain = calibration_memory(graph, 64, 8)
    assert calibration_memory(graph, 64, 8, population=1) == plain
    # input, mean output and B spike planes against input and output
    assert calibration_memory(graph, 64, 8, population=4) == 3 * plain
