"""The C++ kernel's per-ISA copies (baseline, AVX2, AVX-512) and its streaming (non-temporal)
output path each reproduce the reference exactly: elsewhere the tests run only the best ISA and,
at test sizes, never the streaming path, so every combination is forced here."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings

from snncompiler.errors import SnncError
from snncompiler.kernels import cpu, neuron_multistep, neuron_multistep_reference
from tests.kernels.test_gradients import grad_cases, grads
from tests.kernels.test_parity import _SETTINGS, cases, check_case

pytestmark = pytest.mark.skipif(not cpu.available(), reason="C++ extension not built")

COMBOS = [(isa, stream) for isa in cpu.supported_isas() for stream in (False, True)]


@contextlib.contextmanager
def kernel_settings(isa: str, stream: bool):
    """One ISA, and every value-spike output that can stream streamed (or none); restored after."""
    previous_isa = cpu.set_isa(isa)
    previous_min = cpu.set_stream_min_bytes(1 if stream else 0)
    try:
        yield
    finally:
        cpu.set_isa(previous_isa)
        cpu.set_stream_min_bytes(previous_min)


@pytest.fixture(params=COMBOS, ids=[f"{i}-{'stream' if s else 'cached'}" for i, s in COMBOS])
def isa_stream(request):
    with kernel_settings(*request.param):
        yield request.param


@pytest.fixture(params=cpu.supported_isas())
def isa(request):
    with kernel_settings(request.param, False):
        yield request.param


@settings(max_examples=60, **_SETTINGS)
@given(c=cases())
def test_every_isa_matches_reference(isa_stream, c):
    check_case(c, "cpu")


@pytest.mark.parametrize("fmt", ["value", "binary", "packed"])
@pytest.mark.parametrize("n", [1, 15, 2048, 2048 * 3 + 37, 2048 * 3 + 48])
def test_every_isa_on_multi_block_layers(isa_stream, fmt, n):
    """Several 2048-neuron blocks with a ragged last one, per-channel theta changing inside a
    block, a full v0, decay, and an input constant over time. Value spikes stream when every
    row starts on a 64-byte line (n % 16 == 0); the other sizes take the regular loop."""
    g = torch.Generator().manual_seed(n)
    T, C = 7, 3 if n % 3 == 0 else 1
    x = torch.randn(T, C, n // C, generator=g)
    v0 = torch.randn(C, n // C, generator=g) * 0.3
    theta = torch.rand(C, 1, generator=g) + 0.5
    kw = dict(decay=0.875, reset="soft", spike_format=fmt)
    streams = isa_stream[1] and fmt == "value" and n % 16 == 0
    for inp in (x, x[0].unsqueeze(0).expand(T, C, n // C)):
        before = cpu.streamed_calls()
        s, v = neuron_multistep(inp, v0, theta, backend="cpu", **kw)
        assert cpu.streamed_calls() - before == int(streams)
        rs, rv = neuron_multistep_reference(inp, v0, theta, **kw)
        assert torch.equal(s, rs), f"{isa_stream}: {(s != rs).sum().item()} spikes differ"
        assert torch.equal(v, rv)


def _bits_to_float(bits: list[int]) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.int32).view(torch.float32)


@pytest.mark.parametrize("fmt", ["value", "binary", "packed"])
def test_bfloat16_input_on_every_isa(isa, fmt):
    """bfloat16 x (and value spikes): the same spikes, bit for bit, and float32 membrane as the
    reference, which converts with torch; thresholds that sit exactly halfway between two
    bfloat16 numbers check the round-to-nearest-even of the spike values."""
    g = torch.Generator().manual_seed(11)
    T, C, n = 6, 4, 2048 + 40
    x = (torch.randn(T, C, n, generator=g) * 1.5).to(torch.bfloat16)
    ties = _bits_to_float([0x3F808000, 0x3F818000, 0x3FC08000, 0x3E4C8000])  # 1+2^-8, ...: ties in bfloat16
    theta = ties.reshape(C, 1)
    v0 = torch.randn(C, n, generator=g) * 0.3
    for inp in (x, x[0].unsqueeze(0).expand(T, C, n)):
        kw = dict(decay=0.875, reset="soft", spike_format=fmt)
        s, v, count = neuron_multistep(inp, v0, theta, backend="cpu", return_count=True, **kw)
        rs, rv = neuron_multistep_reference(inp, v0, theta, **kw)
        assert s.dtype == rs.dtype and torch.equal(s, rs), f"{(s != rs).sum().item()} spikes differ"
        assert v.dtype == torch.float32 and torch.equal(v, rv)
        binary, _ = neuron_multistep_reference(inp, v0, theta, **dict(kw, spike_format="binary"))
        assert int(count) == int(binary.sum()) > 0
    if fmt == "value":  # the ties were rounded to even, as torch does
        assert torch.equal(s.float().unique(), torch.cat([torch.zeros(1), ties.to(torch.bfloat16).float()]).unique())


def test_bfloat16_gradients_match_autograd(isa):
    g = torch.Generator().manual_seed(12)
    x = (torch.randn(5, 3, 700, generator=g)).to(torch.bfloat16).requires_grad_(True)
    w = torch.randn(5, 3, 700, generator=g).to(torch.bfloat16)
    theta = (torch.rand(3, 1, generator=g) + 0.5).requires_grad_(True)
    kw = dict(decay=0.9, surrogate="sigmoid")
    s, v = neuron_multistep(x, 0.0, theta, backend="cpu", **kw)
    got = torch.autograd.grad((s * w).sum() + v.sum(), (x, theta))
    rs, rv = neuron_multistep_reference(x, 0.0, theta, **kw)
    want = torch.autograd.grad((rs * w).sum() + rv.sum(), (x, theta))
    assert got[0].dtype == torch.bfloat16
    torch.testing.assert_close(got[0], want[0], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-3)


def test_float16_stays_on_the_reference():
    x = torch.randn(3, 5).to(torch.float16)
    with pytest.raises(SnncError, match="float16"):
        neuron_multistep(x, 0.0, 1.0, backend="cpu")


@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("decay", [1.0, 0.8125])
def test_streaming_path_on_every_isa(isa, reset, decay):
    """The streaming loop (hand-written vectors per ISA) on quantized inputs that hit theta
    exactly, zero and negative thresholds among the per-neuron ones, with the spike count."""
    g = torch.Generator().manual_seed(7)
    T, n = 9, 2048 * 2 + 64
    x = torch.randint(-4, 9, (T, n), generator=g) / 8.0
    theta = torch.tensor([0.5, 1.0, 0.0, -0.5, 1.5])[torch.randint(0, 5, (n,), generator=g)]
    v0 = torch.randint(-4, 5, (n,), generator=g) / 8.0
    kw = dict(decay=decay, reset=reset, v_reset=-0.25)
    previous = cpu.set_stream_min_bytes(1)
    try:
        before = cpu.streamed_calls()
        s, v, count = neuron_multistep(x, v0, theta, backend="cpu", return_count=True, **kw)
        assert cpu.streamed_calls() == before + 1
    finally:
        cpu.set_stream_min_bytes(previous)
    rs, rv = neuron_multistep_reference(x, v0, theta, **kw)
    binary, _ = neuron_multistep_reference(x, v0, theta, spike_format="binary", **kw)
    assert torch.equal(s, rs) and torch.equal(v, rv)
    assert int(count) == int((binary.bool() & (theta != 0)).sum()) > 0


@settings(max_examples=25, **_SETTINGS)
@given(c=grad_cases())
def test_every_isa_gradients_match_autograd(isa, c):
    for got, want in zip(grads(c, "cpu"), grads(c, "oracle")):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("surrogate", ["sigmoid", "atan", "triangle"])
def test_every_isa_gradients_far_from_threshold(isa, surrogate):
    """Membranes hundreds of thresholds away, where the sigmoid's exp leaves float range
    (the kernel clamps its vectorised exp there): gradients stay finite and equal autograd's."""
    g = torch.Generator().manual_seed(3)
    T, n = 5, 2048 + 48
    x = (torch.randn(T, n, generator=g) * 300).requires_grad_(True)
    w = torch.randn(T, n, generator=g)
    kw = dict(decay=0.9, surrogate=surrogate, alpha=4.0)
    s, v = neuron_multistep(x, 0.0, 1.0, backend="cpu", **kw)
    (got,) = torch.autograd.grad((s * w).sum() + v.sum(), x)
    rs, rv = neuron_multistep_reference(x, 0.0, 1.0, **kw)
    (want,) = torch.autograd.grad((rs * w).sum() + rv.sum(), x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_isa_selection_api():
    isas = cpu.supported_isas()
    assert isas[0] == "baseline" and cpu.isa() == isas[-1]  # the best one by default
    with pytest.raises(ValueError, match="isa: 'sse9'"):
        cpu.set_isa("sse9")
    with pytest.raises(ValueError, match="stream_min_bytes"):
        cpu.set_stream_min_bytes(-1)
    assert cpu.isa() == isas[-1]


def _child(env: dict, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


def test_environment_variables_configure_the_kernel():
    code = (
        "import warnings; warnings.simplefilter('always');"
        "from snncompiler.kernels import cpu; print(cpu.isa(), cpu.load().stream_min_bytes())"
    )
    r = _child({"SNNC_CPU_ISA": "baseline", "SNNC_CPU_STREAM_MB": "0.5"}, code)
    assert r.returncode == 0 and r.stdout.split() == ["baseline", str(1 << 19)], r.stderr
    r = _child({"SNNC_CPU_ISA": "sse9", "SNNC_CPU_STREAM_MB": "lots"}, code)
    assert r.returncode == 0 and r.stdout.split() == [cpu.supported_isas()[-1], str(8 << 20)], r.stderr
    assert "SNNC_CPU_ISA='sse9'" in r.stderr and "SNNC_CPU_STREAM_MB='lots'" in r.stderr
