// Fused multi-step IF/LIF neuron on CPU (forward and surrogate-gradient backward).
//
// Semantics are those of snncompiler/kernels/reference.py, bit for bit in the forward:
//   h = v + x[t]  (decay == 1)   or   h = decay * v + x[t]   (two roundings: build with
//   -ffp-contract=off so the compiler never fuses them into an FMA the oracle does not do)
//   s = h >= theta;  v = s ? (hard ? v_reset : h - theta) : h;  out = s ? theta : 0
//
// Layout: x is [T, N] contiguous float32. Each OpenMP thread takes blocks of neurons and runs
// the whole time loop for one block, keeping the block's membranes and thresholds in small
// local arrays (L1) so the inner loop over neurons vectorises and x/out are streamed exactly
// once. theta is never expanded to N: neuron n uses theta[(n / theta_inner) % theta_period]
// (scalar: period 1; per-channel [C,1,1]: inner = H*W, period = C; full: inner 1, period N).
//
// Backward recomputes the membrane trajectory of a block into a thread-local [T, block]
// buffer (nothing but x, v0, theta is kept between forward and backward), then walks the
// time loop in reverse.
//
// No torch headers: pip's isolated build needs only pybind11. Python hands in the addresses of
// contiguous torch buffers (zero-copy); snncompiler/kernels/cpu.py checks dtype and layout.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common.h"  // after Python.h (pybind11), which must come first

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef __linux__
#include <pthread.h>
#include <sys/mman.h>
#endif

namespace py = pybind11;

namespace {

constexpr int64_t kBlock = 2048;  // forward: 2 x 8 KiB of state per thread, long x/out streams
enum Format { kValue = 0, kBinary = 1, kPacked = 2 };
enum Surrogate { kTriangle = 0, kAtan = 1, kSigmoid = 2 };

struct Params {
  int64_t T, N;
  float decay, v_reset, alpha;
  const float* theta;
  int64_t theta_inner, theta_period;
  int64_t v0_inner, v0_period;  // v0's layout, as theta's: dense is (1, N), a scalar (1, 1)
  int64_t x_step;  // floats between x[t] and x[t + 1]: N, or 0 for an input constant over time
  bool stream;     // forward: write value spikes with non-temporal stores (stream_step)
  bool x_bf16;     // forward: x (and value spikes) are bfloat16, converted per block step
};

using FwdFn = int64_t (*)(const Params&, const float*, const float*, void*, float*, int64_t, int64_t);
using BwdFn = void (*)(const Params&, const float*, const float*, const float*, const float*, float*, float*,
                       float*, int64_t, int64_t, float*);
using PopFn = int64_t (*)(const Params&, int64_t, float, const float*, const float*, float*, float*, int64_t,
                          int64_t);

// ---- the kernels, once per instruction set (lif_cpu_isa.inc) --------------------------
// The baseline build must run on any x86-64 (or other) CPU, where vectors are 4 floats wide.
// AVX2 and AVX-512 copies are chosen at run time when the CPU has them: with streaming stores
// (stream_step) a large layer moves so few bytes per element that the arithmetic of 4-wide
// vectors becomes its limit (benchmarks/kernels.py --isa-sweep). Each ISA brings its `Vec`.
// Only GCC on x86-64 builds the extra copies (clang has no `#pragma GCC target`);
// -DSNNC_SINGLE_ISA builds the baseline alone, as other compilers do.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(SNNC_SINGLE_ISA)
#define SNNC_MULTI_ISA 1
#endif

#if defined(__x86_64__)
// kByteBits[m]: 8 bytes, byte j = bit j of m: a vector compare's movemask as 0/1 spikes.
struct ByteBits {
  uint64_t table[256];
  ByteBits() {
    for (int m = 0; m < 256; ++m) {
      uint64_t bytes = 0;
      for (int j = 0; j < 8; ++j) bytes |= static_cast<uint64_t>(m >> j & 1) << (8 * j);
      table[m] = bytes;
    }
  }
};
const ByteBits kByteBits;

// What every x86 Vec shares: the fence after non-temporal stores, and the prefetch (SSE).
struct X86Memory {
  static void fence() { _mm_sfence(); }
  static void prefetch(const float* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T1); }
};
#endif

namespace isa_baseline {
#if defined(__x86_64__)
struct Vec : X86Memory {  // SSE2: part of x86-64 itself
  using F = __m128;
  using M = __m128;
  static constexpr int64_t kLanes = 4;
  static F load(const float* p) { return _mm_load_ps(p); }
  static F loadu(const float* p) { return _mm_loadu_ps(p); }
  static void store(float* p, F v) { _mm_store_ps(p, v); }
  static F set1(float a) { return _mm_set1_ps(a); }
  static F add(F a, F b) { return _mm_add_ps(a, b); }
  static F mul(F a, F b) { return _mm_mul_ps(a, b); }
  static F sub(F a, F b) { return _mm_sub_ps(a, b); }
  static M ge(F a, F b) { return _mm_cmpge_ps(a, b); }
  static F select(M m, F a, F b) { return _mm_or_ps(_mm_and_ps(m, a), _mm_andnot_ps(m, b)); }
  static int count_nonzero(M m, F th) {
    return __builtin_popcount(_mm_movemask_ps(_mm_and_ps(m, _mm_cmpneq_ps(th, _mm_setzero_ps()))));
  }
  static void stream(float* p, F v) { _mm_stream_ps(p, v); }
  static void store_bits(uint8_t* p, M m) {  // kLanes bytes of 0/1
    const uint32_t bytes = static_cast<uint32_t>(kByteBits.table[_mm_movemask_ps(m)]);
    std::memcpy(p, &bytes, 4);
  }
};
#else  // scalar stand-in, so that the kernels compile; forward() never streams here
struct Vec {
  using F = float;
  using M = bool;
  static constexpr int64_t kLanes = 1;
  static F load(const float* p) { return *p; }
  static F loadu(const float* p) { return *p; }
  static void store(float* p, F v) { *p = v; }
  static F set1(float a) { return a; }
  static F add(F a, F b) { return a + b; }
  static F mul(F a, F b) { return a * b; }
  static F sub(F a, F b) { return a - b; }
  static M ge(F a, F b) { return a >= b; }
  static F select(M m, F a, F b) { return m ? a : b; }
  static int count_nonzero(M m, F th) { return m && th != 0.0f; }
  static void stream(float* p, F v) { *p = v; }
  static void store_bits(uint8_t* p, M m) { *p = m ? 1 : 0; }
  static void fence() {}
  static void prefetch(const float*) {}
};
#endif
#include "lif_cpu_isa.inc"
}  // namespace isa_baseline

#ifdef SNNC_MULTI_ISA
#pragma GCC push_options
#pragma GCC target("avx2")
namespace isa_avx2 {
struct Vec : X86Memory {
  using F = __m256;
  using M = __m256;
  static constexpr int64_t kLanes = 8;
  static F load(const float* p) { return _mm256_load_ps(p); }
  static F loadu(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F v) { _mm256_store_ps(p, v); }
  static F set1(float a) { return _mm256_set1_ps(a); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static M ge(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  static F select(M m, F a, F b) { return _mm256_blendv_ps(b, a, m); }
  static int count_nonzero(M m, F th) {
    return __builtin_popcount(_mm256_movemask_ps(_mm256_and_ps(m, _mm256_cmp_ps(th, _mm256_setzero_ps(), _CMP_NEQ_UQ))));
  }
  static void stream(float* p, F v) { _mm256_stream_ps(p, v); }
  static void store_bits(uint8_t* p, M m) { std::memcpy(p, &kByteBits.table[_mm256_movemask_ps(m)], 8); }
};
#include "lif_cpu_isa.inc"
}  // namespace isa_avx2
#pragma GCC pop_options

#pragma GCC push_options
// The auto-vectorised loops use 256-bit vectors (AVX-512VL): 512-bit ones measured up to 30%
// slower on layers whose data is not in cache. stream_step's intrinsics are 512 bits wide:
// there they are faster (benchmarks/kernels.py --isa-sweep).
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,prefer-vector-width=256")
namespace isa_avx512 {
struct Vec : X86Memory {
  using F = __m512;
  using M = __mmask16;
  static constexpr int64_t kLanes = 16;
  static F load(const float* p) { return _mm512_load_ps(p); }
  static F loadu(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_store_ps(p, v); }
  static F set1(float a) { return _mm512_set1_ps(a); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static M ge(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  static F select(M m, F a, F b) { return _mm512_mask_blend_ps(m, b, a); }
  static int count_nonzero(M m, F th) {
    return __builtin_popcount(_mm512_mask_cmp_ps_mask(m, th, _mm512_setzero_ps(), _CMP_NEQ_UQ));
  }
  static void stream(float* p, F v) { _mm512_stream_ps(p, v); }
  static void store_bits(uint8_t* p, M m) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm_maskz_set1_epi8(m, 1)); }
};
#include "lif_cpu_isa.inc"
}  // namespace isa_avx512
#pragma GCC pop_options
#endif

struct Isa {
  const char* name;
  FwdFn (*forward)(bool decay, bool hard, int fmt);
  BwdFn (*backward)(bool decay, bool hard, bool detach, int sg);
  PopFn (*population)(bool decay, bool hard);
  BwdFn (*backward_acc)(bool decay, bool hard, bool detach, int sg);
};

const Isa kIsas[] = {
    {"baseline", isa_baseline::pick_forward, isa_baseline::pick_backward, isa_baseline::pick_population,
     isa_baseline::pick_backward_acc},
#ifdef SNNC_MULTI_ISA
    {"avx2", isa_avx2::pick_forward, isa_avx2::pick_backward, isa_avx2::pick_population,
     isa_avx2::pick_backward_acc},
    {"avx512", isa_avx512::pick_forward, isa_avx512::pick_backward, isa_avx512::pick_population,
     isa_avx512::pick_backward_acc},
#endif
};
constexpr int kNumIsas = sizeof(kIsas) / sizeof(kIsas[0]);

bool cpu_has(int isa) {
#ifdef SNNC_MULTI_ISA
  __builtin_cpu_init();
  if (isa == 1) return __builtin_cpu_supports("avx2");
  if (isa == 2)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
  return isa == 0;
}

int best_isa() {
  int best = 0;
  for (int i = 1; i < kNumIsas; ++i)
    if (cpu_has(i)) best = i;
  return best;
}

std::atomic<int> g_isa{best_isa()};
// Value-spike outputs of at least this many bytes are written with non-temporal stores. Below
// it, regular stores win: a small layer's spikes would still be in cache for the next layer
// (on the digits CNN, streaming its 4 MiB layer slowed the max pooling after it more than it
// sped up the neuron), while from 8 MiB on the runtime's neuron time on ResNet-18 dropped by a
// fifth. Measured on a 2-core Xeon VM (docs/kernels.md).
std::atomic<int64_t> g_stream_min_bytes{int64_t(8) << 20};
std::atomic<int64_t> g_streamed_calls{0};  // forward calls that took the streaming path

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (int i = 0; i < kNumIsas; ++i)
    if (cpu_has(i)) names.emplace_back(kIsas[i].name);
  return names;
}

void set_isa(const std::string& name) {
  for (int i = 0; i < kNumIsas; ++i)
    if (name == kIsas[i].name) {
      if (!cpu_has(i)) throw std::invalid_argument("isa: this CPU lacks " + name);
      g_isa = i;
      return;
    }
  std::string built;
  for (int i = 0; i < kNumIsas; ++i) built += std::string(i ? ", " : "") + kIsas[i].name;
  throw std::invalid_argument("isa: unknown '" + name + "' (this build has: " + built + ")");
}

// ---- interface: raw addresses of contiguous buffers ----------------------------------------
// snncompiler/kernels/cpu.py passes tensor.data_ptr() of contiguous tensors it allocated or
// made contiguous itself, with their sizes; 0 means "absent". Zero-copy, and no torch or numpy
// types cross this boundary (a numpy view costs more than the kernel on small layers).
using snnc::addr;  // common.h

// Outputs are fresh allocations first touched here. With 4 KiB pages the page faults cost as
// much as the kernel itself on large layers; transparent huge pages fault 2 MiB at a time.
// Measured (2-core VM, THP "madvise"): 1.6x faster op at 128-256 MiB outputs, but erratic to
// 3x slower at 0.5-2 GiB, where huge-page provisioning dominates; so only 8-256 MiB get it.
// (Only a hint: a no-op where THP is off or not Linux; values are unaffected.)
void advise_hugepages(void* ptr, int64_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  if (nbytes < int64_t(4 * kHuge) || nbytes > int64_t(128 * kHuge)) return;
  const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
  const uintptr_t lo = (p + kHuge - 1) & ~(kHuge - 1), hi = (p + nbytes) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)ptr;
  (void)nbytes;
#endif
}

template <class F>
int64_t parallel_blocks(int64_t N, int64_t block, int threads, F&& body) {
  const int64_t nblocks = (N + block - 1) / block;
  int64_t total = 0;
#pragma omp parallel for schedule(static) num_threads(std::max(1, threads)) if (nblocks > 1) reduction(+ : total)
  for (int64_t b = 0; b < nblocks; ++b) total += body(b * block, std::min(block, N - b * block));
  return total;
}

// Returns the number of spikes with a nonzero value (see forward_block). x_step: floats between
// time steps of x (-1: N, a dense [T, N] input; 0: one [N] input repeated at every step, as the
// runtime's first layer under direct encoding, read T times instead of copied T times).
// x_bf16: x, and value spikes, are bfloat16 (elements, not floats, then count in x_step).
int64_t forward(uintptr_t x, uintptr_t v0, uintptr_t theta, int64_t theta_inner, int64_t theta_period,
                uintptr_t out, uintptr_t vout, int64_t T, int64_t N, double decay, bool hard, double v_reset,
                int fmt, int threads, int64_t x_step, bool x_bf16, int64_t v0_inner, int64_t v0_period) {
  if (fmt < kValue || fmt > kPacked) throw std::invalid_argument("spike_format: unknown code");
  if (theta_inner < 1 || theta_period < 1) throw std::invalid_argument("theta: bad layout");
  if (v0_period == -1) v0_period = N;
  if (v0_inner < 1 || (v0_period < 1 && N > 0)) throw std::invalid_argument("v0: bad layout");
  if (T < 0 || N < 0) throw std::invalid_argument("T, N: must be >= 0");
  if (x_step != -1 && x_step != 0 && x_step != N) throw std::invalid_argument("x_step: must be -1, 0 or N");
  const int64_t out_bytes = T * (fmt == kValue ? N * (x_bf16 ? 2 : 4) : fmt == kBinary ? N : (N + 7) / 8);
  const int64_t stream_min = g_stream_min_bytes;
#if defined(__x86_64__)
  // value spikes only, in whole 64-byte lines: every row starts on one (N % 16 == 0, 64-byte
  // aligned output), so each block's rows are whole vectors for every ISA
  const bool stream = fmt == kValue && !x_bf16 && stream_min > 0 && out_bytes >= stream_min && N % 16 == 0 &&
                      out % 64 == 0;
#else
  const bool stream = false;
#endif
  Params p{T, N, static_cast<float>(decay), static_cast<float>(v_reset), 0.0f, addr<const float>(theta),
           theta_inner, theta_period, v0_inner, v0_period, x_step == -1 ? N : x_step, stream, x_bf16};
  if (stream) ++g_streamed_calls;
  void* op = addr<void>(out);
  advise_hugepages(op, out_bytes);
  const FwdFn fn = kIsas[g_isa].forward(p.decay != 1.0f, hard, fmt);
  const float* xp = addr<const float>(x);
  const float* v0p = addr<const float>(v0);
  float* vp = addr<float>(vout);
  py::gil_scoped_release release;
  // kBlock is a multiple of 8, so packed blocks start on byte boundaries and never share a byte.
  return parallel_blocks(N, kBlock, threads, [&](int64_t n0, int64_t nb) { return fn(p, xp, v0p, op, vp, n0, nb); });
}

// A population of B neurons per unit (see population_block): x [T, N] (x_step 0: one [N] input
// at every step), theta per unit in theta's layout, v0 and vout dense [B, N], out [T, N] float32
// (the units' outputs). Returns the number of spikes with a nonzero theta over all B * N neurons.
int64_t population_forward(uintptr_t x, uintptr_t v0, uintptr_t theta, int64_t theta_inner, int64_t theta_period,
                           uintptr_t out, uintptr_t vout, int64_t T, int64_t N, int64_t B, double decay, bool hard,
                           double v_reset, int threads, int64_t x_step) {
  if (theta_inner < 1 || theta_period < 1) throw std::invalid_argument("theta: bad layout");
  if (T < 0 || N < 0) throw std::invalid_argument("T, N: must be >= 0");
  if (B < 1 || B > kBlock / 16) throw std::invalid_argument("population: must be from 1 to 128");
  if (x_step != -1 && x_step != 0 && x_step != N) throw std::invalid_argument("x_step: must be -1, 0 or N");
#if defined(__x86_64__)
  // as forward(): large outputs in whole 64-byte lines (every block starts on a multiple of 16 units)
  const bool stream = g_stream_min_bytes > 0 && T * N * 4 >= g_stream_min_bytes && N % 16 == 0 && out % 64 == 0;
#else
  const bool stream = false;
#endif
  if (stream) ++g_streamed_calls;
  Params p{T, N, static_cast<float>(decay), static_cast<float>(v_reset), 0.0f, addr<const float>(theta),
           theta_inner, theta_period, 1, N, x_step == -1 ? N : x_step, stream, false};
  const float inv_b = 1.0f / static_cast<float>(B);
  const auto fn = kIsas[g_isa].population(p.decay != 1.0f, hard);
  const float* xp = addr<const float>(x);
  const float* v0p = addr<const float>(v0);
  float* op = addr<float>(out);
  float* vp = addr<float>(vout);
  advise_hugepages(op, T * N * 4);
  // units per block: the block's B membrane rows fill the kBlock floats of state, in whole
  // 16-float lines
  const int64_t block = std::max<int64_t>(16, (kBlock / B) / 16 * 16);
  py::gil_scoped_release release;
  return parallel_blocks(N, block, threads, [&](int64_t n0, int64_t nb) { return fn(p, B, inv_b, xp, v0p, op, vp, n0, nb); });
}

// The surrogate-gradient backward of B neurons per unit that share x, gy and theta, each with its
// own row of v0 / gv / gv0 (rows v0_period, N and N floats apart): each neuron's gradient is
// backward_block's (its trajectory recomputed), the second and later neurons' grad_x and
// grad_theta added to the first's block by block (the block's gx rows stay in cache across its B
// neurons), so a population never needs a [T, B, N] copy of x or of the gradients. B = 1 is the
// plain neuron's backward, whose v0 may be compact (v0_inner, v0_period as theta's layout).
void backward_neurons(uintptr_t x, uintptr_t v0, uintptr_t theta, int64_t theta_inner, int64_t theta_period,
                      uintptr_t gy, uintptr_t gv, uintptr_t gx, uintptr_t gv0, uintptr_t gth, int64_t T, int64_t N,
                      int64_t B, double decay, bool hard, double v_reset, int surrogate, double alpha, bool detach,
                      int threads, int64_t v0_inner, int64_t v0_period) {
  if (surrogate < kTriangle || surrogate > kSigmoid) throw std::invalid_argument("surrogate: unknown code");
  if (theta_inner < 1 || theta_period < 1) throw std::invalid_argument("theta: bad layout");
  if (v0_period == -1) v0_period = N;
  if (v0_inner < 1 || (v0_period < 1 && N > 0)) throw std::invalid_argument("v0: bad layout");
  if (T < 0 || N < 0 || B < 1) throw std::invalid_argument("T, N, B: must be >= 0, >= 0, >= 1");
  if (B > 1 && (v0_inner != 1 || v0_period != N)) throw std::invalid_argument("v0: a population's rows must be dense");
  Params p{T, N, static_cast<float>(decay), static_cast<float>(v_reset), static_cast<float>(alpha),
           addr<const float>(theta), theta_inner, theta_period, v0_inner, v0_period, N, false, false};
  const float* xp = addr<const float>(x);
  const float* v0p = addr<const float>(v0);
  const float* gyp = addr<const float>(gy);
  const float* gvp = addr<const float>(gv);
  float* gxp = addr<float>(gx);
  float* gv0p = addr<float>(gv0);
  float* gthp = addr<float>(gth);
  advise_hugepages(gxp, T * N * 4);
  const BwdFn first = kIsas[g_isa].backward(p.decay != 1.0f, hard, detach, surrogate);
  const BwdFn rest = kIsas[g_isa].backward_acc(p.decay != 1.0f, hard, detach, surrogate);
  // The recomputed trajectory of one block, [T, block] floats, should stay in L2 (~256 KiB).
  const int64_t block = std::max<int64_t>(16, std::min<int64_t>(kBlock, (65536 / std::max<int64_t>(T, 1)) / 16 * 16));
  py::gil_scoped_release release;
#pragma omp parallel num_threads(std::max(1, threads)) if (N > block)
  {
    std::vector<float> hbuf(static_cast<size_t>(std::max<int64_t>(T, 1) * block));
    const int64_t nblocks = (N + block - 1) / block;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t n0 = b * block, nb = std::min(block, N - n0);
      for (int64_t j = 0; j < B; ++j)
        (j ? rest : first)(p, xp, v0p + j * v0_period, gyp, gvp ? gvp + j * N : nullptr, gxp, gv0p + j * N, gthp, n0,
                           nb, hbuf.data());
    }
  }
}

// ---- output buffers: a small caching allocator handed to torch through DLPack -------------
// glibc serves every allocation above its mmap threshold (at most 32 MiB) with fresh pages
// and unmaps them on free, so a large spike tensor is page-faulted and zeroed by the OS on
// every call: that costs more than the kernel that fills it. Outputs of at least
// CACHE_MIN_BYTES (snncompiler/kernels/cpu.py) come from this cache instead: when torch frees such a tensor, its buffer is
// kept (up to a byte limit) for the next output of the same rounded size, as torch's CUDA
// caching allocator does on the GPU. Only these buffers are affected, not the process's malloc.
constexpr size_t kPage = size_t(1) << 12, kHugePage = size_t(1) << 21;

// DLPack 0.x ABI (dlpack.h), declared here to keep the build header-free.
struct DLDevice { int32_t device_type, device_id; };
struct DLDataType { uint8_t code, bits; uint16_t lanes; };
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};

class BufferCache {
 public:
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(bytes);
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        cached_ -= bytes;
        ++hits_;
        return p;
      }
      ++misses_;
    }
    // 2 MiB alignment lets transparent huge pages back large buffers from their first byte
    const size_t align = bytes >= 4 * kHugePage ? kHugePage : 64;
    void* p = std::aligned_alloc(align, bytes);
    if (!p) {  // memory is short: give back what is cached and try once more
      release();
      p = std::aligned_alloc(align, bytes);
      if (!p) throw std::bad_alloc();
    }
    return p;
  }
  void give(void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (bytes > limit_) {
      std::free(p);
      return;
    }
    while (cached_ + bytes > limit_ && !free_.empty()) {  // make room: drop the smallest first
      auto it = free_.begin();
      cached_ -= it->first;
      std::free(it->second);
      free_.erase(it);
    }
    free_.emplace(bytes, p);
    cached_ += bytes;
  }
  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& kv : free_) std::free(kv.second);
    free_.clear();
    cached_ = 0;
  }
  void set_limit(size_t limit) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      limit_ = limit;
    }
    if (limit == 0) release();
  }
  void reset_lock_after_fork() { new (&mutex_) std::mutex(); }
  py::dict stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    py::dict d;
    d["cached_bytes"] = cached_;
    d["cached_buffers"] = free_.size();
    d["limit_bytes"] = limit_;
    d["hits"] = hits_;
    d["misses"] = misses_;
    return d;
  }

 private:
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0, limit_ = size_t(1) << 30, hits_ = 0, misses_ = 0;
};

// Never destroyed: tensors may be freed after this module's static destructors have run.
BufferCache& cache() {
  static BufferCache* c = [] {
    auto* made = new BufferCache;
#ifdef __linux__
    // A fork while another thread holds the lock would leave the child's copy locked forever
    // (DataLoader workers are forked): the child starts with a fresh, unlocked mutex.
    pthread_atfork(nullptr, nullptr, [] { cache().reset_lock_after_fork(); });
#endif
    return made;
  }();
  return *c;
}

struct Managed {
  DLManagedTensor tensor;
  std::vector<int64_t> shape;
  size_t bytes;
};

void return_buffer(DLManagedTensor* t) {
  Managed* m = static_cast<Managed*>(t->manager_ctx);
  cache().give(t->dl_tensor.data, m->bytes);
  delete m;
}

// A DLPack capsule over an uninitialised C-contiguous buffer from the cache; torch.from_dlpack
// turns it into a tensor whose deleter returns the buffer. dtype: DLPack (code, bits).
py::capsule empty(const std::vector<int64_t>& shape, int code, int bits) {
  if (bits != 8 && bits != 16 && bits != 32 && bits != 64) throw std::invalid_argument("bits: must be 8, 16, 32 or 64");
  size_t elements = 1;
  for (int64_t d : shape) {
    if (d < 0) throw std::invalid_argument("shape: negative dimension");
    if (d != 0 && elements > (size_t(1) << 56) / static_cast<size_t>(d)) throw std::invalid_argument("shape: too large");
    elements *= static_cast<size_t>(d);
  }
  const size_t bytes = std::max<size_t>(kPage, (elements * (bits / 8) + kPage - 1) / kPage * kPage);
  auto* m = new Managed{};
  m->shape = shape;
  m->bytes = bytes;
  try {
    m->tensor.dl_tensor.data = cache().take(bytes);
  } catch (...) {
    delete m;
    throw;
  }
  m->tensor.dl_tensor.device = DLDevice{1, 0};  // kDLCPU
  m->tensor.dl_tensor.ndim = static_cast<int32_t>(m->shape.size());
  m->tensor.dl_tensor.dtype = DLDataType{static_cast<uint8_t>(code), static_cast<uint8_t>(bits), 1};
  m->tensor.dl_tensor.shape = m->shape.data();
  m->tensor.dl_tensor.strides = nullptr;  // compact row-major
  m->tensor.dl_tensor.byte_offset = 0;
  m->tensor.manager_ctx = m;
  m->tensor.deleter = return_buffer;
  // An unconsumed capsule (named "dltensor") still owns the buffer; a consumer renames it.
  return py::capsule(&m->tensor, "dltensor", [](PyObject* cap) {
    if (PyCapsule_IsValid(cap, "dltensor")) {
      auto* t = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
      t->deleter(t);
    }
  });
}

}  // namespace

PYBIND11_MODULE(_lif_cpu, m) {
  m.doc() = "Fused multi-step IF/LIF neuron kernels for CPU (see snncompiler/kernels/cpu.py)";
  m.def("forward", &forward, "Forward over [T, N] float32 buffers given by address; returns the spike count", py::arg("x"), py::arg("v0"),
        py::arg("theta"), py::arg("theta_inner"), py::arg("theta_period"), py::arg("out"), py::arg("vout"),
        py::arg("T"), py::arg("N"), py::arg("decay"), py::arg("hard"), py::arg("v_reset"), py::arg("fmt"),
        py::arg("threads"), py::arg("x_step") = -1, py::arg("x_bf16") = false, py::arg("v0_inner") = 1,
        py::arg("v0_period") = -1);
  m.def("population_forward", &population_forward,
        "Forward of B neurons per unit over [T, N] float32 buffers given by address, writing the units' "
        "outputs; returns the spike count",
        py::arg("x"), py::arg("v0"), py::arg("theta"), py::arg("theta_inner"), py::arg("theta_period"), py::arg("out"),
        py::arg("vout"), py::arg("T"), py::arg("N"), py::arg("B"), py::arg("decay"), py::arg("hard"),
        py::arg("v_reset"), py::arg("threads"), py::arg("x_step") = -1);
  m.def("backward_neurons", &backward_neurons,
        "Surrogate-gradient backward of B neurons per unit (addresses; 0 = absent), recomputing the membranes: "
        "grad_x and grad_theta summed over the B neurons, grad_v0 per neuron; B = 1 is the plain neuron's",
        py::arg("x"), py::arg("v0"), py::arg("theta"), py::arg("theta_inner"), py::arg("theta_period"),
        py::arg("grad_spikes"), py::arg("grad_v"), py::arg("grad_x"), py::arg("grad_v0"), py::arg("grad_theta"),
        py::arg("T"), py::arg("N"), py::arg("B"), py::arg("decay"), py::arg("hard"), py::arg("v_reset"),
        py::arg("surrogate"), py::arg("alpha"), py::arg("detach_reset"), py::arg("threads"), py::arg("v0_inner") = 1,
        py::arg("v0_period") = -1);
  m.def("has_openmp", &snnc::has_openmp, "Whether the extension was built with OpenMP");
  m.def("isa", [] { return std::string(kIsas[g_isa].name); }, "The instruction set the kernels run with");
  m.def("supported_isas", &supported_isas, "Instruction sets this build has and this CPU runs, slowest first");
  m.def("set_isa", &set_isa, "Run the kernels with this instruction set (one of supported_isas())", py::arg("name"));
  m.def("stream_min_bytes", [] { return g_stream_min_bytes.load(); },
        "Smallest value-spike output written with non-temporal stores (0: never)");
  m.def("streamed_calls", [] { return g_streamed_calls.load(); },
        "How many forward calls so far wrote their spikes with non-temporal stores");
  m.def("set_stream_min_bytes", [](int64_t n) { g_stream_min_bytes = std::max<int64_t>(0, n); },
        "Write value-spike outputs of at least n bytes with non-temporal stores (0: never)", py::arg("n"));
  m.def("empty", &empty, "DLPack capsule over an uninitialised buffer from the output cache", py::arg("shape"),
        py::arg("code"), py::arg("bits"));
  m.def("cache_release", [] { cache().release(); }, "Free every cached output buffer");
  m.def("cache_set_limit", [](size_t limit) { cache().set_limit(limit); },
        "Most bytes of freed output buffers kept for reuse (0: keep none)", py::arg("limit"));
  m.def("cache_stats", [] { return cache().stats(); }, "cached_bytes, cached_buffers, limit_bytes, hits, misses");
}
