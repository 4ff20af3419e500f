"""Backward parity: each backend's fused surrogate-gradient backward matches autograd
through the reference loop (the oracle) to 1e-5, for x, v0 and theta."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snncompiler.kernels import neuron_multistep, neuron_multistep_reference
from snncompiler.kernels.surrogate import SURROGATES, surrogate_grad
from tests.kernels.conftest import device_for, kernel_backends
from tests.kernels.test_parity import theta_shape


@st.composite
def grad_cases(draw):
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    return dict(
        T=draw(st.integers(1, 8)),
        shape=shape,
        layout=draw(st.sampled_from(["float", "0d", "channel", "last", "full", "gapped"])),
        decay=draw(st.sampled_from([1.0, 0.5, 0.8])),
        reset=draw(st.sampled_from(["soft", "hard"])),
        v_reset=draw(st.sampled_from([0.0, -0.3])),
        surrogate=draw(st.sampled_from(sorted(SURROGATES))),
        alpha=draw(st.sampled_from([None, 1.5, 3.0])),
        detach_reset=draw(st.booleans()),
        v0_layout=draw(st.sampled_from(["full", "last", "channel", "0d"])),  # v0 layouts as theta's
        grad_v_only=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def grads(c, backend):
    """Gradients of a random linear loss of (spikes, v_final) w.r.t. (x, v0, theta)."""
    g = torch.Generator().manual_seed(c["seed"])
    shape, dev = c["shape"], device_for(backend) if backend != "oracle" else "cpu"
    x = torch.randn((c["T"], *shape), generator=g) * 0.8 + 0.3
    v0 = torch.randn(theta_shape(c["v0_layout"], shape), generator=g) * 0.3
    ts = theta_shape(c["layout"], shape)
    theta = torch.rand(ts if ts is not None else (), generator=g) + 0.5
    w_s = torch.randn((c["T"], *shape), generator=g)
    w_v = torch.randn(shape, generator=g)
    x, v0, theta, w_s, w_v = (t.to(dev).requires_grad_(t is not w_s and t is not w_v) for t in (x, v0, theta, w_s, w_v))
    kw = dict(
        decay=c["decay"],
        reset=c["reset"],
        v_reset=c["v_reset"],
        surrogate=c["surrogate"],
        alpha=c["alpha"],
        detach_reset=c["detach_reset"],
    )
    if backend == "oracle":
        s, v = neuron_multistep_reference(x, v0, theta, **kw)
    else:
        s, v = neuron_multistep(x, v0, theta, backend=backend, **kw)
    loss = (v * w_v).sum() if c["grad_v_only"] else (s * w_s).sum() + (v * w_v).sum()
    return [t.cpu() for t in torch.autograd.grad(loss, [x, v0, theta], allow_unused=True, materialize_grads=True)]


@pytest.mark.parametrize(
    "backend",
    ["reference"] + [b for b in kernel_backends() if b != "cuda"] + (["cuda"] if "cuda" in kernel_backends() else []),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(c=grad_cases())
def test_backward_matches_autograd_oracle(backend, c):
    for got, want, name in zip(grads(c, backend), grads(c, "oracle"), ("x", "v0", "theta")):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"grad {name}: {m}")


def test_gradients_are_nonzero_and_detach_matters():
    """Guard against a vacuous comparison: gradients exist and detach_reset changes them."""
    c = dict(
        T=6,
        shape=(4, 5),
        layout="channel",
        decay=1.0,
        reset="soft",
        v_reset=0.0,
        surrogate="atan",
        alpha=None,
        detach_reset=False,
        v0_layout="full",
        grad_v_only=False,
        seed=1,
    )
    attached = grads(c, "oracle")
    detached = grads(dict(c, detach_reset=True), "oracle")
    assert all(g.abs().sum() > 0 for g in attached)
    assert not torch.allclose(attached[0], detached[0])


@pytest.mark.parametrize("surrogate", sorted(SURROGATES))
def test_surrogate_matches_its_definition(surrogate):
    """Each surrogate derivative is the derivative of a known smooth spike function."""
    u = torch.linspace(-2, 2, 401, dtype=torch.float64, requires_grad=True)
    alpha = 1.7
    smooth = {
        "atan": lambda u: torch.atan(torch.pi / 2 * alpha * u) / torch.pi + 0.5,
        "sigmoid": lambda u: torch.sigmoid(alpha * u),
        "triangle": lambda u: torch.where(
            u.abs() <= 1 / alpha, 0.5 + alpha * u - torch.sign(u) * alpha**2 * u * u / 2, (u > 0).double()
        ),
    }[surrogate]
    (expected,) = torch.autograd.grad(smooth(u).sum(), u)
    torch.testing.assert_close(surrogate_grad(u.detach(), surrogate, alpha), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fmt", ["binary", "packed"])
def test_integer_spike_formats_still_give_membrane_gradients(backend, fmt):
    """Integer spikes carry no gradient; v_final does, exactly as in the value format."""
    dev = device_for(backend)
    g = torch.Generator().manual_seed(5)
    x0 = (torch.randn(6, 3, 7, generator=g) * 0.8 + 0.3).to(dev)
    w = torch.randn(3, 7, generator=g).to(dev)
    got, want = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    spikes, v = neuron_multistep(got, 0.0, 0.9, backend=backend, decay=0.75, spike_format=fmt)
    assert spikes.dtype == torch.uint8 and not spikes.requires_grad
    (v * w).sum().backward()
    _, rv = neuron_multistep_reference(want, 0.0, 0.9, decay=0.75)
    (rv * w).sum().backward()
    torch.testing.assert_close(got.grad.cpu(), want.grad.cpu(), rtol=1e-5, atol=1e-5)
