"""The benchmarks' prepared launches (a kernel called into buffers allocated once, without the
op's Python handling) compute what the op computes: their arguments are positional and must
follow every change of the kernels' signatures, on machines where nothing else calls them."""

import pytest
import torch

from snncompiler.kernels import available_backends, neuron_multistep

bench = pytest.importorskip("benchmarks.kernels", reason="run from the repository root (python -m pytest)")


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_prepared_launches_match_the_op(kind):
    if kind == "cpu" and "cpu" not in available_backends():
        pytest.skip("the C++ extension is not built")
    # the GPU launches run on a GPU, and Triton's also on CPU tensors under the interpreter
    dev = "cuda" if kind == "gpu" and torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 4096, generator=g) * 0.7 + 0.3).to(dev)
    v0 = torch.zeros(4096, device=dev)
    impls = (
        {"snnc-pre": bench.preallocated_cpu_kernel(x, v0)} if kind == "cpu" else bench.preallocated_gpu_kernels(x, v0)
    )
    if not impls:
        pytest.skip("no GPU backend can run here")
    expected, _ = neuron_multistep(x, v0, 1.0, backend="reference")
    assert 0 < float(expected.mean()) < 1
    for name, launch in impls.items():
        assert torch.equal(launch().cpu(), expected.cpu()), name
