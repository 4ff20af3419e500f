// Fused multi-step IF/LIF neuron forward on CUDA, with a plain C launcher (no torch headers).
//
// Same semantics as snncompiler/kernels/reference.py, bit for bit in float32: one thread per
// neuron runs the whole time loop with the membrane in a register; x[t] and the spikes are
// read/written coalesced (consecutive threads = consecutive neurons). All arithmetic uses
// explicit round-to-nearest intrinsics (__fmul_rn/__fadd_rn/__fsub_rn) so nvcc can never
// contract decay*v + x into an FMA the oracle does not do (also built with --fmad=false).
// theta and v0 are small vectors read through a Layout: neuron n uses p[(n / inner) % period],
// so a scalar or per-channel value is never expanded to N floats (a dense v0, e.g. a membrane
// carried over from the previous chunk, is the layout inner = 1, period = N).
//
// Packed spikes: a warp's 32 consecutive neurons give one __ballot_sync word = 4 bytes,
// written by lanes 0..3. Block size is a multiple of 32 and threads past N stay in the loop
// (inactive) so every ballot sees a full warp.
//
// The backward for CUDA tensors runs on the Triton kernel (snncompiler/kernels/triton_kernel.py).
// Python loads this file as a shared library through ctypes (snncompiler/kernels/cuda.py);
// `nvcc -c` on it alone is the CI check that it still compiles for sm_80 and sm_90.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 8;       // time steps whose loads one thread keeps in flight together
constexpr int kDeepUnroll = 16;  // the same on layers of at most Tuning::deep_max_n neurons

// Host-side choices of kernel and depth, set from Python (cuda.VEC4_MIN_N, cuda.deep_unroll_max_n).
struct Tuning {
  int64_t vec4_min_n, deep_max_n;
  cudaStream_t stream;
};

// A per-neuron value stored compactly, as the Python side describes it (op.theta_layout).
struct Layout {
  const float* p;
  int64_t inner, period;
  // skips the 64-bit division and remainder (dozens of instructions each) for a scalar, a
  // dense vector (inner 1, n < period) and a per-channel one's first period; the first two
  // branches are the same for every thread of a launch
  __device__ __forceinline__ float at(int64_t n) const {
    if (period == 1) return p[0];
    const int64_t i = inner == 1 ? n : n / inner;
    return p[i < period ? i : i % period];
  }
};

template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// (the deeper unroll is held to 128 registers, 2 blocks per SM, as cuda.deep_unroll_max_n assumes)
template <typename T, bool DECAY, bool HARD, int FMT, int UNROLL>
__global__ void __launch_bounds__(kThreads, UNROLL > kUnroll ? 2 : 0) lif_forward_kernel(
    const T* __restrict__ x, Layout v0, Layout theta, void* __restrict__ out, float* __restrict__ vout,
    int64_t steps, int64_t N, float decay, float v_reset) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool active = n < N;
  const int64_t nbytes = (N + 7) / 8;
  float v = active ? v0.at(n) : 0.0f;
  const float th = active ? theta.at(n) : 0.0f;
  const T th_out = from_f32<T>(th);
  const T zero_out = from_f32<T>(0.0f);
  // Loads of UNROLL steps are issued before any is used: one thread keeps UNROLL loads in
  // flight (the membrane chain serialises the arithmetic, not the memory traffic), which is
  // what it takes to approach the copy bandwidth with one neuron per thread. Small layers have
  // too few threads to cover the memory latency with 8 (Little's law: bytes in flight per SM =
  // threads x UNROLL x 4), hence kDeepUnroll there.
  for (int64_t t0 = 0; t0 < steps; t0 += UNROLL) {
    float xs[UNROLL];
#pragma unroll
    for (int k = 0; k < UNROLL; ++k) {
      const int64_t t = t0 + k;
      xs[k] = (active && t < steps) ? to_f32<T>(x[t * N + n]) : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < UNROLL; ++k) {
      const int64_t t = t0 + k;
      if (t >= steps) break;  // the same for every thread, so each ballot still sees a full warp
      const float h = DECAY ? __fadd_rn(__fmul_rn(v, decay), xs[k]) : __fadd_rn(v, xs[k]);
      const bool s = active && h >= th;
      if (FMT == 0) {
        if (active) static_cast<T*>(out)[t * N + n] = s ? th_out : zero_out;
      } else if (FMT == 1) {
        if (active) static_cast<uint8_t*>(out)[t * N + n] = s ? 1 : 0;
      } else {
        const unsigned word = __ballot_sync(0xffffffffu, s);
        const int lane = threadIdx.x & 31;
        const int64_t byte = (n - lane) / 8 + lane;
        if (lane < 4 && byte < nbytes) static_cast<uint8_t*>(out)[t * nbytes + byte] = (word >> (8 * lane)) & 0xffu;
      }
      v = s ? (HARD ? v_reset : __fsub_rn(h, th)) : h;
    }
  }
  if (active) vout[n] = v;
}

// float32 value/binary formats with N % 4 == 0 and 16-byte aligned buffers: each thread owns
// four consecutive neurons and moves them with one 16-byte load/store per step (4-byte stores
// for binary spikes), so a warp issues 512-byte transactions, as a tuned copy does.
template <bool DECAY, bool HARD, int FMT>
__global__ void __launch_bounds__(kThreads) lif_forward_vec4_kernel(
    const float4* __restrict__ x, Layout v0, Layout theta, void* __restrict__ out, float4* __restrict__ vout,
    int64_t steps, int64_t N4, float decay, float v_reset) {
  const int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= N4) return;  // no ballots here: inactive threads may leave
  float v[4], th[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {  // once per thread, against 2 * steps 16-byte accesses
    v[k] = v0.at(4 * q + k);
    th[k] = theta.at(4 * q + k);
  }
  constexpr int kSteps = 4;  // 4 x 16 bytes in flight per thread
  for (int64_t t0 = 0; t0 < steps; t0 += kSteps) {
    float4 xs[kSteps];
#pragma unroll
    for (int k = 0; k < kSteps; ++k) xs[k] = t0 + k < steps ? x[(t0 + k) * N4 + q] : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int k = 0; k < kSteps; ++k) {
      const int64_t t = t0 + k;
      if (t >= steps) break;
      const float xv[4] = {xs[k].x, xs[k].y, xs[k].z, xs[k].w};
      float o[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float h = DECAY ? __fadd_rn(__fmul_rn(v[j], decay), xv[j]) : __fadd_rn(v[j], xv[j]);
        const bool s = h >= th[j];
        o[j] = s ? (FMT == 0 ? th[j] : 1.0f) : 0.0f;
        v[j] = s ? (HARD ? v_reset : __fsub_rn(h, th[j])) : h;
      }
      if (FMT == 0) {
        static_cast<float4*>(out)[t * N4 + q] = make_float4(o[0], o[1], o[2], o[3]);
      } else {
        static_cast<uchar4*>(out)[t * N4 + q] =
            make_uchar4(o[0] != 0.f, o[1] != 0.f, o[2] != 0.f, o[3] != 0.f);
      }
    }
  }
  vout[q] = make_float4(v[0], v[1], v[2], v[3]);
}

template <typename T, bool DECAY, bool HARD, int FMT>
cudaError_t launch_scalar(const T* x, Layout v0, Layout theta, void* out, float* vout, int64_t steps, int64_t N,
                          float decay, float v_reset, const Tuning& tune) {
  const int64_t blocks = (N + kThreads - 1) / kThreads;
  if (N <= tune.deep_max_n)
    lif_forward_kernel<T, DECAY, HARD, FMT, kDeepUnroll><<<blocks, kThreads, 0, tune.stream>>>(
        x, v0, theta, out, vout, steps, N, decay, v_reset);
  else
    lif_forward_kernel<T, DECAY, HARD, FMT, kUnroll><<<blocks, kThreads, 0, tune.stream>>>(
        x, v0, theta, out, vout, steps, N, decay, v_reset);
  return cudaGetLastError();
}

template <typename T, bool DECAY, bool HARD>
cudaError_t launch_fmt(const void* x, Layout v0, Layout theta, void* out, int fmt, float* vout, int64_t steps,
                       int64_t N, float decay, float v_reset, const Tuning& tune) {
  if (N == 0) return cudaSuccess;
  const auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  // Below vec4_min_n neurons the vector kernel has too few threads to hide memory latency
  // (H200, T=128, N=2^16: 0.40x copy against 0.66x for one neuron per thread).
  if (sizeof(T) == 4 && fmt != 2 && N >= tune.vec4_min_n && N % 4 == 0 && aligned(x) && aligned(out) && aligned(vout)) {
    const int64_t N4 = N / 4, vblocks = (N4 + kThreads - 1) / kThreads;
    const float4* x4 = static_cast<const float4*>(x);
    float4* vo4 = reinterpret_cast<float4*>(vout);
    if (fmt == 0)
      lif_forward_vec4_kernel<DECAY, HARD, 0><<<vblocks, kThreads, 0, tune.stream>>>(x4, v0, theta, out, vo4, steps, N4, decay, v_reset);
    else
      lif_forward_vec4_kernel<DECAY, HARD, 1><<<vblocks, kThreads, 0, tune.stream>>>(x4, v0, theta, out, vo4, steps, N4, decay, v_reset);
    return cudaGetLastError();
  }
  const T* xp = static_cast<const T*>(x);
  if (fmt == 0) return launch_scalar<T, DECAY, HARD, 0>(xp, v0, theta, out, vout, steps, N, decay, v_reset, tune);
  if (fmt == 1) return launch_scalar<T, DECAY, HARD, 1>(xp, v0, theta, out, vout, steps, N, decay, v_reset, tune);
  return launch_scalar<T, DECAY, HARD, 2>(xp, v0, theta, out, vout, steps, N, decay, v_reset, tune);
}

template <typename T>
cudaError_t launch_dtype(const void* x, Layout v0, Layout theta, void* out, int fmt, float* vout, int64_t steps,
                         int64_t N, float decay, int hard, float v_reset, const Tuning& tune) {
  const bool dec = decay != 1.0f;  // IF: skip the multiply, like every other backend
  if (dec && hard) return launch_fmt<T, true, true>(x, v0, theta, out, fmt, vout, steps, N, decay, v_reset, tune);
  if (dec) return launch_fmt<T, true, false>(x, v0, theta, out, fmt, vout, steps, N, decay, v_reset, tune);
  if (hard) return launch_fmt<T, false, true>(x, v0, theta, out, fmt, vout, steps, N, decay, v_reset, tune);
  return launch_fmt<T, false, false>(x, v0, theta, out, fmt, vout, steps, N, decay, v_reset, tune);
}

}  // namespace

extern "C" {

// The argument list of snnc_lif_forward: cuda.py refuses a library reporting another version
// (a stale build next to the package or in the JIT cache) rather than call it with wrong arguments.
int snnc_lif_abi_version() { return 2; }

// dtype: 0 float32, 1 float16, 2 bfloat16 (of x and of value-format spikes).
// fmt: 0 value, 1 binary (uint8), 2 packed (uint8 [steps, ceil(N/8)]).
// v0 and theta: neuron n uses v0[(n / v0_inner) % v0_period] and theta[(n / inner) % period].
// Returns a cudaError_t.
int snnc_lif_forward(const void* x, int dtype, const float* v0, int64_t v0_inner, int64_t v0_period,
                     const float* theta, int64_t inner, int64_t period, void* out, int fmt, float* vout,
                     int64_t steps, int64_t N, float decay, int hard, float v_reset, int64_t vec4_min_n,
                     int64_t deep_max_n, void* stream) {
  if (dtype < 0 || dtype > 2 || fmt < 0 || fmt > 2 || inner < 1 || period < 1 || v0_inner < 1 || v0_period < 1)
    return cudaErrorInvalidValue;
  const Tuning tune{vec4_min_n, deep_max_n, static_cast<cudaStream_t>(stream)};
  const Layout v0l{v0, v0_inner, v0_period}, thl{theta, inner, period};
  if (dtype == 0) return launch_dtype<float>(x, v0l, thl, out, fmt, vout, steps, N, decay, hard, v_reset, tune);
  if (dtype == 1) return launch_dtype<__half>(x, v0l, thl, out, fmt, vout, steps, N, decay, hard, v_reset, tune);
  return launch_dtype<__nv_bfloat16>(x, v0l, thl, out, fmt, vout, steps, N, decay, hard, v_reset, tune);
}

const char* snnc_lif_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // extern "C"
