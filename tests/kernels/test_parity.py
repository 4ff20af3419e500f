"""Forward parity: every kernel backend reproduces the reference oracle exactly.

Spikes must be identical (every format) and the final membrane within 1e-6 in float32,
over hypothesis-drawn T, shapes, theta layouts, decay, reset modes and v0. "Quantized"
examples use inputs on a 1/8 grid so that h lands exactly on theta and the >= boundary is
exercised, not just avoided.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snncompiler.kernels import neuron_multistep, neuron_multistep_reference, theta_layout
from tests.kernels.conftest import device_for

THETA_LAYOUTS = ("float", "0d", "channel", "last", "full", "gapped")


@st.composite
def cases(draw):
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=4)))
    return dict(
        T=draw(st.integers(1, 9)),
        shape=shape,
        layout=draw(st.sampled_from(THETA_LAYOUTS)),
        decay=draw(st.sampled_from([1.0, 0.5, 0.75, 0.9]) | st.floats(0.0, 1.0)),
        reset=draw(st.sampled_from(["soft", "hard"])),
        v_reset=draw(st.sampled_from([0.0, -0.5, 0.25])),
        # v0 layouts as theta's: the C++ kernel reads a scalar / per-channel / per-feature v0 unexpanded
        v0=draw(st.sampled_from(["float", "full", "last", "channel", "0d", "gapped"])),
        quantized=draw(st.booleans()),
        signed_theta=draw(st.booleans()),
        fmt=draw(st.sampled_from(["value", "binary", "packed"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def theta_shape(layout: str, shape: tuple) -> tuple | None:
    """The shape of theta for a layout (None: a Python float)."""
    nd = len(shape)
    if layout == "float":
        return None
    if layout == "0d":
        return ()
    if layout == "channel":  # [C, 1, 1] for [B, C, H, W]
        axis = 1 if nd > 1 else 0
        return (shape[axis],) + (1,) * (nd - axis - 1)
    if layout == "last":  # per-feature [F]
        return (shape[-1],)
    if layout == "gapped" and nd >= 3:  # non-adjacent axes: the layout must expand it
        return (shape[0], 1, shape[2]) + tuple(shape[3:])
    return shape


def make_inputs(c, device="cpu", dtype=torch.float32):
    """x, v0, theta for a drawn case (deterministic in c["seed"])."""
    g = torch.Generator().manual_seed(c["seed"])
    shape, T = c["shape"], c["T"]
    if c["quantized"]:
        x = torch.randint(-4, 9, (T, *shape), generator=g) / 8.0
        pool = torch.tensor([0.5, 1.0, 1.5] + ([-0.5, 0.0] if c["signed_theta"] else []))
    else:
        x = torch.randn((T, *shape), generator=g) * 0.7 + 0.2
        pool = None
    ts = theta_shape(c["layout"], shape)
    if ts is None:
        theta = 1.0 if c["quantized"] else float(torch.rand((), generator=g)) + 0.25
    elif pool is not None:
        theta = pool[torch.randint(0, len(pool), ts, generator=g)]
    else:
        theta = torch.rand(ts, generator=g) * 1.5 + 0.25
        if c["signed_theta"]:
            theta = theta - 0.5
    if c["v0"] == "float":
        v0 = 0.125
    elif c["v0"] == "full":
        v0 = torch.randint(-4, 5, shape, generator=g) / 8.0 if c["quantized"] else torch.randn(shape, generator=g) * 0.3
    else:
        v0 = torch.randn(theta_shape(c["v0"], shape), generator=g) * 0.3
    to = (lambda t: t.to(device)) if device != "cpu" else (lambda t: t)
    x = to(x).to(dtype)
    v0 = to(v0) if isinstance(v0, torch.Tensor) else v0
    theta = to(theta) if isinstance(theta, torch.Tensor) else theta
    return x, v0, theta


def check_case(c, backend, dtype=torch.float32):
    x, v0, theta = make_inputs(c, device_for(backend), dtype)
    kw = dict(decay=c["decay"], reset=c["reset"], v_reset=c["v_reset"], spike_format=c["fmt"])
    s, v = neuron_multistep(x, v0, theta, backend=backend, **kw)
    rs, rv = neuron_multistep_reference(
        x.cpu(),
        v0 if not isinstance(v0, torch.Tensor) else v0.cpu(),
        theta if not isinstance(theta, torch.Tensor) else theta.cpu(),
        **kw,
    )
    assert s.dtype == rs.dtype and s.shape == rs.shape
    assert torch.equal(s.cpu(), rs), f"spikes differ ({(s.cpu() != rs).sum().item()} entries)"
    assert v.dtype == torch.float32 and v.shape == x.shape[1:]
    torch.testing.assert_close(v.cpu(), rv, rtol=0, atol=1e-6)
    check_count(x, v0, theta, backend, kw)


def check_count(x, v0, theta, backend, kw):
    """return_count: the number of s = 1 events where theta != 0, against the reference's 0/1
    spikes (the C++ kernel counts inside the kernel; other backends count their output)."""
    s, v, count = neuron_multistep(x, v0, theta, backend=backend, return_count=True, **kw)
    cpu = (lambda t: t.cpu()) if isinstance(theta, torch.Tensor) else (lambda t: t)
    binary, _ = neuron_multistep_reference(
        x.cpu(), v0 if not isinstance(v0, torch.Tensor) else v0.cpu(), cpu(theta), **dict(kw, spike_format="binary")
    )
    firing = torch.as_tensor(cpu(theta), dtype=torch.float32).expand(x.shape[1:]) != 0
    expected = int((binary.bool() & firing).sum())
    assert count.dtype == torch.int64 and count.dim() == 0 and count.device == x.device
    assert int(count) == expected


_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings(max_examples=150, **_SETTINGS)
@given(c=cases())
def test_cpu_matches_reference(c):
    pytest.importorskip("snncompiler.kernels._lif_cpu", reason="C++ extension not built")
    check_case(c, "cpu")


@settings(max_examples=40, **_SETTINGS)
@given(c=cases())
def test_reference_spike_count(c):
    """The counting fallback (count_spikes on each format's output) on the reference backend."""
    x, v0, theta = make_inputs(c)
    check_count(
        x, v0, theta, "reference", dict(decay=c["decay"], reset=c["reset"], v_reset=c["v_reset"], spike_format=c["fmt"])
    )


@settings(max_examples=50, **_SETTINGS)
@given(c=cases())
def test_membrane_is_bit_identical(backend, c):
    """Stricter than the 1e-6 contract: the kernels round exactly like the oracle, so a fused
    multiply-add slipping into a build (h = fma(decay, v, x)) is caught here (1e-6 is not)."""
    c = dict(c, decay=0.9 if c["decay"] == 1.0 else c["decay"], quantized=False, T=max(c["T"], 4))
    x, v0, theta = make_inputs(c, device_for(backend))
    kw = dict(decay=c["decay"], reset=c["reset"], v_reset=c["v_reset"])
    _, v = neuron_multistep(x, v0, theta, backend=backend, **kw)
    _, rv = neuron_multistep_reference(x, v0, theta, **kw)
    assert torch.equal(v, rv)


@settings(max_examples=60, **_SETTINGS)  # the Triton interpreter is slow: few, small cases
@given(c=cases())
def test_triton_matches_reference(c):
    from snncompiler.kernels import available_backends

    if "triton" not in available_backends():
        pytest.skip("triton needs a GPU or TRITON_INTERPRET=1")
    check_case(c, "triton")


@settings(max_examples=100, **_SETTINGS)
@given(c=cases())
def test_cuda_matches_reference(c):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    check_case(c, "cuda")


@settings(max_examples=60, **_SETTINGS)
@given(c=cases())
def test_cuda_vector_path_matches_reference(c, monkeypatch):
    """The four-neurons-per-thread CUDA kernel (large layers) on small ones, so that it is
    exercised here: shapes with N % 4 == 0 take it, the others the one-neuron path."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from snncompiler.kernels import cuda

    monkeypatch.setattr(cuda, "VEC4_MIN_N", 0)
    check_case(c, "cuda")


@settings(max_examples=60, **_SETTINGS)
@given(c=cases())
def test_cuda_shallow_unroll_path_matches_reference(c, monkeypatch):
    """Test layers are small enough for the CUDA kernel's deeper unroll (16 steps in flight);
    the 8-step copy that larger layers run is exercised here with the deeper one switched off."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from snncompiler.kernels import cuda

    monkeypatch.setattr(cuda, "DEEP_UNROLL", False)
    cuda.deep_unroll_max_n.cache_clear()
    try:
        check_case(c, "cuda")
    finally:
        cuda.deep_unroll_max_n.cache_clear()  # the next test sees DEEP_UNROLL restored


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(backend, dtype):
    """x in float16/bfloat16: spikes in x's dtype, membrane accumulated and returned in float32."""
    if backend == "cpu" and dtype == torch.float16:
        pytest.skip("the C++ kernel reads float32 and bfloat16 (float16 runs on the reference on CPU)")
    if backend == "triton" and dtype == torch.bfloat16 and not torch.cuda.is_available():
        pytest.skip("the Triton interpreter truncates float32->bfloat16 casts (GPUs round to nearest even)")
    c = dict(
        T=5,
        shape=(3, 17),
        layout="channel",
        decay=0.75,
        reset="soft",
        v_reset=0.0,
        v0="full",
        quantized=False,
        signed_theta=False,
        fmt="value",
        seed=3,
    )
    check_case(c, backend, dtype)


def test_edge_sizes(backend):
    """T = 0 (no steps: v_final = v0) and N = 0 (no neurons) run and match the reference."""
    dev = device_for(backend)
    for T, shape in [(0, (4, 3)), (3, (0, 5)), (1, (1,))]:
        x = torch.randn((T, *shape), device=dev)
        v0 = torch.full(shape, 0.3, device=dev)
        for fmt in ("value", "binary", "packed"):
            s, v = neuron_multistep(x, v0, 0.5, backend=backend, spike_format=fmt)
            rs, rv = neuron_multistep_reference(x.cpu(), v0.cpu(), 0.5, spike_format=fmt)
            assert torch.equal(s.cpu(), rs) and torch.equal(v.cpu(), rv)
            assert v.data_ptr() != v0.data_ptr() or v.numel() == 0  # never aliases the input


def test_inputs_not_mutated_and_strided_x(backend):
    dev = device_for(backend)
    x = torch.randn(4, 6, 5, device=dev).transpose(1, 2)  # non-contiguous
    v0 = torch.randn(5, 6, device=dev)
    x0, v00 = x.clone(), v0.clone()
    s, v = neuron_multistep(x, v0, 0.4, backend=backend, decay=0.5)
    rs, rv = neuron_multistep_reference(x.cpu(), v0.cpu(), 0.4, decay=0.5)
    assert torch.equal(x, x0) and torch.equal(v0, v00)
    assert torch.equal(s.cpu(), rs)
    torch.testing.assert_close(v.cpu(), rv, rtol=0, atol=1e-6)


def test_strided_theta_and_v0(backend):
    """theta and v0 given as non-contiguous views (a per-channel slice of a larger tensor, an
    expanded scalar, a transposed full tensor): the kernels read compact buffers, so such views
    must be laid out first, never passed by address."""
    dev = device_for(backend)
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(5, 4, 3, 6, generator=g) * 0.8 + 0.3).to(dev)
    per_channel = (torch.rand(4, 2, 1, 1, generator=g) + 0.2).to(dev)[:, 1:]  # every other element
    cases = [
        (per_channel[:, 0], (torch.rand(4, 2, 1, generator=g) * 0.5).to(dev)[:, 1:]),  # [4, 1, 1], stride 2
        (torch.tensor(0.7, device=dev).expand(4, 1, 1), torch.tensor(0.2, device=dev).expand(3, 6)),
        (
            (torch.rand(6, 3, generator=g) + 0.3).to(dev).t(),
            (torch.rand(6, 3, 4, generator=g) * 0.5).to(dev).permute(2, 1, 0),
        ),
    ]
    for theta, v0 in cases:
        assert not theta.is_contiguous() and not v0.is_contiguous()
        s, v = neuron_multistep(x, v0, theta, backend=backend, decay=0.75)
        rs, rv = neuron_multistep_reference(x.cpu(), v0.cpu(), theta.cpu(), decay=0.75)
        assert torch.equal(s.cpu(), rs)
        torch.testing.assert_close(v.cpu(), rv, rtol=0, atol=1e-6)


def test_known_trajectory():
    """A hand-computed IF/LIF trace: the reference itself is checked against arithmetic."""
    x = torch.tensor([[0.6], [0.6], [0.6], [0.0], [1.0]])
    s, v = neuron_multistep_reference(x, 0.0, 1.0)  # IF, soft: h = .6 1.2(fire->.2) .8 .8 1.8(fire->.8)
    assert s.flatten().tolist() == [0.0, 1.0, 0.0, 0.0, 1.0]
    assert v.item() == pytest.approx(0.8, abs=1e-6)
    s, v = neuron_multistep_reference(x, 0.0, 1.0, decay=0.5, reset="hard", v_reset=-0.25)
    # h = .6, .9, 1.05 (fire -> -.25), -.125, .9375
    assert s.flatten().tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert v.item() == pytest.approx(0.9375, abs=1e-6)


@pytest.mark.parametrize("layout", THETA_LAYOUTS)
def test_theta_layout_is_small(layout):
    """theta_layout indexes like a broadcast but keeps theta small (except the gapped layout)."""
    shape = (2, 3, 4, 5)
    ts = theta_shape(layout, shape)
    theta = torch.arange(math.prod(ts or ()), dtype=torch.float32).reshape(ts or ()) + 1
    small, inner = theta_layout(theta, shape)
    n = torch.arange(math.prod(shape))
    assert torch.equal(small[(n // inner) % small.numel()], theta.expand(shape).reshape(-1))
    if layout != "gapped":
        assert small.numel() == max(1, theta.numel())


@pytest.mark.parametrize("fmt", ["value", "binary", "packed"])
def test_input_constant_over_time(backend, fmt):
    """x0.unsqueeze(0).expand(T, ...) (the runtime's first layer under direct encoding): the C++
    kernel reads x0 at every step without the T-fold copy; every backend matches the reference
    on the materialised input, and the view itself is left alone."""
    dev = device_for(backend)
    g = torch.Generator().manual_seed(11)
    x0 = (torch.rand(3, 4, 5, generator=g) * 0.9).to(dev)
    x = x0.unsqueeze(0).expand(6, 3, 4, 5)
    theta = (torch.rand(4, 1, generator=g) + 0.3).to(dev)
    s, v, count = neuron_multistep(x, 0.1, theta, backend=backend, spike_format=fmt, decay=0.9, return_count=True)
    rs, rv = neuron_multistep_reference(x.contiguous().cpu(), 0.1, theta.cpu(), spike_format=fmt, decay=0.9)
    assert torch.equal(s.cpu(), rs) and torch.equal(v.cpu(), rv)
    assert s.is_contiguous() and x.stride(0) == 0
    binary, _ = neuron_multistep_reference(x.contiguous().cpu(), 0.1, theta.cpu(), spike_format="binary", decay=0.9)
    assert int(count) == int(binary.sum())
    # x0 in another layout (a conv's channels-last output, as the runtime's first layer gets it)
    x0_cl = x0.unsqueeze(0).contiguous(memory_format=torch.channels_last)[0]
    s_cl, v_cl = neuron_multistep(
        x0_cl.unsqueeze(0).expand(6, 3, 4, 5), 0.1, theta, backend=backend, spike_format=fmt, decay=0.9
    )
    assert torch.equal(s_cl.cpu(), rs) and torch.equal(v_cl.cpu(), rv)


def test_gradient_through_an_input_constant_over_time(backend):
    """Training through a time-broadcast input: the gradient reaching x0 sums over the steps,
    as autograd through the reference loop gives it."""
    dev = device_for(backend)
    x0 = (torch.rand(3, 5, generator=torch.Generator().manual_seed(5)) * 0.9).to(dev).requires_grad_()
    s, v = neuron_multistep(x0.unsqueeze(0).expand(6, 3, 5), 0.1, 0.5, backend=backend, decay=0.9)
    (s.sum() + v.pow(2).sum()).backward()
    got, x0.grad = x0.grad.clone(), None
    s, v = neuron_multistep_reference(x0.unsqueeze(0).expand(6, 3, 5), 0.1, 0.5, decay=0.9)
    (s.sum() + v.pow(2).sum()).backward()
    torch.testing.assert_close(got, x0.grad, rtol=0, atol=1e-5)
