"""The CPU backend's output buffer cache (kernels/csrc/lif_cpu.cpp BufferCache, handed to torch via DLPack)."""

from __future__ import annotations

import io
import threading

import pytest
import torch

from snncompiler.kernels import cpu, neuron_multistep, neuron_multistep_reference

pytestmark = pytest.mark.skipif(not cpu.available(), reason="C++ extension not built")

T, N = 4, 1 << 16  # a 1 MiB float32 output: the smallest size the cache serves


@pytest.fixture
def fresh_cache():
    """A cache with the default limit and nothing in it, restored afterwards."""
    cpu._limit.cache_clear()
    cpu.empty_cache()
    yield
    cpu._limit.cache_clear()
    cpu._limit()
    cpu.empty_cache()


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(T, N, generator=g) * 0.9, torch.zeros(N)


def test_freed_output_buffer_is_reused(fresh_cache):
    x, v0 = _inputs(0)
    out, _ = neuron_multistep(x, v0, 0.5, backend="cpu")
    address = out.data_ptr()
    del out
    before = cpu.cache_stats()
    assert before["cached_buffers"] >= 1
    out2, _ = neuron_multistep(x, v0, 0.5, backend="cpu")
    assert out2.data_ptr() == address
    assert cpu.cache_stats()["hits"] == before["hits"] + 1
    expected, _ = neuron_multistep_reference(x, v0, 0.5)
    assert torch.equal(out2, expected)


def test_a_view_keeps_its_buffer_out_of_the_cache(fresh_cache):
    x, v0 = _inputs(1)
    out, _ = neuron_multistep(x, v0, 0.5, backend="cpu")
    step = out[2]  # a view: shares the buffer after `out` itself is gone
    kept = step.clone()
    address = out.data_ptr()
    del out
    other, _ = neuron_multistep(x.flip(0).contiguous(), v0, 0.5, backend="cpu")
    assert other.data_ptr() != address
    assert torch.equal(step, kept)
    del step
    assert cpu.cache_stats()["cached_bytes"] >= T * N * 4


def test_cached_outputs_behave_as_ordinary_tensors(fresh_cache):
    x, v0 = _inputs(2)
    out, v = neuron_multistep(x, v0, 0.5, backend="cpu")
    assert out.is_contiguous() and out.dtype == torch.float32 and out.shape == (T, N)
    out.mul_(2)
    buf = io.BytesIO()
    torch.save(out, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf), out)
    binary, _ = neuron_multistep(x, v0, 0.5, backend="cpu", spike_format="binary")
    assert binary.dtype == torch.uint8 and torch.equal(binary.float() * 0.5 * 2, out)


def test_limit_zero_turns_the_cache_off(fresh_cache, monkeypatch):
    monkeypatch.setenv("SNNC_CPU_CACHE_MB", "0")
    cpu._limit.cache_clear()
    assert cpu.cached_empty((T, N), torch.float32) is None
    x, v0 = _inputs(3)
    out, _ = neuron_multistep(x, v0, 0.5, backend="cpu")
    del out
    assert cpu.cache_stats()["cached_bytes"] == 0


def test_limit_bounds_what_is_kept(fresh_cache, monkeypatch):
    monkeypatch.setenv("SNNC_CPU_CACHE_MB", "1.5")  # room for one 1 MiB buffer, not two
    cpu._limit.cache_clear()
    x, v0 = _inputs(4)
    a, _ = neuron_multistep(x, v0, 0.5, backend="cpu")
    b, _ = neuron_multistep(x, v0, 0.5, backend="cpu")
    del a, b
    stats = cpu.cache_stats()
    assert stats["cached_buffers"] == 1 and stats["cached_bytes"] <= 1.5 * (1 << 20)


def test_a_bad_limit_warns_and_uses_the_default(fresh_cache, monkeypatch):
    monkeypatch.setenv("SNNC_CPU_CACHE_MB", "lots")
    cpu._limit.cache_clear()
    with pytest.warns(RuntimeWarning, match="SNNC_CPU_CACHE_MB"):
        assert cpu._limit() == cpu.DEFAULT_CACHE_MB << 20


def test_empty_cache_frees_kept_buffers(fresh_cache):
    x, v0 = _inputs(5)
    out, _ = neuron_multistep(x, v0, 0.5, backend="cpu")
    del out
    assert cpu.cache_stats()["cached_bytes"] > 0
    cpu.empty_cache()
    assert cpu.cache_stats()["cached_bytes"] == 0


def test_gradient_buffer_from_the_cache_is_correct(fresh_cache):
    x, v0 = _inputs(6)
    x = (x * 2).requires_grad_()
    spikes, v = neuron_multistep(x, v0, 0.5, backend="cpu", surrogate="sigmoid")
    (spikes.sum() + v.sum()).backward()
    got = x.grad.clone()
    x.grad = None
    spikes, v = neuron_multistep_reference(x, v0, 0.5, surrogate="sigmoid")
    (spikes.sum() + v.sum()).backward()
    torch.testing.assert_close(got, x.grad, rtol=0, atol=1e-5)


def test_buffers_freed_from_several_threads(fresh_cache):
    """Tensors die on whichever thread drops them: the cache must stay consistent."""
    x, v0 = _inputs(7)
    expected, _ = neuron_multistep_reference(x, v0, 0.5)
    errors = []

    def work():
        try:
            for _ in range(20):
                out, _ = neuron_multistep(x, v0, 0.5, backend="cpu")
                if not torch.equal(out, expected):
                    errors.append("wrong spikes")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stats = cpu.cache_stats()
    assert stats["cached_bytes"] == stats["cached_buffers"] * T * N * 4


def test_a_torch_refusing_the_capsule_turns_the_cache_off(fresh_cache, monkeypatch):
    """If torch.from_dlpack stops accepting capsules, outputs fall back to torch's allocator."""

    def refuse(capsule):
        raise TypeError("capsules are not supported")

    monkeypatch.setattr(torch, "from_dlpack", refuse)
    monkeypatch.setattr(cpu, "_dlpack_failed", False)
    x, v0 = _inputs(8)
    with pytest.warns(RuntimeWarning, match="buffer cache is off"):
        out, _ = neuron_multistep(x, v0, 0.5, backend="cpu")
    expected, _ = neuron_multistep_reference(x, v0, 0.5)
    assert torch.equal(out, expected)
    assert cpu.cached_empty((T, N), torch.float32) is None
    assert cpu.cache_stats()["cached_bytes"] == 0


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_child_can_use_the_cache(fresh_cache):
    """A forked process (e.g. a DataLoader worker) inherits the cache and can run the op."""
    import multiprocessing

    x, v0 = _inputs(9)
    out, _ = neuron_multistep(x, v0, 0.5, backend="cpu")
    del out  # one buffer cached in the parent, inherited by the child
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        ok = pool.apply(_child_runs_op, (x, v0))
    assert ok


def _child_runs_op(x, v0):
    # as DataLoader workers do: torch ops in a forked child whose parent ran an OpenMP region
    # hang unless the child stays single-threaded (GNU OpenMP is not fork-safe)
    torch.set_num_threads(1)
    out, _ = neuron_multistep(x, v0, 0.5, backend="cpu")
    expected, _ = neuron_multistep_reference(x, v0, 0.5)
    return bool(torch.equal(out, expected)) and cpu.cache_stats()["hits"] >= 1


def test_the_allocator_rejects_impossible_requests():
    lib = cpu.load()
    with pytest.raises(ValueError, match="negative"):
        lib.empty([4, -1], 2, 32)
    with pytest.raises(ValueError, match="too large"):
        lib.empty([1 << 40, 1 << 30], 2, 32)
    with pytest.raises(ValueError, match="bits"):
        lib.empty([4], 2, 12)
