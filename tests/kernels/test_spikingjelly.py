"""The reference oracle against SpikingJelly 2.0.0, an independent implementation.

Mapping (exact, bit for bit):
* IFNode(v_threshold=θ, v_reset=None)  == reset="soft", decay=1, v0=0
* IFNode(v_threshold=θ, v_reset=V_r)   == reset="hard", v_reset=V_r, decay=1, v0=V_r
* LIFNode(tau=τ, decay_input=False, v_reset=None or 0.0) == decay=1-1/τ, same reset.
  SpikingJelly charges H = V - (V - V_reset)/τ + X; with V_reset = 0 that is (1-1/τ)V + X.
  The two roundings agree exactly when τ is a power of two (V/τ is then exact), so the test
  uses τ ∈ {2, 4, 8, 16}; other τ differ by at most one ulp per step.
Explicit v0 goes through SpikingJelly's functional if_multi_step / lif_multi_step.
θ is drawn on a 1/64 grid so that SpikingJelly's Python-float threshold is a float32.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from snncompiler.kernels import neuron_multistep_reference

sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
sj_functional = pytest.importorskip("spikingjelly.activation_based.functional")
sj_surrogate = pytest.importorskip("spikingjelly.activation_based.surrogate")


@st.composite
def sj_cases(draw):
    return dict(
        T=draw(st.integers(1, 12)),
        shape=tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))),
        theta=draw(st.integers(16, 128)) / 64.0,
        tau=draw(st.sampled_from([None, 2.0, 4.0, 8.0, 16.0])),  # None: IF
        hard=draw(st.booleans()),
        v_reset=draw(st.sampled_from([0.0, -0.25, 0.5])),
        quantized=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _inputs(c):
    g = torch.Generator().manual_seed(c["seed"])
    shape = (c["T"], *c["shape"])
    x = torch.randint(-8, 17, shape, generator=g) / 16.0 if c["quantized"] else torch.randn(shape, generator=g)
    return x, g


def _ours(c, x, v0):
    v_reset = c["v_reset"] if c["tau"] is None else 0.0
    decay = 1.0 if c["tau"] is None else 1.0 - 1.0 / c["tau"]
    return neuron_multistep_reference(
        x, v0, c["theta"], decay=decay, reset="hard" if c["hard"] else "soft", v_reset=v_reset, spike_format="binary"
    )


@settings(max_examples=120, deadline=None)
@given(c=sj_cases())
def test_reference_matches_spikingjelly_nodes(c):
    x, _ = _inputs(c)
    v_reset = (c["v_reset"] if c["tau"] is None else 0.0) if c["hard"] else None
    if c["tau"] is None:
        node = sj_neuron.IFNode(v_threshold=c["theta"], v_reset=v_reset, step_mode="m")
    else:
        node = sj_neuron.LIFNode(
            tau=c["tau"], decay_input=False, v_threshold=c["theta"], v_reset=v_reset, step_mode="m"
        )
    with torch.no_grad():
        sj_spikes = node(x)
    spikes, v = _ours(c, x, 0.0 if v_reset is None else v_reset)  # SpikingJelly starts at v_reset (or 0)
    assert torch.equal(spikes.float(), sj_spikes)
    assert torch.equal(v, node.v)


@settings(max_examples=80, deadline=None)
@given(c=sj_cases())
def test_reference_matches_spikingjelly_functional_with_v0(c):
    x, g = _inputs(c)
    v0 = torch.randn(c["shape"], generator=g) * 0.5
    v_reset = (c["v_reset"] if c["tau"] is None else 0.0) if c["hard"] else None
    with torch.no_grad():
        if c["tau"] is None:
            sj_spikes, sj_v, _ = sj_functional.if_multi_step(x, v0, c["theta"], v_reset)
        else:
            sj_spikes, sj_v, _ = sj_functional.lif_multi_step(x, v0, c["tau"], False, c["theta"], v_reset)
    spikes, v = _ours(c, x, v0)
    assert torch.equal(spikes.float(), sj_spikes)
    assert torch.equal(v, sj_v)


SJ_SURROGATES = {"atan": "ATan", "sigmoid": "Sigmoid", "triangle": "PiecewiseQuadratic"}


@pytest.mark.parametrize("surrogate", sorted(SJ_SURROGATES))
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("tau", [None, 2.0])
def test_reference_gradients_match_spikingjelly(surrogate, hard, detach_reset, tau):
    """With θ = 1 (so θ·s = s) our surrogate gradients equal SpikingJelly's autograd."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(8, 3, 10, generator=g)
    v0 = torch.randn(3, 10, generator=g) * 0.3
    alpha = {"atan": 2.0, "sigmoid": 4.0, "triangle": 0.7}[surrogate]
    sg = getattr(sj_surrogate, SJ_SURROGATES[surrogate])(alpha=alpha)
    v_reset = 0.0 if hard else None
    grads = []
    for impl in ("sj", "ours"):
        xs, vs = x.clone().requires_grad_(), v0.clone().requires_grad_()
        if impl == "sj":
            if tau is None:
                spikes, v, _ = sj_functional.if_multi_step(xs, vs, 1.0, v_reset, sg, detach_reset)
            else:
                spikes, v, _ = sj_functional.lif_multi_step(xs, vs, tau, False, 1.0, v_reset, sg, detach_reset)
        else:
            spikes, v = neuron_multistep_reference(
                xs,
                vs,
                1.0,
                decay=1.0 if tau is None else 1 - 1 / tau,
                reset="hard" if hard else "soft",
                surrogate=surrogate,
                alpha=alpha,
                detach_reset=detach_reset,
            )
        loss = (spikes * torch.linspace(-1, 1, spikes.numel()).reshape(spikes.shape)).sum() + (v * v).sum()
        grads.append(torch.autograd.grad(loss, [xs, vs]))
    for ours, theirs in zip(grads[1], grads[0]):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
