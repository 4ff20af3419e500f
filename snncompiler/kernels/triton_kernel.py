"""The Triton backend: fused multi-step IF/LIF forward and surrogate-gradient backward.

Each program owns a block of neurons and runs the whole time loop over it, keeping the
membrane (and theta) in registers; x and the spikes are streamed once. theta is gathered
once per program from a small vector: neuron n uses theta[(n // inner) % period].

Bit-exactness with the reference: h = v * decay + x must round twice, so kernels are
launched with ``enable_fp_fusion=False`` (no FMA contraction); with decay == 1 the multiply
is skipped (as in every backend).

The forward prefetches x two steps ahead. It works on a [BLOCK/8, 8] tile so that the packed format is a row reduction. The
backward recomputes the membrane trajectory of its block into a transient global scratch
buffer ([T, N] float32, allocated per call and freed after) and then walks time backwards.

On a GPU the block size is autotuned for large launches (T*N >= 2^18, keyed on T and N);
small ones use a fixed block, since autotuning costs more than it can save there and every
new (T, N) would trigger it. Under TRITON_INTERPRET=1 (CPU tests) a fixed block is used
because the autotuner needs a GPU driver to time configurations.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

from ..ir.neuron import population_inverse
from .packing import output_buffers, time_steps

FORMATS = {"value": 0, "binary": 1, "packed": 2}
_INTERPRET_BLOCK = 64
_SMALL_LAUNCH = 1 << 18  # T*N below this: fixed block, no autotuning
_SMALL_BLOCK, _SMALL_WARPS = 256, 4


@triton.jit
def _lif_fwd(
    x_ptr,
    v0_ptr,
    th_ptr,
    out_ptr,
    vout_ptr,
    T,
    N,
    NBYTES,
    th_inner,
    th_period,
    v0_inner,
    v0_period,
    decay,
    v_reset,
    DECAY: tl.constexpr,
    HARD: tl.constexpr,
    FMT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * (BLOCK // 8) + tl.arange(0, BLOCK // 8)
    lanes = tl.arange(0, 8)
    offs = rows[:, None] * 8 + lanes[None, :]
    mask = offs < N
    v = tl.load(v0_ptr + (offs // v0_inner) % v0_period, mask=mask, other=0.0)
    th = tl.load(th_ptr + (offs // th_inner) % th_period, mask=mask, other=0.0)
    # x is prefetched two steps ahead: three loads in flight per element, not one (the
    # membrane chain serialises the arithmetic, not the memory traffic)
    xa = tl.load(x_ptr + offs, mask=mask & (T > 0), other=0.0).to(tl.float32)
    xb = tl.load(x_ptr + N + offs, mask=mask & (T > 1), other=0.0).to(tl.float32)
    for t in range(T):
        xc = tl.load(x_ptr + 2 * N + offs, mask=mask & (t + 2 < T), other=0.0).to(tl.float32)
        if DECAY:
            h = v * decay + xa
        else:
            h = v + xa
        xa = xb
        xb = xc
        s = h >= th
        if FMT == 0:
            tl.store(out_ptr + offs, tl.where(s, th, 0.0).to(out_ptr.dtype.element_ty), mask=mask)
            out_ptr += N
        elif FMT == 1:
            tl.store(out_ptr + offs, s.to(tl.uint8), mask=mask)
            out_ptr += N
        else:
            # masked lanes must not set padding bits (h = 0 >= theta = 0 there)
            bits = tl.sum((s & mask).to(tl.int32) << lanes[None, :], axis=1)
            tl.store(out_ptr + rows, bits.to(tl.uint8), mask=rows < NBYTES)
            out_ptr += NBYTES
        if HARD:
            v = tl.where(s, v_reset, h)
        else:
            v = tl.where(s, h - th, h)
        x_ptr += N
    tl.store(vout_ptr + offs, v, mask=mask)


@triton.jit
def _population_fwd(
    x_ptr,
    v0_ptr,
    th_ptr,
    out_ptr,
    vout_ptr,
    count_ptr,
    T,
    N,
    X_STEP,
    B,
    th_inner,
    th_period,
    inv_b,
    decay,
    v_reset,
    DECAY: tl.constexpr,
    HARD: tl.constexpr,
    BPAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # a [BPAD, BLOCK] tile: the B neurons of BLOCK units, their membranes in registers; x is read
    # once per unit and step (not B times), and each unit's output k·(θ·float32(1/B)) written once
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    neurons = tl.arange(0, BPAD)
    live = (neurons < B)[:, None] & mask[None, :]
    v = tl.load(v0_ptr + neurons[:, None] * N + offs[None, :], mask=live, other=0.0)
    th = tl.load(th_ptr + (offs // th_inner) % th_period, mask=mask, other=0.0)
    unit = th * inv_b
    counted = th != 0.0
    total = tl.zeros([BLOCK], dtype=tl.int32)
    xa = tl.load(x_ptr + offs, mask=mask & (T > 0), other=0.0).to(tl.float32)
    xb = tl.load(x_ptr + X_STEP + offs, mask=mask & (T > 1), other=0.0).to(tl.float32)
    for t in range(T):
        xc = tl.load(x_ptr + 2 * X_STEP + offs, mask=mask & (t + 2 < T), other=0.0).to(tl.float32)
        if DECAY:
            h = v * decay + xa[None, :]
        else:
            h = v + xa[None, :]
        xa = xb
        xb = xc
        s = (h >= th[None, :]) & live
        k = tl.sum(s.to(tl.int32), axis=0)
        tl.store(
            out_ptr + offs,
            (k.to(tl.float32) * unit).to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"),
            mask=mask,
        )
        total += tl.where(counted, k, 0)
        if HARD:
            v = tl.where(s, v_reset, h)
        else:
            v = tl.where(s, h - th[None, :], h)
        x_ptr += X_STEP
        out_ptr += N
    tl.store(vout_ptr + neurons[:, None] * N + offs[None, :], v, mask=live)
    tl.store(count_ptr + tl.program_id(0), tl.sum(total.to(tl.int64), axis=0))


@triton.jit
def _surrogate_grad(u, alpha, SG: tl.constexpr):
    if SG == 0:  # triangle
        g = tl.maximum(alpha - alpha * alpha * tl.abs(u), 0.0)
    elif SG == 1:  # atan
        z = (1.5707963267948966 * alpha) * u
        g = (alpha * 0.5) / (1.0 + z * z)
    else:  # sigmoid
        sig = tl.sigmoid(alpha * u)
        g = alpha * sig * (1.0 - sig)
    return g


@triton.jit
def _lif_bwd(
    x_ptr,
    v0_ptr,
    th_ptr,
    gy_ptr,
    gv_ptr,
    gx_ptr,
    gv0_ptr,
    gth_ptr,
    h_ptr,
    T,
    N,
    th_inner,
    th_period,
    v0_inner,
    v0_period,
    decay,
    v_reset,
    alpha,
    DECAY: tl.constexpr,
    HARD: tl.constexpr,
    DETACH: tl.constexpr,
    SG: tl.constexpr,
    HAS_GY: tl.constexpr,
    HAS_GV: tl.constexpr,
    HAS_GTH: tl.constexpr,
    BLOCK: tl.constexpr,
    ACC: tl.constexpr = False,
):
    # ACC: add this neuron's grad_x and grad_theta to what gx and gth hold (a population's
    # neurons after the first, population_backward) instead of writing them
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    v = tl.load(v0_ptr + (offs // v0_inner) % v0_period, mask=mask, other=0.0)
    th = tl.load(th_ptr + (offs // th_inner) % th_period, mask=mask, other=0.0)
    for _ in range(T):  # recompute the trajectory, exactly as the forward does
        xt = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if DECAY:
            h = v * decay + xt
        else:
            h = v + xt
        tl.store(h_ptr + offs, h, mask=mask)
        s = h >= th
        if HARD:
            v = tl.where(s, v_reset, h)
        else:
            v = tl.where(s, h - th, h)
        x_ptr += N
        h_ptr += N
    if HAS_GV:
        g = tl.load(gv_ptr + offs, mask=mask, other=0.0)
    else:
        g = tl.zeros([BLOCK], dtype=tl.float32)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    gx_ptr += T * N
    gy_ptr += T * N
    for _ in range(T):  # reverse time
        h_ptr -= N
        gx_ptr -= N
        gy_ptr -= N
        h = tl.load(h_ptr + offs, mask=mask, other=0.0)
        sg = _surrogate_grad(h - th, alpha, SG)
        s = tl.where(h >= th, 1.0, 0.0)
        if HARD:
            if DETACH:
                dvdh = 1.0 - s
                dvdth = tl.zeros([BLOCK], dtype=tl.float32)
            else:
                dvdh = (1.0 - s) + (v_reset - h) * sg
                dvdth = -((v_reset - h) * sg)
        else:
            if DETACH:
                dvdh = tl.full([BLOCK], 1.0, tl.float32)
                dvdth = -s
            else:
                dvdh = 1.0 - th * sg
                dvdth = th * sg - s
        gh = g * dvdh
        ga = g * dvdth
        if HAS_GY:
            gyt = tl.load(gy_ptr + offs, mask=mask, other=0.0)
            gh = gh + gyt * th * sg
            ga = ga + gyt * (s - th * sg)
        if ACC:
            gh_total = gh + tl.load(gx_ptr + offs, mask=mask, other=0.0)
        else:
            gh_total = gh
        tl.store(gx_ptr + offs, gh_total, mask=mask)
        acc += ga
        if DECAY:
            g = gh * decay
        else:
            g = gh
    tl.store(gv0_ptr + offs, g, mask=mask)
    if HAS_GTH:
        if ACC:
            acc += tl.load(gth_ptr + offs, mask=mask, other=0.0)
        tl.store(gth_ptr + offs, acc, mask=mask)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _tuned(kernel_name: str):
    kernel = {"fwd": _lif_fwd, "bwd": _lif_bwd}[kernel_name]
    configs = [triton.Config({"BLOCK": b}, num_warps=w) for b in (256, 512, 1024, 2048) for w in (4, 8)]
    return triton.autotune(configs=configs, key=["T", "N"])(kernel)


def _launch(kernel_name: str, n: int, steps: int, *args, **consts):
    kernel = {"fwd": _lif_fwd, "bwd": _lif_bwd}[kernel_name]
    if _interpreting():
        kernel[(triton.cdiv(n, _INTERPRET_BLOCK),)](*args, **consts, BLOCK=_INTERPRET_BLOCK, enable_fp_fusion=False)
    elif steps * n < _SMALL_LAUNCH:
        kernel[(triton.cdiv(n, _SMALL_BLOCK),)](
            *args, **consts, BLOCK=_SMALL_BLOCK, num_warps=_SMALL_WARPS, enable_fp_fusion=False
        )
    else:
        _tuned(kernel_name)[lambda meta: (triton.cdiv(n, meta["BLOCK"]),)](*args, **consts, enable_fp_fusion=False)


def forward(x, v0, theta, inner, decay, hard, v_reset, spike_format, v0_inner=1):
    """Fused forward. x: [T, ...] contiguous (float32/16, bfloat16); theta: float32 with ``period``
    elements (neuron n uses theta[(n // inner) % period]); v0: float32, laid out the same way with
    ``v0_inner`` (a dense [N] one has v0_inner 1). Returns (spikes, v_final)."""
    T, n = x.shape[0], math.prod(x.shape[1:])
    nbytes = (n + 7) // 8
    out, vout = output_buffers(x, v0, spike_format)
    if n == 0:
        return out, vout
    _launch(
        "fwd",
        n,
        T,
        x,
        v0,
        theta,
        out,
        vout,
        T,
        n,
        nbytes,
        inner,
        theta.numel(),
        v0_inner,
        v0.numel(),
        decay,
        v_reset,
        DECAY=decay != 1.0,
        HARD=bool(hard),
        FMT=FORMATS[spike_format],
    )
    return out, vout


def _backward_switches(decay, hard, detach_reset, surrogate_id, grad_spikes, grad_v, grad_theta) -> dict:
    """The backward kernel's compile-time switches for these settings and present gradients."""
    return dict(
        DECAY=decay != 1.0,
        HARD=bool(hard),
        DETACH=bool(detach_reset),
        SG=int(surrogate_id),
        HAS_GY=grad_spikes is not None,
        HAS_GV=grad_v is not None,
        HAS_GTH=grad_theta is not None,
    )


def backward(
    grad_spikes,
    grad_v,
    x,
    v0,
    theta,
    inner,
    decay,
    hard,
    v_reset,
    surrogate_id,
    alpha,
    detach_reset,
    theta_grad,
    v0_inner=1,
):
    """Surrogate-gradient backward (recomputes the membrane). Returns (grad_x float32,
    grad_v0 [N], grad_theta [N] or None), per neuron, before any broadcast reduction."""
    T, n = x.shape[0], math.prod(x.shape[1:])
    dev = x.device
    gx = torch.empty(x.shape, dtype=torch.float32, device=dev)
    gv0 = torch.empty(n, dtype=torch.float32, device=dev)
    gth = torch.empty(n, dtype=torch.float32, device=dev) if theta_grad else None
    if n == 0:
        return gx, gv0, gth
    scratch = torch.empty((T, n), dtype=torch.float32, device=dev)
    _launch(
        "bwd",
        n,
        T,
        x,
        v0,
        theta,
        x if grad_spikes is None else grad_spikes,
        v0 if grad_v is None else grad_v,
        gx,
        gv0,
        gv0 if gth is None else gth,
        scratch,
        T,
        n,
        inner,
        theta.numel(),
        v0_inner,
        v0.numel(),
        decay,
        v_reset,
        alpha,
        **_backward_switches(decay, hard, detach_reset, surrogate_id, grad_spikes, grad_v, gth),
    )
    return gx, gv0, gth


#: A population tile holds this many membranes ([next_pow2(B), block]): block = this // next_pow2(B)
_POPULATION_TILE = 2048


def population_forward(x, v0, theta, inner, population, decay, hard, v_reset):
    """The fused forward of ``population`` (B) neurons per unit, writing the units' outputs (see
    :func:`~snncompiler.kernels.op.population_multistep`); the GPU counterpart of
    :func:`snncompiler.kernels.cpu.population_forward`. x: [T, ...] (float32/16, bfloat16; a
    time-broadcast input, stride 0 on the step axis, is read as its one step); v0: float32, dense
    and contiguous [B, *x.shape[1:]]; theta: float32, neuron n uses theta[(n // inner) % numel].
    Returns (outputs [T, ...] in x's dtype, v_final [B, ...], the number of spikes with θ != 0 as
    a 0-d int64 tensor on x's device: no host sync)."""
    T, n, xs, x_step = time_steps(x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if n == 0 or T == 0:
        return out, v0.clone(), torch.zeros((), dtype=torch.int64, device=x.device)
    vout = torch.empty_like(v0)
    bpad = triton.next_power_of_2(population)
    block = _INTERPRET_BLOCK if _interpreting() else max(32, _POPULATION_TILE // bpad)
    grid = triton.cdiv(n, block)
    partial = torch.empty(grid, dtype=torch.int64, device=x.device)
    _population_fwd[(grid,)](
        xs,
        v0,
        theta,
        out,
        vout,
        partial,
        T,
        n,
        x_step,
        population,
        inner,
        theta.numel(),
        population_inverse(population),
        decay,
        v_reset,
        DECAY=decay != 1.0,
        HARD=bool(hard),
        BPAD=bpad,
        BLOCK=block,
        num_warps=4,
        enable_fp_fusion=False,
    )
    return out, vout, partial.sum()


def population_backward(
    grad_out,
    grad_v,
    x,
    v0,
    theta,
    inner,
    population,
    decay,
    hard,
    v_reset,
    surrogate_id,
    alpha,
    detach_reset,
    theta_grad,
):
    """Surrogate-gradient backward of :func:`population_forward`, the GPU counterpart of
    :func:`snncompiler.kernels.cpu.population_backward` (same arguments and results): one
    backward launch per neuron of the units on x, the output gradient and that neuron's rows,
    the second and later ones adding their grad_x and grad_theta to the first's (a fixed block:
    an autotuner's trial runs would add more than once). No [T, B, ...] copy is made."""
    T, n = x.shape[0], math.prod(x.shape[1:])
    assert T > 0 and n > 0, "internal: the caller handles empty layers"
    dev = x.device
    gx = torch.empty(x.shape, dtype=torch.float32, device=dev)
    gv0 = torch.empty((population, n), dtype=torch.float32, device=dev)
    gth = torch.empty(n, dtype=torch.float32, device=dev) if theta_grad else None
    scratch = torch.empty((T, n), dtype=torch.float32, device=dev)
    v0 = v0.reshape(population, n)
    gv = None if grad_v is None else grad_v.reshape(population, n)
    block = _INTERPRET_BLOCK if _interpreting() else _SMALL_BLOCK
    for j in range(population):
        _lif_bwd[(triton.cdiv(n, block),)](
            x,
            v0[j],
            theta,
            x if grad_out is None else grad_out,
            v0[j] if gv is None else gv[j],
            gx,
            gv0[j],
            gv0[j] if gth is None else gth,
            scratch,
            T,
            n,
            inner,
            theta.numel(),
            1,
            n,
            decay,
            v_reset,
            alpha,
            **_backward_switches(decay, hard, detach_reset, surrogate_id, grad_out, grad_v, gth),
            BLOCK=block,
            ACC=j > 0,
            num_warps=_SMALL_WARPS,
            enable_fp_fusion=False,
        )
    return gx, gv0, gth
