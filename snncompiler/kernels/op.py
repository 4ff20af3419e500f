"""``neuron_multistep``: argument checking, backend dispatch, torch.library registration, autograd.

The op is registered as ``torch.ops.snncompiler.neuron_multistep`` (with a fake impl, so it
traces under torch.compile and FakeTensor) and its backward as
``torch.ops.snncompiler.neuron_multistep_backward``. Both take an already-validated argument
list; :func:`neuron_multistep` is the checked public entry point.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import warnings

import torch
from torch import Tensor

from ..errors import SnncError
from ..ir.neuron import population_inverse
from . import cpu, reference
from .packing import count_spikes
from .surrogate import SURROGATES, resolve

FORMATS = ("value", "binary", "packed")
BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _triton_usable() -> bool:
    # find_spec instead of import: triton is heavy and only needed once a kernel runs.
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def available_backends() -> list[str]:
    """Backends that can run here: "reference" always, then "cpu", "triton", "cuda" if usable.

    "triton" counts on a machine without a GPU only under TRITON_INTERPRET=1 (slow; for tests).
    "cuda" counts when a GPU is present and the kernel is built or can be compiled with nvcc.
    """
    names = ["reference"]
    if cpu.available():
        names.append("cpu")
    if _triton_usable():
        names.append("triton")
    if torch.cuda.is_available():
        from . import cuda

        if cuda.available():
            names.append("cuda")
    return names


def _resolve_backend(backend: str, x: Tensor) -> str:
    """Map "auto" to a concrete backend for x, and check that an explicit one can run x."""
    if backend == "auto":
        if x.is_cuda:
            from . import cuda

            if cuda.available():
                return "cuda"
            if _triton_usable():
                return "triton"
            _warn_once(
                "gpu",
                "snncompiler: neither the CUDA kernel nor Triton is usable; "
                "running the (slow) PyTorch reference neuron on the GPU",
            )
            return "reference"
        if x.dtype in cpu.DTYPES and cpu.available():
            return "cpu"
        if x.dtype == torch.float32:
            _warn_once(
                "cpu",
                "snncompiler: the C++ neuron kernel (snncompiler.kernels._lif_cpu) is not "
                "built; falling back to the PyTorch reference (reinstall with a C++ compiler)",
            )
        return "reference"
    if backend == "cpu":
        if not cpu.available():
            raise SnncError("backend: 'cpu' requested but the C++ extension snncompiler.kernels._lif_cpu is not built")
        if x.is_cuda or x.dtype not in cpu.DTYPES:
            raise SnncError(f"backend: 'cpu' needs float32 or bfloat16 CPU tensors, got {x.dtype} on {x.device}")
    elif backend == "triton":
        if not _triton_usable():
            raise SnncError("backend: 'triton' needs triton and a GPU (or TRITON_INTERPRET=1)")
    elif backend == "cuda":
        from . import cuda

        if not x.is_cuda:
            raise SnncError(f"backend: 'cuda' needs CUDA tensors, got x on {x.device}")
        if not cuda.available():
            raise SnncError("backend: 'cuda' requested but the CUDA kernel is neither built nor compilable (nvcc)")
    if x.dtype == torch.float16 and not x.is_cuda and backend not in ("reference", "triton"):
        raise SnncError(f"x: {x.dtype} is supported on CPU only by the reference backend")
    return backend


def _layout_inner(vshape, shape) -> int | None:
    """For a value of shape ``vshape`` broadcast to ``shape``: the divisor ``inner`` such that
    flat neuron n uses flat element (n // inner) % numel of the value, or None when its
    non-broadcast axes are not adjacent (then only an expanded copy can be indexed that way)."""
    padded = (1,) * (len(shape) - len(vshape)) + tuple(vshape)
    dims = [i for i, (a, b) in enumerate(zip(padded, shape)) if a != 1 and b != 1]
    if not dims:
        return 1
    lo, hi = dims[0], dims[-1] + 1
    if all(padded[i] == shape[i] for i in range(lo, hi)):
        return math.prod(shape[hi:])
    return None


def theta_layout(theta: Tensor, shape) -> tuple[Tensor, int]:
    """Describe theta broadcast to ``shape`` (= x.shape[1:]) without expanding it.

    Returns (small, inner): a contiguous float32 vector and a divisor such that flat neuron n
    uses ``small[(n // inner) % small.numel()]``. Exact whenever theta's non-broadcast axes are
    adjacent (scalar, per-channel [C,1,1], per-feature [F], full); otherwise theta is expanded.
    """
    shape = tuple(shape)
    t = theta.to(torch.float32)
    inner = _layout_inner(theta.shape, shape)
    if inner is None:
        tshape = (1,) * (len(shape) - theta.dim()) + tuple(theta.shape)
        return t.reshape(tshape).expand(shape).reshape(-1).contiguous(), 1
    return t.reshape(-1).contiguous(), inner


def _kernel_v0(v0: Tensor, shape) -> tuple[Tensor, int]:
    """v0 as every kernel reads it, laid out as theta: (vector, inner), a dense v0 (a carried
    membrane) passed as it is with inner 1. Expanding a scalar v0 to N values cost more than the
    kernel itself on small layers (on a GPU, one more launch per call)."""
    if v0.shape == shape and v0.dtype == torch.float32 and v0.is_contiguous():
        return v0, 1
    return _kernel_theta(v0, shape)


def _kernel_theta(theta: Tensor, shape) -> tuple[Tensor, int]:
    """theta_layout for the kernels, which read only a buffer's address and element count: a
    contiguous float32 theta that needs no expansion ([C, 1, 1], 0-d, ...) is passed as it is,
    since a reshaped view costs more than a small layer's kernel."""
    if theta.dtype == torch.float32 and theta.is_contiguous():
        if theta.dim() == 0:
            return theta, 1
        inner = _layout_inner(theta.shape, shape)
        if inner is not None:
            return theta, inner
    return theta_layout(theta, shape)


# ---- the registered ops -------------------------------------------------------------------
def _forward(
    x: Tensor,
    v0: Tensor,
    theta: Tensor,
    decay: float,
    hard: bool,
    v_reset: float,
    spike_format: str,
    backend: str,
    surrogate: str,
    alpha: float,
    detach_reset: bool,
) -> tuple[Tensor, Tensor, int | None]:
    """Validated forward: (spikes, v_final, count), count (an int) where the backend's kernel
    counts spikes itself (the C++ kernel), else None. See :func:`neuron_multistep`."""
    backend = _resolve_backend(backend, x)
    decay, v_reset = reference.f32(decay), reference.f32(v_reset)
    if backend == "reference":
        spikes, v = reference.neuron_multistep_reference(
            x,
            v0,
            theta,
            decay=decay,
            reset="hard" if hard else "soft",
            v_reset=v_reset,
            spike_format=spike_format,
            surrogate=surrogate,
            alpha=alpha,
            detach_reset=detach_reset,
        )
        return spikes, v, None
    shape = x.shape[1:]
    th, inner = _kernel_theta(theta, shape)
    v0k, v0_inner = _kernel_v0(v0, shape)
    if backend == "cpu":  # takes x in any layout (it reads a time-broadcast input without copying)
        return cpu.forward(x, v0k, th, inner, decay, hard, v_reset, spike_format, v0_inner)
    if backend == "triton":
        from . import triton_kernel as kernel
    else:
        from . import cuda as kernel
    return (*kernel.forward(x.contiguous(), v0k, th, inner, decay, hard, v_reset, spike_format, v0_inner), None)


def _neuron_impl(
    x: Tensor,
    v0: Tensor,
    theta: Tensor,
    decay: float,
    hard: bool,
    v_reset: float,
    spike_format: str,
    backend: str,
    surrogate: str,
    alpha: float,
    detach_reset: bool,
) -> tuple[Tensor, Tensor]:
    """Validated forward: (spikes, v_final). See :func:`neuron_multistep`."""
    spikes, v, _ = _forward(x, v0, theta, decay, hard, v_reset, spike_format, backend, surrogate, alpha, detach_reset)
    return spikes, v


_neuron_op = torch.library.custom_op("snncompiler::neuron_multistep", _neuron_impl, mutates_args=())


@_neuron_op.register_fake
def _neuron_op_fake(x, v0, theta, decay, hard, v_reset, spike_format, backend, surrogate, alpha, detach_reset):
    T, n = x.shape[0], math.prod(x.shape[1:])
    if spike_format == "value":
        spikes = x.new_empty(x.shape)
    elif spike_format == "binary":
        spikes = x.new_empty(x.shape, dtype=torch.uint8)
    else:
        spikes = x.new_empty((T, (n + 7) // 8), dtype=torch.uint8)
    return spikes, x.new_empty(x.shape[1:], dtype=torch.float32)


@torch.library.custom_op("snncompiler::neuron_multistep_backward", mutates_args=())
def _neuron_backward_op(
    grad_spikes: Tensor | None,
    grad_v: Tensor | None,
    x: Tensor,
    v0: Tensor,
    theta: Tensor,
    decay: float,
    hard: bool,
    v_reset: float,
    backend: str,
    surrogate: str,
    alpha: float,
    detach_reset: bool,
    theta_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Surrogate-gradient backward of the value-format op: (grad_x, grad_v0, grad_theta),
    shaped like x, v0 and theta (grad_theta is zeros unless ``theta_grad``)."""
    backend = _resolve_backend(backend, x)
    decay, v_reset = reference.f32(decay), reference.f32(v_reset)
    shape = x.shape[1:]
    gy = None if grad_spikes is None else grad_spikes.to(torch.float32).contiguous()
    gv = None if grad_v is None else grad_v.to(torch.float32).expand(shape).contiguous()
    if backend == "cuda":  # the CUDA extension is forward-only; Triton has the fused backward
        backend = "triton" if _triton_usable() else "reference"
    if backend == "reference":
        gx, gv0, gth = reference.neuron_multistep_backward_reference(
            gy,
            gv,
            x,
            v0,
            theta,
            decay=decay,
            hard=hard,
            v_reset=v_reset,
            surrogate=surrogate,
            alpha=alpha,
            detach_reset=detach_reset,
        )
    else:
        th, inner = _kernel_theta(theta, shape)
        args = (decay, hard, v_reset, SURROGATES[surrogate][0], alpha, detach_reset, theta_grad)
        mod = cpu
        if backend == "triton":
            from . import triton_kernel as mod
        v0k, v0_inner = _kernel_v0(v0, shape)
        gx, gv0, gth = mod.backward(gy, gv, x.contiguous(), v0k, th, inner, *args, v0_inner)
        gv0 = gv0.reshape(shape)
        gth = gth.reshape(shape) if gth is not None else None
    gx = gx.to(x.dtype)
    gv0 = gv0.sum_to_size(v0.shape).clone()
    gth = gth.sum_to_size(theta.shape).clone() if theta_grad and gth is not None else torch.zeros_like(theta)
    return gx, gv0.to(v0.dtype), gth.to(theta.dtype)


@_neuron_backward_op.register_fake
def _neuron_backward_fake(
    grad_spikes, grad_v, x, v0, theta, decay, hard, v_reset, backend, surrogate, alpha, detach_reset, theta_grad
):
    return torch.empty_like(x), torch.empty_like(v0), torch.empty_like(theta)


def _setup_context(ctx, inputs, output):
    x, v0, theta, decay, hard, v_reset, spike_format, backend, surrogate, alpha, detach_reset = inputs
    ctx.save_for_backward(x, v0, theta)  # backward recomputes the membrane from these
    ctx.args = (decay, hard, v_reset, backend, surrogate, alpha, detach_reset)
    ctx.value_format = spike_format == "value"


def _backward(ctx, grad_spikes, grad_v):
    x, v0, theta = ctx.saved_tensors
    if not ctx.value_format:  # binary/packed spikes are integers: no gradient flows through them
        grad_spikes = None
    gx, gv0, gth = torch.ops.snncompiler.neuron_multistep_backward(
        grad_spikes, grad_v, x, v0, theta, *ctx.args, ctx.needs_input_grad[2]
    )
    return gx, gv0, (gth if ctx.needs_input_grad[2] else None), None, None, None, None, None, None, None, None


_neuron_op.register_autograd(_backward, setup_context=_setup_context)


# ---- public entry point -------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def _scalar_tensor(value: float, device: torch.device) -> Tensor:
    """A float32 0-d tensor made once per (value, device): on a GPU ``torch.tensor(v,
    device="cuda")`` is a blocking host-to-device copy that costs more than the whole kernel on
    small layers, and on the CPU it still costs more than the C++ kernel does. Made outside
    inference mode so that autograd may save it later; never written to (the kernels only read
    theta and v0, and the reference never modifies its inputs)."""
    with torch.inference_mode(False):
        return torch.tensor(value, dtype=torch.float32, device=device)


def _as_state(value, name: str, x: Tensor, shape) -> Tensor:
    """v0 / theta as a float32 tensor on x's device, checked to broadcast to x[0] (``shape``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _scalar_tensor(float(value), x.device)
    if not isinstance(value, Tensor):
        raise SnncError(f"{name}: expected a float or a tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise SnncError(f"{name}: expected a floating-point tensor, got {value.dtype}")
    if value.device != x.device:
        raise SnncError(f"{name}: is on {value.device} but x is on {x.device}")
    vshape = value.shape
    # by hand, after the common exact match: torch.broadcast_shapes costs more than a small kernel
    if vshape != shape and not (
        len(vshape) <= len(shape) and all(d == 1 or d == s for d, s in zip(reversed(vshape), reversed(shape)))
    ):
        raise SnncError(f"{name}: shape {tuple(vshape)} does not broadcast to x[0] of shape {tuple(shape)}")
    return value if value.dtype == torch.float32 else value.to(torch.float32)


def neuron_multistep(
    x: Tensor,
    v0,
    theta,
    *,
    decay: float = 1.0,
    reset: str = "soft",
    v_reset: float = 0.0,
    backend: str = "auto",
    spike_format: str = "value",
    surrogate: str = "atan",
    alpha: float | None = None,
    detach_reset: bool = False,
    return_count: bool = False,
):
    """Run T steps of a layer of IF/LIF neurons in one fused kernel: returns (spikes, v_final).

    Per step t (float32 arithmetic, the same order in every backend)::

        h = decay * v + x[t]      (the multiply is skipped when decay == 1: IF)
        s = h >= theta
        v = h - theta * s         (reset="soft")   or   v = v_reset if s else h   (reset="hard")

    Args:
        x: [T, ...] float32 or bfloat16 (float16 too on GPU); accumulated in float32.
        v0: initial membrane, float or tensor broadcastable to x[0].
        theta: threshold, float or tensor broadcastable to x[0] (e.g. [C,1,1] per channel);
            never expanded to x[0]'s size by the kernels.
        decay: membrane decay per step, 1.0 for IF, 1 - 1/tau for LIF (0 <= decay <= 1).
        reset: "soft" (subtract theta) or "hard" (set to v_reset).
        backend: "auto", "reference", "cpu", "triton" or "cuda" (see available_backends()).
        spike_format: "value" (theta*s in x's dtype), "binary" (uint8 0/1), or "packed"
            (uint8 [T, ceil(N/8)], 8 neurons per byte, see pack_spikes).
        surrogate, alpha: surrogate derivative of the step for training ("triangle", "atan",
            "sigmoid"; alpha None = that surrogate's default).
        detach_reset: do not backpropagate through the spike in the reset.
        return_count: also return the number of spikes (see :func:`~.packing.count_spikes`),
            counted inside the C++ kernel at no extra pass over the spikes; other backends
            count from their output.

    Returns:
        spikes in ``spike_format`` and v_final (float32, shape x.shape[1:]), and with
        ``return_count`` a 0-d int64 tensor on x's device. Gradients flow to x, v0 and theta
        (value format; v_final in every format) through the surrogate.
    """
    args = _checked_args(x, v0, theta, decay, reset, v_reset, backend, spike_format, surrogate, alpha, detach_reset)
    return _run_checked(args, return_count)


def _needs_autograd(*tensors: Tensor) -> bool:
    """Whether a call must go through the registered op: under torch.compile, or when a gradient
    can reach one of ``tensors``."""
    return torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _run_checked(args: tuple, return_count: bool):
    """:func:`neuron_multistep` on arguments :func:`_checked_args` already checked."""
    x, v0, theta, spike_format = args[0], args[1], args[2], args[6]
    if _needs_autograd(x, v0, theta):
        spikes, v = torch.ops.snncompiler.neuron_multistep(*args)
        count = None
    else:
        # Plain eager inference: the same implementation without the dispatcher round trip (tens
        # of microseconds per call, and a one-time torch._dynamo import of over a second).
        spikes, v, count = _forward(*args)
    if not return_count:
        return spikes, v
    if count is None:
        return spikes, v, count_spikes(spikes.detach(), theta, spike_format, x.shape)
    return spikes, v, torch.tensor(count, dtype=torch.int64)  # made only when asked for: it costs µs


def _checked_args(x, v0, theta, decay, reset, v_reset, backend, spike_format, surrogate, alpha, detach_reset) -> tuple:
    """:func:`neuron_multistep`'s arguments checked (a one-line SnncError naming the first bad
    one) and in the registered op's order: v0 and theta as float32 tensors on x's device."""
    if not isinstance(x, Tensor):
        raise SnncError(f"x: expected a tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise SnncError("x: expected a [T, ...] tensor, got a 0-d tensor")
    if x.dtype != torch.float32 and x.dtype not in _LOW_PRECISION:
        raise SnncError(f"x: dtype must be float32 or bfloat16 (float16: GPU or reference), got {x.dtype}")
    if reset not in ("soft", "hard"):
        raise SnncError(f"reset: must be 'soft' or 'hard', got {reset!r}")
    if backend not in BACKENDS:
        raise SnncError(f"backend: unknown backend {backend!r} (expected one of {list(BACKENDS)})")
    if spike_format not in FORMATS:
        raise SnncError(f"spike_format: must be one of {list(FORMATS)}, got {spike_format!r}")
    if not (isinstance(decay, (int, float)) and 0.0 <= float(decay) <= 1.0):
        raise SnncError(f"decay: must be a number in [0, 1] (1 = IF, 1 - 1/tau = LIF), got {decay!r}")
    if not (isinstance(v_reset, (int, float)) and math.isfinite(v_reset)):
        raise SnncError(f"v_reset: must be a finite number, got {v_reset!r}")
    _, alpha = resolve(surrogate, alpha)
    shape = x.shape[1:]
    v0 = _as_state(v0, "v0", x, shape)
    theta = _as_state(theta, "theta", x, shape)
    return (
        x,
        v0,
        theta,
        float(decay),
        reset == "hard",
        float(v_reset),
        spike_format,
        backend,
        surrogate,
        alpha,
        bool(detach_reset),
    )


def population_output(counts: Tensor, theta: Tensor, population: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """A population unit's output from ``counts``, the spikes of its B neurons at each step:
    ``float32(k) · (θ · float32(1/B))`` (two float32 products, so every backend, onnxruntime
    included, gives the same bits; the C++ kernel computes it the same way), then in ``dtype``."""
    unit = theta.to(torch.float32) * population_inverse(population)
    return (counts.to(torch.float32) * unit).to(dtype)


def population_mean(spikes: Tensor, theta: Tensor, population: int) -> Tensor:
    """The units' outputs from the value spikes [T, B, ...] of their B neurons, differentiable:
    the value is :func:`population_output` of the counted spikes, the gradient that of the
    spikes' mean (what the surrogate flows through)."""
    soft = spikes.sum(1) / population
    exact = population_output((spikes.detach() != 0).sum(1), theta.detach(), population, spikes.dtype)
    return exact + (soft - soft.detach())  # soft - soft.detach() is exactly 0: the value stays exact


def _population_kernels(fused: str):
    """The module whose population_forward / population_backward run a fused backend."""
    if fused == "cpu":
        return cpu
    from . import triton_kernel

    return triton_kernel


def _fused_population_forward(fused: str, x, v0, theta, population, decay, hard, v_reset) -> tuple:
    """The fused forward on backend ``fused`` ("cpu" or "triton"): (outputs, v_final, the spike
    count as a 0-d int64 tensor, the dense [B, ...] v0 it started from, θ's kernel layout)."""
    shape = tuple(x.shape[1:])
    th, inner = _kernel_theta(theta, shape)
    dense_v0 = v0.expand((population,) + shape).contiguous()
    out, v, count = _population_kernels(fused).population_forward(
        x, dense_v0, th, inner, population, decay, hard, v_reset
    )
    count = count if isinstance(count, Tensor) else torch.tensor(count, dtype=torch.int64)
    return out, v, count, dense_v0, (th, inner)


class _FusedPopulation(torch.autograd.Function):
    """A population on the fused kernels with gradients (C++ on the CPU, Triton on a GPU): the
    fused forward, and a backward that runs each neuron's surrogate gradient (with the output's
    gradient / B as its spikes', as the mean's) and sums grad_x and grad_θ over the B neurons in
    the kernel: the composition's gradients without its [T, B, ...] copies of x, of the spikes
    and of their gradients."""

    @staticmethod
    def forward(ctx, x, v0, theta, population, decay, hard, v_reset, surrogate, alpha, detach_reset, fused):
        out, v, count, dense_v0, kernel_theta = _fused_population_forward(
            fused, x.detach(), v0.detach(), theta, population, decay, hard, v_reset
        )
        ctx.save_for_backward(x, dense_v0, theta)
        ctx.kernels = _population_kernels(fused)
        ctx.kernel_theta = kernel_theta
        ctx.settings = (population, decay, hard, v_reset, SURROGATES[surrogate][0], alpha, detach_reset)
        ctx.v0_shape = v0.shape
        ctx.mark_non_differentiable(count)
        return out, v, count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_v, _grad_count):
        x, dense_v0, theta = ctx.saved_tensors
        population, decay, hard, v_reset, surrogate_id, alpha, detach_reset = ctx.settings
        th, inner = ctx.kernel_theta
        # the mean's gradient, computed as autograd computes it for spikes.sum(1) / B
        gy = None if grad_out is None else (grad_out.to(torch.float32) / population).contiguous()
        gv = None if grad_v is None else grad_v.to(torch.float32).contiguous()
        theta_grad = ctx.needs_input_grad[2]
        shape = tuple(x.shape[1:])
        if x.numel():
            gx, gv0, gth = ctx.kernels.population_backward(
                gy, gv, x.float().contiguous(), dense_v0, th, inner, *ctx.settings[:6], detach_reset, theta_grad
            )
        else:  # no steps or no units: nothing to recompute, and v_final is v0 (its gradient too)
            gx = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
            gv0 = torch.zeros(dense_v0.shape, device=x.device) if gv is None else gv
            gth = torch.zeros(shape, device=x.device)
        gv0 = gv0.reshape((population,) + shape).sum_to_size(ctx.v0_shape) if ctx.needs_input_grad[1] else None
        gth = gth.reshape(shape).sum_to_size(theta.shape) if theta_grad else None
        return gx.to(x.dtype), gv0, gth, None, None, None, None, None, None, None, None


def _fused_population_backend(backend: str, x: Tensor) -> str | None:
    """Which fused population kernel runs an inference call on ``backend``: "cpu" (the C++
    kernel, float32 only), "triton" (CUDA and Triton backends: the CUDA library has no population
    kernel, Triton's serves both), or None (the composition: reference backend, no Triton)."""
    resolved = _resolve_backend(backend, x)
    if resolved == "cpu":
        return "cpu" if x.dtype == torch.float32 else None
    if resolved in ("triton", "cuda") and _triton_usable():
        return "triton"
    return None


def population_multistep(
    x: Tensor,
    v0,
    theta,
    population: int,
    *,
    decay: float = 1.0,
    reset: str = "soft",
    v_reset: float = 0.0,
    backend: str = "auto",
    spike_format: str = "value",
    surrogate: str = "atan",
    alpha: float | None = None,
    detach_reset: bool = False,
    return_count: bool = False,
):
    """Run T steps of units that are each ``population`` (B) neurons with their own initial membranes.

    Every neuron of a unit sees the unit's input x; neuron j starts at ``v0[j]`` (see
    :meth:`snncompiler.ir.neuron.NeuronSpec.population_offsets`, which staggers them by θ/B).
    A unit whose neurons fire k spikes at a step outputs :func:`population_output`: k·(θ/B), the
    mean of their spikes θ·s, k = 0…B. B = 1 is :func:`neuron_multistep` itself.

    One fused kernel keeps a unit's B membranes together and writes the unit's output (no B-fold
    copy of x, no B spike planes): the C++ kernels on the CPU backend, the Triton ones on the GPU
    backends; on the reference backend (and under torch.compile) the B neurons run through
    :func:`neuron_multistep` on a [T, B, ...] view and their spikes are counted. With gradients
    the output's value is the same and its gradient that of the mean of the B neurons' value
    spikes (each neuron's surrogate; x's and θ's summed over the B neurons), computed by the
    fused backward kernels without the copies.

    Args:
        x: [T, ...] input, as for :func:`neuron_multistep`.
        v0: [B, ...] tensor broadcastable to [B] + x.shape[1:] (neuron j's initial membrane at index j).
        theta: threshold, broadcastable to x[0] (shared by the B neurons of a unit).
        population: B ≥ 1.
        return_count: also return the number of spikes of all B·N neurons (what energy counts).
        decay, reset, v_reset, backend, surrogate, alpha, detach_reset: as for
            :func:`neuron_multistep`; ``spike_format`` must be "value" (the output is not a 0/1 spike).

    Returns:
        (outputs [T, ...] in x's dtype, v_final [B, ...x.shape[1:]] float32[, count]).
    """
    if isinstance(population, bool) or not isinstance(population, int) or population < 1:
        raise SnncError(f"population: expected an integer ≥ 1, got {population!r}")
    if spike_format != "value":
        raise SnncError("spike_format: a population's output is a mean of spikes, only 'value' applies")
    if not isinstance(x, Tensor) or x.dim() < 1:
        raise SnncError("x: expected a [T, ...] tensor")
    if population == 1:
        if isinstance(v0, Tensor) and v0.dim() == x.dim():
            v0 = v0[0]
        return neuron_multistep(
            x,
            v0,
            theta,
            decay=decay,
            reset=reset,
            v_reset=v_reset,
            backend=backend,
            surrogate=surrogate,
            alpha=alpha,
            detach_reset=detach_reset,
            return_count=return_count,
        )
    steps, shape = x.shape[0], tuple(x.shape[1:])
    if isinstance(theta, Tensor) and theta.dim() > len(shape):
        raise SnncError(f"theta: shape {tuple(theta.shape)} does not broadcast to x[0] of shape {shape}")
    xb = x.unsqueeze(1).expand((steps, population) + shape)  # a view: what the B neurons read
    args = _checked_args(xb, v0, theta, decay, reset, v_reset, backend, "value", surrogate, alpha, detach_reset)
    _, v0, theta = args[:3]
    grad = _needs_autograd(x, v0, theta)
    # the fused kernels, with gradients too, except under torch.compile (it traces the registered op)
    fused = None if torch.compiler.is_compiling() else _fused_population_backend(backend, x)
    if fused is not None:
        decay, hard, fv_reset = reference.f32(args[3]), args[4], reference.f32(args[5])
        if grad:
            out, v, count = _FusedPopulation.apply(x, v0, theta, population, decay, hard, fv_reset, *args[8:], fused)
        else:
            out, v, count, *_ = _fused_population_forward(fused, x, v0, theta, population, decay, hard, fv_reset)
        return (out, v, count) if return_count else (out, v)
    if x.dim() > 1 and steps > 1 and x.stride(0) == 0:  # a static input stays one step read T times
        xb = x[:1].unsqueeze(1).expand((1, population) + shape).contiguous().expand((steps, population) + shape)
        args = (xb,) + args[1:]
    if grad:  # the value of the counted output, the gradient of the mean of the value spikes
        spikes, v, *count = _run_checked(args, return_count)
        out = population_mean(spikes, theta, population)
    else:  # B plain neurons on uint8 spikes, counted
        bits, v, *count = _run_checked(args[:6] + ("binary",) + args[7:], return_count)
        out = population_output(bits.sum(1, dtype=torch.int32), theta, population, x.dtype)
    return (out, v, *count)
