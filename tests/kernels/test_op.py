"""The registered op: torch.library checks, torch.compile, argument errors, backend choice."""

from __future__ import annotations

import warnings

import pytest
import torch

from snncompiler.errors import SnncError
from snncompiler.kernels import available_backends, neuron_multistep, neuron_multistep_reference
from snncompiler.kernels import cpu as cpu_backend
from snncompiler.kernels import op as op_module
from tests.kernels.conftest import device_for

OP = torch.ops.snncompiler.neuron_multistep.default
BACKWARD_OP = torch.ops.snncompiler.neuron_multistep_backward.default
ALL_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


@pytest.mark.parametrize("fmt", ["value", "binary", "packed"])
def test_opcheck(backend, fmt):
    dev = device_for(backend)
    x = torch.randn(4, 2, 3, device=dev, requires_grad=True)
    v0 = torch.zeros(2, 3, device=dev, requires_grad=True)
    theta = torch.tensor([0.5, 1.0, 1.5], device=dev, requires_grad=True)
    # opcheck's AOT harness sums all outputs into one float, which fails on integer spikes.
    checks = ALL_CHECKS if fmt == "value" else ALL_CHECKS[:3]
    torch.library.opcheck(OP, (x, v0, theta, 0.5, False, 0.0, fmt, backend, "atan", 2.0, False), test_utils=checks)


def test_opcheck_backward(backend):
    dev = device_for(backend)
    args = (
        torch.randn(4, 2, 3, device=dev),
        torch.randn(2, 3, device=dev),
        torch.randn(4, 2, 3, device=dev),
        torch.zeros(3, device=dev),
        torch.tensor([0.5, 1.0, 1.5], device=dev),
        0.5,
        True,
        -0.1,
        backend,
        "sigmoid",
        4.0,
        False,
        True,
    )
    torch.library.opcheck(BACKWARD_OP, args)


def _model(x, theta):
    s, v = neuron_multistep(x * 2.0, 0.0, theta, decay=0.5)
    return s.sum(0) + v


@pytest.mark.parametrize("compile_backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_torch_compile(compile_backend):
    """Traces with fullgraph=True (no graph break at the op), same values and gradients."""
    x, theta = torch.randn(4, 3, 8), torch.rand(3, 1) + 0.5
    compiled = torch.compile(_model, backend=compile_backend, fullgraph=True)
    assert torch.equal(compiled(x, theta), _model(x, theta))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    compiled(xa, theta).sum().backward()
    _model(xb, theta).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(reset="medium"), "reset"),
        (dict(backend="fpga"), "backend"),
        (dict(spike_format="dense"), "spike_format"),
        (dict(decay=1.5), "decay"),
        (dict(v_reset=float("nan")), "v_reset"),
        (dict(surrogate="relu"), "surrogate"),
        (dict(surrogate="atan", alpha=-1.0), "alpha"),
    ],
)
def test_bad_options_raise_snnc_error(kwargs, match):
    with pytest.raises(SnncError, match=match):
        neuron_multistep(torch.zeros(2, 3), 0.0, 1.0, **kwargs)


def test_bad_tensors_raise_snnc_error():
    x = torch.zeros(2, 3, 4)
    with pytest.raises(SnncError, match="^x: dtype"):
        neuron_multistep(x.double(), 0.0, 1.0)
    with pytest.raises(SnncError, match="^x: dtype"):
        neuron_multistep(x.int(), 0.0, 1.0)
    with pytest.raises(SnncError, match="^x: expected a \\[T"):
        neuron_multistep(torch.tensor(1.0), 0.0, 1.0)
    with pytest.raises(SnncError, match="^v0: shape"):
        neuron_multistep(x, torch.zeros(5), 1.0)
    with pytest.raises(SnncError, match="^theta: shape"):
        neuron_multistep(x, 0.0, torch.ones(3, 1, 1))
    with pytest.raises(SnncError, match="^theta: expected a floating"):
        neuron_multistep(x, 0.0, torch.ones(4, dtype=torch.int64))
    with pytest.raises(SnncError, match="^v0: expected a float"):
        neuron_multistep(x, "zero", 1.0)
    if "cpu" in available_backends():
        with pytest.raises(SnncError, match="^backend"):
            neuron_multistep(x.half(), 0.0, 1.0, backend="cpu")
    with pytest.raises(SnncError, match="^backend"):
        neuron_multistep(x, 0.0, 1.0, backend="cuda")  # x is on the CPU


def test_error_messages_are_one_line():
    with pytest.raises(SnncError) as info:
        neuron_multistep(torch.zeros(2, 3, 4), torch.zeros(5, 5), 1.0)
    assert "\n" not in str(info.value)


def test_auto_picks_cpu_kernel_when_built():
    assert op_module._resolve_backend("auto", torch.zeros(1, 2)) == ("cpu" if cpu_backend.available() else "reference")
    assert op_module._resolve_backend("auto", torch.zeros(1, 2, dtype=torch.float16)) == "reference"
    bf16 = torch.zeros(1, 2, dtype=torch.bfloat16)
    assert op_module._resolve_backend("auto", bf16) == ("cpu" if cpu_backend.available() else "reference")


def test_missing_extension_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(cpu_backend, "load", lambda: None)
    monkeypatch.setattr(op_module, "_warned", set())
    assert "cpu" not in available_backends()
    x = torch.randn(5, 3, 4)
    with pytest.warns(RuntimeWarning, match="not built"):
        s, v = neuron_multistep(x, 0.0, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call must not warn again
        s2, _ = neuron_multistep(x, 0.0, 0.5)
    rs, rv = neuron_multistep_reference(x, 0.0, 0.5)
    assert torch.equal(s, rs) and torch.equal(s2, rs) and torch.equal(v, rv)
    with pytest.raises(SnncError, match="not built"):
        neuron_multistep(x, 0.0, 0.5, backend="cpu")


def test_lazy_triton_import():
    """Importing the kernels package must not import triton (it is heavy)."""
    import subprocess
    import sys

    code = "import sys, snncompiler.kernels; assert 'triton' not in sys.modules, 'triton imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_eager_fast_path_matches_registered_op(backend):
    """Plain eager inference skips the dispatcher; both paths must give the same result."""
    dev = device_for(backend)
    x, theta = torch.randn(5, 2, 3, 4, device=dev), torch.rand(3, 1, device=dev) + 0.5
    s, v = neuron_multistep(x, 0.1, theta, decay=0.75, reset="hard", backend=backend)
    s2, v2 = OP(x, torch.tensor(0.1, device=dev), theta, 0.75, True, 0.0, "value", backend, "atan", 2.0, False)
    assert torch.equal(s, s2) and torch.equal(v, v2)
