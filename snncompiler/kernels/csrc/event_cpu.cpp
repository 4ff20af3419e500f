// Event-driven conv2d / linear on CPU: the current from the active inputs only (and, for pruned
// layers, the nonzero weights only), in three forms.
//
// A spiking layer's input is mostly zeros (a neuron emits θ or nothing), and the weights of a
// pruned layer are mostly zeros too. Dense convolution pays for every (input, weight) pair.
//
// Scatter form (conv2d below; pruned layers, very sparse spikes) pays only for pairs where both
// are nonzero:
//
//   out[n] = bias
//   for each sample n, input channel c: compact the plane's nonzero inputs (events) (iy, ix) = v
//     for each kernel tap (ky, kx) whose weight row W[:, c, ky, kx] has nonzeros:
//       the events this tap carries onto an output (oy, ox) (the others fall off the edge or
//       between strides)
//       for each nonzero weight W[o, c, ky, kx] = w:  out[n, o, oy, ox] += v * w for those events
//
// Weights arrive compressed (snncompiler/kernels/event.py builds them once per layer): one row
// per (global input channel c, ky, kx), CSR style, holding the output channels o of c's group
// whose weight is nonzero, o ascending. A linear layer is the 1x1 case (H = W = KH = KW = 1) and
// takes its own path (linear_sample): one event list over all its inputs. Its innermost loop
// (one weight, all events of one tap) has no branch and no conflicts (a tap maps distinct inputs
// to distinct outputs). Built with -ffp-contract=off (setup.py) so that v * w + out stays two
// roundings on every path.
//
// Gather form (conv2d_gather, namespace gather; dense weights at a few % spike density and up):
// per output pixel and tile of 64 output channels held in registers, the nonzero inputs its taps
// reach, each adding v * a packed weight row with a fused multiply-add (see the namespace).
//
// Pruned form (conv2d_pruned, namespace pruned; pruned weights at the spike densities of converted
// networks): per output channel, its nonzero weights each over the whole output plane in vector
// registers, on the sample's input placed by stride phase (see the namespace).
//
// All sum in float32 in their own fixed order, not a dense GEMM's, so results match F.conv2d
// within float32 summation-order error, not bit for bit (gather and pruned share one order).
//
// Layout: x [N, C, H, W] and out [N, O, OH, OW] contiguous float32, given by address (no torch
// headers, as lif_cpu.cpp). OpenMP across blocks of samples; each thread reuses its buffers.
//
// Binary spikes: x may instead be uint8 0/1 (the neuron kernel's "binary" spike format) with
// `scale` (float32, one per input channel; per input feature for a linear layer) giving the value
// a spike carries, theta. The gather form with C <= 16 reads the bytes as per-pixel channel masks
// (see "binary spikes with few channels" below); otherwise each plane is expanded to float32
// (s ? scale[c] : 0) in a small per-thread buffer just before it is read (the pruned form places
// the spikes one by one). Every later step, and the result, is bit for bit what the float32
// spikes of the "value" format give; only a quarter of the bytes come from memory, where the
// dense float32 read was most of a sparse layer's time.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common.h"  // after Python.h (pybind11), which must come first

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SNNC_EVENT_X86_SIMD 1
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

using snnc::addr;  // common.h

struct Geometry {
  int64_t C, H, W, O, OH, OW, KH, KW, sh, sw, ph, pw, dh, dw;
};

// The output row (or column) that tap k of input row i reaches, or -1: i + pad - k*dil must be a
// non-negative multiple of the stride and land inside the output.
inline int32_t reach(int64_t i, int64_t k, int64_t pad, int64_t dil, int64_t stride, int64_t out) {
  const int64_t t = i + pad - k * dil;
  if (t < 0 || t % stride) return -1;
  const int64_t o = t / stride;
  return o < out ? static_cast<int32_t>(o) : -1;
}

// target[t * HW + p]: the output position (oy * OW + ox) that tap t = ky * KW + kx carries input
// position p = iy * W + ix onto, or -1. Built once per call: no event pays for a division.
std::vector<int32_t> tap_targets(const Geometry& g) {
  std::vector<int32_t> target(static_cast<size_t>(g.KH * g.KW * g.H * g.W), -1);
  for (int64_t ky = 0; ky < g.KH; ++ky)
    for (int64_t kx = 0; kx < g.KW; ++kx)
      for (int64_t iy = 0; iy < g.H; ++iy) {
        const int32_t oy = reach(iy, ky, g.ph, g.dh, g.sh, g.OH);
        if (oy < 0) continue;
        for (int64_t ix = 0; ix < g.W; ++ix) {
          const int32_t ox = reach(ix, kx, g.pw, g.dw, g.sw, g.OW);
          if (ox >= 0) target[((ky * g.KW + kx) * g.H + iy) * g.W + ix] = static_cast<int32_t>(oy * g.OW + ox);
        }
      }
  return target;
}

// Branch-free compaction of the nonzero entries of x[0..n): positions and values (both buffers
// have room for n + 1: every entry is written, the count only advances on a nonzero). NaN counts
// as nonzero, as it does for the dense layer.
inline int64_t compact_scalar(const float* __restrict x, int64_t n, int32_t* __restrict pos,
                              float* __restrict val) {
  int64_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    pos[m] = static_cast<int32_t>(i);
    val[m] = v;
    m += !(v == 0.0f);
  }
  return m;
}

#ifdef SNNC_EVENT_X86_SIMD
// The same with AVX-512, 16 inputs per step, compressed in registers and stored whole (the buffers
// have kPad entries of room past n; a masked compress-store to memory is several times slower):
// the scan over every input is the one cost the event kernel pays at any density.
__attribute__((target("avx512f"))) int64_t compact_avx512(const float* x, int64_t n, int32_t* pos, float* val) {
  int64_t m = 0, i = 0;
  __m512i index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  const __m512 zero = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __mmask16 k = _mm512_cmp_ps_mask(v, zero, _CMP_NEQ_UQ);
    _mm512_storeu_ps(val + m, _mm512_maskz_compress_ps(k, v));
    _mm512_storeu_si512(pos + m, _mm512_maskz_compress_epi32(k, index));
    m += __builtin_popcount(static_cast<unsigned>(k));
    index = _mm512_add_epi32(index, step);
  }
  if (i < n) {  // the tail, masked: planes are rarely a multiple of 16 (7x7, 14x14)
    const __mmask16 live = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(live, x + i);
    const __mmask16 k = _mm512_mask_cmp_ps_mask(live, v, zero, _CMP_NEQ_UQ);
    _mm512_storeu_ps(val + m, _mm512_maskz_compress_ps(k, v));
    _mm512_storeu_si512(pos + m, _mm512_maskz_compress_epi32(k, index));
    m += __builtin_popcount(static_cast<unsigned>(k));
  }
  return m;
}

// d[tp[e]] += tv[e] * w for e < m, 16 at a time with gather and scatter (multiply, then add: two
// roundings, as the scalar loop). Only called where no two tp[e] are equal.
__attribute__((target("avx512f"))) void scatter_add_avx512(float* d, const int32_t* tp, const float* tv, int64_t m,
                                                           float w) {
  const __m512 wv = _mm512_set1_ps(w);
  int64_t e = 0;
  for (; e + 16 <= m; e += 16) {
    const __m512i q = _mm512_loadu_si512(tp + e);
    const __m512 add = _mm512_mul_ps(_mm512_loadu_ps(tv + e), wv);
    const __m512 old = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), static_cast<__mmask16>(0xFFFF), q, d, 4);
    _mm512_i32scatter_ps(d, q, _mm512_add_ps(old, add), 4);
  }
  if (e < m) {
    const __mmask16 k = static_cast<__mmask16>((1u << (m - e)) - 1);
    const __m512i q = _mm512_maskz_loadu_epi32(k, tp + e);
    const __m512 add = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, tv + e), wv);
    const __m512 old = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, q, d, 4);
    _mm512_mask_i32scatter_ps(d, k, q, _mm512_add_ps(old, add), 4);
  }
}

// The events of one tap: tp[m] = target[pos[e]] + soff[e], tv[m] = val[e] for the events whose
// target is not -1 (off the edge or between strides); returns m. Gather, compare, compress.
__attribute__((target("avx512f"))) int64_t tap_events_avx512(const int32_t* target, const int32_t* pos,
                                                             const int32_t* soff, const float* val, int64_t n,
                                                             int32_t* tp, float* tv) {
  int64_t m = 0, e = 0;
  const __m512i zero = _mm512_setzero_si512();
  for (; e < n; e += 16) {
    const __mmask16 live = n - e >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - e)) - 1);
    const __m512i p = _mm512_maskz_loadu_epi32(live, pos + e);
    const __m512i q = _mm512_mask_i32gather_epi32(_mm512_set1_epi32(-1), live, p, target, 4);
    const __mmask16 k = _mm512_cmpge_epi32_mask(q, zero);
    const __m512i t = _mm512_add_epi32(q, _mm512_maskz_loadu_epi32(live, soff + e));
    _mm512_storeu_si512(tp + m, _mm512_maskz_compress_epi32(k, t));
    _mm512_storeu_ps(tv + m, _mm512_maskz_compress_ps(k, _mm512_maskz_loadu_ps(live, val + e)));
    m += __builtin_popcount(static_cast<unsigned>(k));
  }
  return m;
}

// Whether the AVX-512 paths run: the CPU has them, unless set_simd(false) chose the portable loops
// (tests check both give the same results).
bool g_avx512 = __builtin_cpu_supports("avx512f");
// Whether the AVX2 paths run (compaction, transposes and the gather form's micro-kernels); set_isa
// picks. Every path gives the same bits.
bool g_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");

// kLeftPack[mask]: the positions of mask's set bits, 4 bits each, lowest first: the permutation
// that packs the selected lanes of an 8-float vector to its front (AVX2 has no compress).
struct LeftPack {
  uint32_t table[256];
  LeftPack() {
    for (int mask = 0; mask < 256; ++mask) {
      uint32_t packed = 0;
      int k = 0;
      for (int lane = 0; lane < 8; ++lane)
        if (mask >> lane & 1) packed |= static_cast<uint32_t>(lane) << (4 * k++);
      table[mask] = packed;
    }
  }
};
const LeftPack kLeftPack;

// The permutation that packs the lanes of mask (8 bits) to the front of an 8-lane vector, in order.
__attribute__((target("avx2"))) inline __m256i left_pack_avx2(unsigned mask) {
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(kLeftPack.table[mask])), shifts),
                          _mm256_set1_epi32(0xF));
}

// compact_scalar with AVX2: 8 inputs per step, packed with a permutation from kLeftPack and
// stored whole (the buffers have kPad entries of room past n).
__attribute__((target("avx2"))) int64_t compact_avx2(const float* x, int64_t n, int32_t* pos, float* val) {
  int64_t m = 0, i = 0;
  const __m256 zero = _mm256_setzero_ps();
  __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i step = _mm256_set1_epi32(8);
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const int k = _mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_NEQ_UQ));
    const __m256i perm = left_pack_avx2(static_cast<unsigned>(k));
    _mm256_storeu_ps(val + m, _mm256_permutevar8x32_ps(v, perm));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(pos + m), _mm256_permutevar8x32_epi32(index, perm));
    m += __builtin_popcount(static_cast<unsigned>(k));
    index = _mm256_add_epi32(index, step);
  }
  for (; i < n; ++i) {
    const float v = x[i];
    pos[m] = static_cast<int32_t>(i);
    val[m] = v;
    m += !(v == 0.0f);
  }
  return m;
}

// One 8x8 block: d[j * ds + i] = s[i * ss + j].
inline __attribute__((always_inline, target("avx2"))) void transpose8x8_avx2(const float* s, int64_t ss, float* d,
                                                                             int64_t ds) {
  __m256 r[8], t[8], u[8];
  for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(s + k * ss);
  for (int k = 0; k < 8; k += 2) {
    t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
    t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
  }
  for (int k = 0; k < 8; k += 4) {
    u[k] = _mm256_shuffle_ps(t[k], t[k + 2], 0x44);
    u[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], 0xEE);
    u[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0x44);
    u[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0xEE);
  }
  for (int k = 0; k < 4; ++k) {
    _mm256_storeu_ps(d + k * ds, _mm256_permute2f128_ps(u[k], u[k + 4], 0x20));
    _mm256_storeu_ps(d + (k + 4) * ds, _mm256_permute2f128_ps(u[k], u[k + 4], 0x31));
  }
}
#endif

// d[j * ds + i] = s[i * ss + j] for i < rows, j < cols, in 8x8 blocks (element by element, the
// stores of one row of s land 4·ds bytes apart and stall on every cache line); the edges that do
// not fill a block element by element.
inline void transpose_edges(const float* s, int64_t rows, int64_t cols, int64_t ss, float* d, int64_t ds,
                            int64_t full_rows, int64_t full_cols) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = i < full_rows ? full_cols : 0; j < cols; ++j) d[j * ds + i] = s[i * ss + j];
}

#ifdef SNNC_EVENT_X86_SIMD
__attribute__((target("avx2"))) void transpose_avx2(const float* s, int64_t rows, int64_t cols, int64_t ss, float* d,
                                                    int64_t ds) {
  const int64_t fr = rows / 8 * 8, fc = cols / 8 * 8;
  for (int64_t i0 = 0; i0 < fr; i0 += 8)
    for (int64_t j0 = 0; j0 < fc; j0 += 8) transpose8x8_avx2(s + i0 * ss + j0, ss, d + j0 * ds + i0, ds);
  transpose_edges(s, rows, cols, ss, d, ds, fr, fc);
}
#endif

inline void transpose(const float* s, int64_t rows, int64_t cols, int64_t ss, float* d, int64_t ds) {
#ifdef SNNC_EVENT_X86_SIMD
  if (g_avx2) return transpose_avx2(s, rows, cols, ss, d, ds);
#endif
  for (int64_t i0 = 0; i0 < rows; i0 += 8)  // blocked: the stores of a block stay in a few lines
    for (int64_t j0 = 0; j0 < cols; j0 += 8)
      for (int64_t i = i0; i < std::min(rows, i0 + 8); ++i)
        for (int64_t j = j0; j < std::min(cols, j0 + 8); ++j) d[j * ds + i] = s[i * ss + j];
}

inline void scatter_add(float* __restrict d, const int32_t* __restrict tp, const float* __restrict tv, int64_t m,
                        float w) {
#ifdef SNNC_EVENT_X86_SIMD
  if (g_avx512) return scatter_add_avx512(d, tp, tv, m, w);
#endif
  for (int64_t e = 0; e < m; ++e) d[tp[e]] += tv[e] * w;
}

inline int64_t compact(const float* x, int64_t n, int32_t* pos, float* val) {
#ifdef SNNC_EVENT_X86_SIMD
  if (g_avx512) return compact_avx512(x, n, pos, val);
  if (g_avx2) return compact_avx2(x, n, pos, val);
#endif
  return compact_scalar(x, n, pos, val);
}

inline void init_out(float* out, const float* bias, int64_t O, int64_t plane) {
  for (int64_t o = 0; o < O; ++o) {
    const float b = bias ? bias[o] : 0.0f;
    float* d = out + o * plane;
    for (int64_t q = 0; q < plane; ++q) d[q] = b;
  }
}

// A layer's input: float32 values, or uint8 binary spikes with the value of a spike per channel.
struct Input {
  const float* values;   // float32 [N, C, ...], or null
  const uint8_t* spikes; // uint8 0/1 [N, C, ...] when values is null
  const float* scale;    // [C]: the value of a spike of channel c
  bool binary() const { return values == nullptr; }
};

// dst[i] = b[i] ? v : 0 for i < n (a loop the compiler vectorises).
inline void expand_spikes(const uint8_t* __restrict b, int64_t n, float v, float* __restrict dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = b[i] ? v : 0.0f;
}

// The `plane` floats of channel c of the sample at element offset `at`: the input itself, or its
// binary spikes expanded into buf.
inline const float* plane_values(const Input& in, int64_t at, int64_t c, int64_t plane, float* buf) {
  if (!in.binary()) return in.values + at + c * plane;
  expand_spikes(in.spikes + at + c * plane, plane, in.scale[c], buf);
  return buf;
}

struct Scratch {  // one thread's event lists, reused across sample blocks
  std::vector<int32_t> pos, sample_off, bpos, bsoff, tpos;
  std::vector<float> val, bval, tval, plane;  // plane: one expanded plane of binary spikes
  static constexpr int64_t kPad = 16;  // room for the whole-vector stores past the last event
  explicit Scratch(int64_t n, int64_t plane_size = 0)
      : pos(n + kPad), sample_off(n + kPad), bpos(n + kPad), bsoff(n + kPad), tpos(n + kPad), val(n + kPad), bval(n + kPad), tval(n + kPad), plane(plane_size) {}
};

// Strided convolutions: a tap reaches an output only from inputs with one residue (iy mod sh,
// ix mod sw), so the events are bucketed by residue once per channel and each tap reads its own
// bucket, instead of every tap filtering all events. residue[p]: the bucket of input position p;
// tap_bucket[t]: the bucket tap t reads.
struct Buckets {
  std::vector<int32_t> residue, tap_bucket;
  int64_t count;
  explicit Buckets(const Geometry& g) : residue(g.H * g.W), tap_bucket(g.KH * g.KW), count(g.sh * g.sw) {
    for (int64_t iy = 0; iy < g.H; ++iy)
      for (int64_t ix = 0; ix < g.W; ++ix) residue[iy * g.W + ix] = static_cast<int32_t>((iy % g.sh) * g.sw + ix % g.sw);
    for (int64_t ky = 0; ky < g.KH; ++ky)
      for (int64_t kx = 0; kx < g.KW; ++kx) {
        const int64_t ry = ((ky * g.dh - g.ph) % g.sh + g.sh) % g.sh, rx = ((kx * g.dw - g.pw) % g.sw + g.sw) % g.sw;
        tap_bucket[ky * g.KW + kx] = static_cast<int32_t>(ry * g.sw + rx);
      }
  }
};

// Samples [0, S) of a block of a convolution (x, out point at the block's first sample); returns
// their number of nonzero inputs. The events of one input channel are pooled over the block so
// that the innermost loops run over many events: per-sample event lists are short (tens), and
// the exit of every short loop is a mispredicted branch, which cost more than the arithmetic.
int64_t conv_block(const Input& x, int64_t x0, float* out, int64_t S, const float* bias, const int64_t* off,
                   const int32_t* idx, const float* wval, const Geometry& g, const int32_t* target, const Buckets& bk,
                   Scratch& s) {
  const int64_t plane = g.H * g.W, out_plane = g.OH * g.OW, taps = g.KH * g.KW;
  const int64_t in_size = g.C * plane, out_size = g.O * out_plane;
  for (int64_t n = 0; n < S; ++n) init_out(out + n * out_size, bias, g.O, out_plane);
  int64_t total = 0;
  int32_t* __restrict tp = s.tpos.data();
  float* __restrict tv = s.tval.data();
  int64_t start[65], fill[64];  // bucket b holds bpos/bval[start[b] .. start[b + 1])
  bool bucketed = bk.count > 1 && bk.count <= 64;
#ifdef SNNC_EVENT_X86_SIMD
  if (g_avx512) bucketed = false;  // filtering all events per tap, vectorised, beat sorting them into buckets
#endif
  for (int64_t c = 0; c < g.C; ++c) {
    int64_t n = 0;
    for (int64_t i = 0; i < S; ++i) {
      const float* xc = plane_values(x, x0 + i * in_size, c, plane, s.plane.data());
      const int64_t k = compact(xc, plane, s.pos.data() + n, s.val.data() + n);
      std::fill(s.sample_off.data() + n, s.sample_off.data() + n + k, static_cast<int32_t>(i * out_size));
      n += k;
    }
    total += n;
    if (n == 0) continue;
    const int32_t* ep = s.pos.data();
    const int32_t* es = s.sample_off.data();
    const float* ev = s.val.data();
    if (bucketed) {  // counting sort of the events by residue
      std::fill(fill, fill + bk.count, 0);
      for (int64_t e = 0; e < n; ++e) ++fill[bk.residue[ep[e]]];
      start[0] = 0;
      for (int64_t b = 0; b < bk.count; ++b) start[b + 1] = start[b] + fill[b], fill[b] = start[b];
      for (int64_t e = 0; e < n; ++e) {
        const int64_t at = fill[bk.residue[ep[e]]]++;
        s.bpos[at] = ep[e];
        s.bsoff[at] = es[e];
        s.bval[at] = ev[e];
      }
    }
    const int64_t* row = off + c * taps;
    for (int64_t t = 0; t < taps; ++t) {
      const int64_t lo = row[t], hi = row[t + 1];
      if (lo == hi) continue;  // every weight of this tap pruned
      const int32_t* tgt = target + t * plane;
      const int32_t* bp = ep;
      const int32_t* bs = es;
      const float* bv = ev;
      int64_t nb = n;
      if (bucketed) {
        const int64_t b = bk.tap_bucket[t];
        bp = s.bpos.data() + start[b];
        bs = s.bsoff.data() + start[b];
        bv = s.bval.data() + start[b];
        nb = start[b + 1] - start[b];
      }
      int64_t m = 0;
#ifdef SNNC_EVENT_X86_SIMD
      if (g_avx512) m = tap_events_avx512(tgt, bp, bs, bv, nb, tp, tv);
      else
#endif
        for (int64_t e = 0; e < nb; ++e) {  // the events this tap carries onto an output
          const int32_t q = tgt[bp[e]];
          tp[m] = q + bs[e];
          tv[m] = bv[e];
          m += q >= 0;
        }
      // no two events of one tap reach the same output (a tap maps inputs one to one), so the
      // scatter below has no conflicts
      for (int64_t k = lo; k < hi; ++k) {
        float* __restrict d = out + static_cast<int64_t>(idx[k]) * out_plane;
        const float w = wval[k];
        scatter_add(d, tp, tv, m, w);
      }
    }
  }
  return total;
}

// One sample of a linear layer (1x1 everything): one event list over all inputs, each event
// adds its value times its weight row. An unpruned row (every output nonzero) is contiguous in o,
// a loop the compiler vectorises.
int64_t linear_sample(const Input& in, int64_t x0, float* out, const float* bias, const int64_t* off,
                      const int32_t* idx, const float* wval, int64_t C, int64_t O, Scratch& s) {
  init_out(out, bias, O, 1);
  const float* x = s.plane.data();
  if (in.binary()) {  // one value per input feature
    float* __restrict buf = s.plane.data();
    const uint8_t* __restrict b = in.spikes + x0;
    for (int64_t c = 0; c < C; ++c) buf[c] = b[c] ? in.scale[c] : 0.0f;
  } else {
    x = in.values + x0;
  }
  const int64_t n = compact(x, C, s.pos.data(), s.val.data());
  for (int64_t e = 0; e < n; ++e) {
    const int64_t c = s.pos[e], lo = off[c], hi = off[c + 1];
    const float v = s.val[e];
    if (hi - lo == O) {
      float* __restrict d = out;
      const float* __restrict w = wval + lo;
      for (int64_t j = 0; j < O; ++j) d[j] += v * w[j];
    } else {
      for (int64_t k = lo; k < hi; ++k) out[idx[k]] += v * wval[k];
    }
  }
  return n;
}

// The input at address x: float32, or uint8 binary spikes when scale (float32 [C]) is given.
Input input_at(uintptr_t x, uintptr_t scale) {
  if (scale) return Input{nullptr, addr<const uint8_t>(x), addr<const float>(scale)};
  return Input{addr<const float>(x), nullptr, nullptr};
}

// x: [N, C, H, W] float32 (or uint8 with scale [C]); out: [N, O, OH, OW]; w_off: int64
// [C*KH*KW + 1]; w_idx: int32, w_val: float32 [nnz]; bias: float32 [O] or 0; ph, pw: the leading
// pads (the trailing ones only set OH, OW). Returns the number of nonzero inputs over the batch.
int64_t conv2d(uintptr_t x, uintptr_t out, uintptr_t bias, uintptr_t w_off, uintptr_t w_idx, uintptr_t w_val,
               int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t OH, int64_t OW, int64_t KH, int64_t KW,
               int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int threads, uintptr_t scale) {
  const Geometry g{C, H, W, O, OH, OW, KH, KW, sh, sw, ph, pw, dh, dw};
  const bool dense_1x1 = H == 1 && W == 1 && KH == 1 && KW == 1 && OH == 1 && OW == 1;
  const std::vector<int32_t> target = dense_1x1 ? std::vector<int32_t>() : tap_targets(g);
  const Buckets buckets(dense_1x1 ? Geometry{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1} : g);
  const Input xin = input_at(x, scale);
  float* op = addr<float>(out);
  const float* bp = bias ? addr<const float>(bias) : nullptr;
  const int64_t* offp = addr<const int64_t>(w_off);
  const int32_t* idxp = addr<const int32_t>(w_idx);
  const float* valp = addr<const float>(w_val);
  const int64_t in_size = C * H * W, out_size = O * OH * OW;
  int64_t total = 0;
  py::gil_scoped_release release;
  // samples per block: enough to pool tens of events per (channel, tap) at spiking densities,
  // few enough that the block's outputs stay in L2 (256 KiB)
  const int64_t block = dense_1x1 ? 1 : std::max<int64_t>(1, std::min<int64_t>(32, (64 << 10) / std::max<int64_t>(1, out_size)));
  const int64_t nblocks = (N + block - 1) / block;
#pragma omp parallel num_threads(std::max(1, threads)) if (nblocks > 1) reduction(+ : total)
  {
    Scratch s(dense_1x1 ? C : block * H * W, xin.binary() ? (dense_1x1 ? C : H * W) : 0);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t n0 = b * block, S = std::min(block, N - n0);
      if (dense_1x1)
        total += linear_sample(xin, n0 * in_size, op + n0 * out_size, bp, offp, idxp, valp, C, O, s);
      else
        total += conv_block(xin, n0 * in_size, op + n0 * out_size, S, bp, offp, idxp, valp, g, target.data(), buckets,
                            s);
    }
  }
  return total;
}


// ---- gather form: register-blocked, for spikes at moderate density (a few % and up) -----------
//
// The scatter form above pays per (input channel, tap) and per event read-modify-writes of the
// output; it wins on pruned layers at very low density. At the 5-30 % spike densities of a
// converted network with dense weights, the gather form does the same multiply-adds (nonzero
// inputs × all weights they meet) with the outputs in registers:
//
//   lists: for each input pixel (n, iy, ix), its nonzero channels c and values v (compacted from
//          the pixel's channel vector, so ascending in c)
//   for each tile of 64 output channels (8 AVX2 or 4 AVX-512 registers):
//     for each output pixel: acc = bias; for each tap reaching a real input pixel (padding taps
//       are skipped: a 3x3 conv on a 1x1 input does 1/9 of the dense work), for each event of
//       that pixel: acc += v * Wp[tap][c][tile]   (one broadcast, one fused multiply-add per vector)
//
// Wp is the weight packed [KH*KW][C][Opad] by event.py (output channels contiguous, padded with
// zeros to a multiple of 16), so an event's weights are one contiguous row. The sum runs in a fixed
// order (bias, then taps in row-major order, then channels ascending) with one rounding per fused
// multiply-add in every path (std::fma in the portable loop), so the result does not depend on
// the instruction set or the thread count; it differs from F.conv2d's by summation order only.
// groups = 1 only (event.py routes grouped convolutions to the scatter form).

namespace gather {

constexpr int64_t kTile = 64;  // output channels per register block

// The (packed-weight offset of the tap, input pixel) pairs of each output pixel: the taps that
// land on a real input pixel, in tap order. Built once per call from the geometry alone.
struct PixelTaps {
  std::vector<int64_t> start, woff, pix;
  PixelTaps(const Geometry& g, int64_t Opad) : start(g.OH * g.OW + 1, 0) {
    for (int64_t oy = 0; oy < g.OH; ++oy)
      for (int64_t ox = 0; ox < g.OW; ++ox) {
        for (int64_t ky = 0; ky < g.KH; ++ky) {
          const int64_t iy = oy * g.sh - g.ph + ky * g.dh;
          if (iy < 0 || iy >= g.H) continue;
          for (int64_t kx = 0; kx < g.KW; ++kx) {
            const int64_t ix = ox * g.sw - g.pw + kx * g.dw;
            if (ix < 0 || ix >= g.W) continue;
            woff.push_back((ky * g.KW + kx) * g.C * Opad);
            pix.push_back(iy * g.W + ix);
          }
        }
        start[oy * g.OW + ox + 1] = static_cast<int64_t>(woff.size());
      }
  }
};

// Each output pixel's events over all its taps, flattened: the packed-weight row offset of each
// (tap, channel) and the input value. One loop per pixel instead of one per tap: at a few events
// per tap (small layers) the mispredicted exit of each short loop cost more than its arithmetic.
// A tile kernel runs every pixel of a sample block for one tile of output channels (one call per
// tile: a call per pixel cost as much as a small pixel's work).
struct Flat {
  const int64_t* start;  // pixel i's events: [start[i], start[i + 1])
  const int32_t* off;
  const float* val;
  int64_t pixels, stride;  // pixel i's outputs at dst + i * stride
};

template <int NV>  // NV groups of 8 floats
void tile_portable(const float* w, const float* bias, const Flat& f, float* dst) {
  for (int64_t i = 0; i < f.pixels; ++i) {
    float acc[NV * 8];
    for (int j = 0; j < NV * 8; ++j) acc[j] = bias ? bias[j] : 0.0f;
    for (int64_t e = f.start[i]; e < f.start[i + 1]; ++e) {
      const float v = f.val[e];
      const float* row = w + f.off[e];
      for (int j = 0; j < NV * 8; ++j) acc[j] = std::fma(v, row[j], acc[j]);
    }
    for (int j = 0; j < NV * 8; ++j) dst[i * f.stride + j] = acc[j];
  }
}

#ifdef SNNC_EVENT_X86_SIMD
// The SIMD tiles run two output pixels side by side where the registers allow (2·NV accumulators
// and a row's loads fit): one pixel's sum is a chain of dependent fused multiply-adds (4 cycles
// each), so alone it uses a fraction of the FMA units. Each pixel still sums its own events in
// its own order, so the result is the one-pixel loop's, bit for bit.
#define SNNC_TILE_BODY(VEC, LANES, SET1, LOAD, FMA, STORE, ZERO, PAIR)                                     \
  int64_t i = 0;                                                                                       \
  if (PAIR)                                                                                            \
    for (; i + 1 < f.pixels; i += 2) {                                                                 \
      VEC a[NV], b[NV];                                                                                \
      for (int j = 0; j < NV; ++j) a[j] = b[j] = bias ? LOAD(bias + LANES * j) : ZERO();               \
      int64_t e0 = f.start[i], e1 = f.start[i + 1];                                                    \
      const int64_t end0 = f.start[i + 1], end1 = f.start[i + 2];                                      \
      for (const int64_t both = e0 + std::min(end0 - e0, end1 - e1); e0 < both; ++e0, ++e1) {          \
        const VEC v0 = SET1(f.val[e0]), v1 = SET1(f.val[e1]);                                          \
        const float *r0 = w + f.off[e0], *r1 = w + f.off[e1];                                          \
        for (int j = 0; j < NV; ++j) {                                                                 \
          a[j] = FMA(v0, LOAD(r0 + LANES * j), a[j]);                                                  \
          b[j] = FMA(v1, LOAD(r1 + LANES * j), b[j]);                                                  \
        }                                                                                              \
      }                                                                                                \
      for (; e0 < end0; ++e0) {                                                                        \
        const VEC v = SET1(f.val[e0]);                                                                 \
        for (int j = 0; j < NV; ++j) a[j] = FMA(v, LOAD(w + f.off[e0] + LANES * j), a[j]);             \
      }                                                                                                \
      for (; e1 < end1; ++e1) {                                                                        \
        const VEC v = SET1(f.val[e1]);                                                                 \
        for (int j = 0; j < NV; ++j) b[j] = FMA(v, LOAD(w + f.off[e1] + LANES * j), b[j]);             \
      }                                                                                                \
      for (int j = 0; j < NV; ++j) {                                                                   \
        STORE(dst + i * f.stride + LANES * j, a[j]);                                                   \
        STORE(dst + (i + 1) * f.stride + LANES * j, b[j]);                                             \
      }                                                                                                \
    }                                                                                                  \
  for (; i < f.pixels; ++i) {                                                                          \
    VEC acc[NV];                                                                                       \
    for (int j = 0; j < NV; ++j) acc[j] = bias ? LOAD(bias + LANES * j) : ZERO();                      \
    for (int64_t e = f.start[i]; e < f.start[i + 1]; ++e) {                                            \
      const VEC v = SET1(f.val[e]);                                                                    \
      const float* row = w + f.off[e];                                                                 \
      for (int j = 0; j < NV; ++j) acc[j] = FMA(v, LOAD(row + LANES * j), acc[j]);                     \
    }                                                                                                  \
    for (int j = 0; j < NV; ++j) STORE(dst + i * f.stride + LANES * j, acc[j]);                        \
  }

template <int NV>  // NV vectors of 8 floats (16 registers: pairs up to 4)
__attribute__((target("avx2,fma"))) void tile_avx2(const float* w, const float* bias, const Flat& f, float* dst) {
  SNNC_TILE_BODY(__m256, 8, _mm256_set1_ps, _mm256_loadu_ps, _mm256_fmadd_ps, _mm256_storeu_ps, _mm256_setzero_ps,
                 NV <= 4)
}

template <int NV>  // NV vectors of 16 floats (32 registers: pairs up to 4, all of them)
__attribute__((target("avx512f"))) void tile_avx512(const float* w, const float* bias, const Flat& f, float* dst) {
  SNNC_TILE_BODY(__m512, 16, _mm512_set1_ps, _mm512_loadu_ps, _mm512_fmadd_ps, _mm512_storeu_ps, _mm512_setzero_ps,
                 NV <= 4)
}
#undef SNNC_TILE_BODY
#endif

using TileFn = void (*)(const float*, const float*, const Flat&, float*);

// The tile kernel for a tile of `width` floats (a multiple of 16, at most kTile), on the widest
// instruction set in use.
TileFn pick(int64_t width) {
  const int nv8 = static_cast<int>(width / 8);  // 2, 4, 6 or 8
#ifdef SNNC_EVENT_X86_SIMD
  if (g_avx512) switch (nv8 / 2) {
      case 1: return tile_avx512<1>;
      case 2: return tile_avx512<2>;
      case 3: return tile_avx512<3>;
      default: return tile_avx512<4>;
    }
  if (g_avx2) switch (nv8) {
      case 2: return tile_avx2<2>;
      case 4: return tile_avx2<4>;
      case 6: return tile_avx2<6>;
      default: return tile_avx2<8>;
    }
#endif
  switch (nv8) {
    case 2: return tile_portable<2>;
    case 4: return tile_portable<4>;
    case 6: return tile_portable<6>;
    default: return tile_portable<8>;
  }
}

// Compact each of `pixels` rows of C channels (rows[p * C ...]) into chan/val at p * C, counts in
// cnt; returns the total. One call per sample, the per-row compaction inlined (same target).
template <int64_t (*Compact)(const float*, int64_t, int32_t*, float*)>
inline int64_t compact_rows_impl(const float* rows, int64_t pixels, int64_t C, int32_t* chan, float* val,
                                 int32_t* cnt) {
  int64_t total = 0;
  for (int64_t p = 0; p < pixels; ++p) {
    const int64_t k = Compact(rows + p * C, C, chan + p * C, val + p * C);
    cnt[p] = static_cast<int32_t>(k);
    total += k;
  }
  return total;
}

#ifdef SNNC_EVENT_X86_SIMD
__attribute__((target("avx512f"), flatten)) int64_t compact_rows_avx512(const float* rows, int64_t pixels, int64_t C,
                                                               int32_t* chan, float* val, int32_t* cnt) {
  return compact_rows_impl<compact_avx512>(rows, pixels, C, chan, val, cnt);
}
__attribute__((target("avx2"), flatten)) int64_t compact_rows_avx2(const float* rows, int64_t pixels, int64_t C,
                                                          int32_t* chan, float* val, int32_t* cnt) {
  return compact_rows_impl<compact_avx2>(rows, pixels, C, chan, val, cnt);
}
#endif

int64_t compact_rows(const float* rows, int64_t pixels, int64_t C, int32_t* chan, float* val, int32_t* cnt) {
#ifdef SNNC_EVENT_X86_SIMD
  if (g_avx512) return compact_rows_avx512(rows, pixels, C, chan, val, cnt);
  if (g_avx2) return compact_rows_avx2(rows, pixels, C, chan, val, cnt);
#endif
  return compact_rows_impl<compact_scalar>(rows, pixels, C, chan, val, cnt);
}

// What the flattening (see block()) reads and writes.
struct FlattenArgs {
  const int32_t *cnt, *chan;
  const float* val;
  const int64_t *tstart, *twoff, *tpix;
  int64_t S, HW, C, OHW, Opad;
  int32_t* mo;
  float* mv;
  int64_t* mstart;
};

// The copy of one block of 8: restrict-qualified so that the compiler makes it one vector
// multiply-add and two vector copies.
inline void block8(int32_t* __restrict mo, float* __restrict mv, const int32_t* __restrict ch,
                   const float* __restrict vv, int32_t base, int32_t opad) {
  for (int u = 0; u < 8; ++u) {
    mo[u] = base + ch[u] * opad;
    mv[u] = vv[u];
  }
}

// Compiled for AVX2 and for the baseline (which has no 32-bit vector multiply), picked by the CPU
// at load time: integer offsets and copies only, so the result is the same on both.
#if defined(SNNC_EVENT_X86_SIMD) && defined(__linux__) && !defined(__clang__)  // ifunc: GCC on ELF
__attribute__((target_clones("avx2", "default")))
#endif
void flatten(const FlattenArgs& a) {
  int64_t m = 0;
  a.mstart[0] = 0;
  const int32_t opad = static_cast<int32_t>(a.Opad);
  for (int64_t n = 0; n < a.S; ++n) {
    const int32_t* cnt = a.cnt + n * a.HW;
    const int32_t* chan = a.chan + n * a.HW * a.C;
    const float* val = a.val + n * a.HW * a.C;
    for (int64_t q = 0; q < a.OHW; ++q) {
      for (int64_t k = a.tstart[q]; k < a.tstart[q + 1]; ++k) {
        const int64_t p = a.tpix[k];
        const int32_t* ch = chan + p * a.C;
        const float* vv = val + p * a.C;
        const int32_t base = static_cast<int32_t>(a.twoff[k]), c = cnt[p];
        int32_t j = 0;
        do {  // the first block unconditionally: "is this pixel silent?" is the unpredictable branch
          block8(a.mo + m + j, a.mv + m + j, ch + j, vv + j, base, opad);
          j += 8;
        } while (j < c);
        m += c;
      }
      a.mstart[n * a.OHW + q + 1] = m;
    }
  }
}

// ---- binary spikes with few channels: the flattening straight from per-pixel channel masks ----
//
// With uint8 spikes and C ≤ 16, each input pixel's spiking channels are a 16-bit mask, built per
// sample in one vectorised pass over the bytes; each output pixel's events are then packed per
// tap from the masks with a compress (AVX-512) or two left-pack permutations (AVX2): a vector of
// the tap's weight-row offsets and one of the channels' spike values, the lanes of the set bits
// kept in channel order. That is the same list, in the same order, as the float route builds
// through expansion, transpose and compaction, none of which this route needs. With more
// channels, one mask word per 16 channels per tap costs more than compacting each pixel once
// (SD-Conv's conv 32→64 on 7×7/2: 2.6-2.8 ms with two words, 2.2-2.3 ms expanded), and the
// float route runs. (Packing each pixel's list once from its mask and copying it per tap, as the
// float route's flattening does, measured slower: 9.5-9.7 against 7.8-8.2 ms on the digits CNN's
// conv 16→32 at 15 % spikes, 1 thread.)

constexpr int64_t kMaskMaxChannels = 16;

// masks[p], bit c: whether x[c * HW + p] spikes, for the HW pixels of one sample; returns the
// number of spikes.
#if defined(SNNC_EVENT_X86_SIMD) && defined(__linux__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
int64_t spike_masks(const uint8_t* x, int64_t C, int64_t HW, uint16_t* masks) {
  std::fill(masks, masks + HW, uint16_t{0});
  int64_t spikes = 0;
  for (int64_t c = 0; c < C; ++c) {  // loops over p: the compiler vectorises them
    const uint8_t* __restrict xc = x + c * HW;
    uint16_t* __restrict m = masks;
    for (int64_t p = 0; p < HW; ++p) m[p] = static_cast<uint16_t>(m[p] | (xc[p] != 0) << c);
    for (int64_t p = 0; p < HW; ++p) spikes += xc[p] != 0;
  }
  return spikes;
}

// What the flattening from masks reads and writes.
struct MaskFlattenArgs {
  const uint16_t* masks;  // [S][HW]
  const int64_t *tstart, *twoff, *tpix;
  const int32_t* lane_off;  // [16]: c * Opad
  const float* lane_val;    // [16]: the value of a spike of channel c (0 past C)
  int64_t S, HW, OHW;
  int32_t* mo;
  float* mv;
  int64_t* mstart;
};

void flatten_masks_portable(const MaskFlattenArgs& a) {
  // locals: stores through the output pointers could alias the struct, which would be reloaded
  int32_t* __restrict mo = a.mo;
  float* __restrict mv = a.mv;
  int64_t* __restrict mstart = a.mstart;
  int64_t m = 0;
  mstart[0] = 0;
  for (int64_t n = 0; n < a.S; ++n) {
    const uint16_t* masks = a.masks + n * a.HW;
    for (int64_t q = 0; q < a.OHW; ++q) {
      for (int64_t k = a.tstart[q]; k < a.tstart[q + 1]; ++k) {
        const int32_t base = static_cast<int32_t>(a.twoff[k]);
        for (unsigned b = masks[a.tpix[k]]; b; b &= b - 1) {
          const int c = __builtin_ctz(b);
          mo[m] = base + a.lane_off[c];
          mv[m] = a.lane_val[c];
          ++m;
        }
      }
      mstart[n * a.OHW + q + 1] = m;
    }
  }
}

#ifdef SNNC_EVENT_X86_SIMD
__attribute__((target("avx512f,popcnt"))) void flatten_masks_avx512(const MaskFlattenArgs& a) {
  int32_t* __restrict mo = a.mo;  // locals, as in the portable loop
  float* __restrict mv = a.mv;
  int64_t* __restrict mstart = a.mstart;
  int64_t m = 0;
  mstart[0] = 0;
  const __m512i off = _mm512_loadu_si512(a.lane_off);
  const __m512 val = _mm512_loadu_ps(a.lane_val);
  for (int64_t n = 0; n < a.S; ++n) {
    const uint16_t* masks = a.masks + n * a.HW;
    for (int64_t q = 0; q < a.OHW; ++q) {
      for (int64_t k = a.tstart[q]; k < a.tstart[q + 1]; ++k) {  // stored whole: the buffers have room
        const __mmask16 b = masks[a.tpix[k]];
        const __m512i base = _mm512_set1_epi32(static_cast<int32_t>(a.twoff[k]));
        _mm512_storeu_si512(mo + m, _mm512_maskz_compress_epi32(b, _mm512_add_epi32(base, off)));
        _mm512_storeu_ps(mv + m, _mm512_maskz_compress_ps(b, val));
        m += __builtin_popcount(static_cast<unsigned>(b));
      }
      mstart[n * a.OHW + q + 1] = m;
    }
  }
}

__attribute__((target("avx2,popcnt"))) void flatten_masks_avx2(const MaskFlattenArgs& a) {
  int32_t* __restrict mo = a.mo;  // locals, as in the portable loop
  float* __restrict mv = a.mv;
  int64_t* __restrict mstart = a.mstart;
  int64_t m = 0;
  mstart[0] = 0;
  const __m256i off[2] = {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.lane_off)),
                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.lane_off + 8))};
  const __m256 val[2] = {_mm256_loadu_ps(a.lane_val), _mm256_loadu_ps(a.lane_val + 8)};
  for (int64_t n = 0; n < a.S; ++n) {
    const uint16_t* masks = a.masks + n * a.HW;
    for (int64_t q = 0; q < a.OHW; ++q) {
      for (int64_t k = a.tstart[q]; k < a.tstart[q + 1]; ++k) {
        const unsigned mask = masks[a.tpix[k]];
        const __m256i base = _mm256_set1_epi32(static_cast<int32_t>(a.twoff[k]));
        for (int h = 0; h < 2; ++h) {  // 8 channels at a time, packed by kLeftPack
          const unsigned b = mask >> (8 * h) & 0xFF;
          const __m256i perm = left_pack_avx2(b);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(mo + m),
                              _mm256_permutevar8x32_epi32(_mm256_add_epi32(base, off[h]), perm));
          _mm256_storeu_ps(mv + m, _mm256_permutevar8x32_ps(val[h], perm));
          m += __builtin_popcount(b);
        }
      }
      mstart[n * a.OHW + q + 1] = m;
    }
  }
}
#endif

void flatten_masks(const MaskFlattenArgs& a) {
#ifdef SNNC_EVENT_X86_SIMD
  if (g_avx512) return flatten_masks_avx512(a);
  if (g_avx2) return flatten_masks_avx2(a);
#endif
  flatten_masks_portable(a);
}

// A thread's buffers, kept across calls (OpenMP's threads persist): a chunk is one call per
// layer, and allocating and zero-filling them per call cost more than the small layers' work.
struct Scratch {
  std::vector<int32_t> cnt, chan, moff;
  std::vector<float> val, xt, xe, obuf, mval;
  std::vector<int64_t> mstart;
  std::vector<uint16_t> masks;
  void fit(int64_t S, const Geometry& g, int64_t Opad, int64_t pairs) {
    grow(masks, S * g.H * g.W);
    grow(cnt, S * g.H * g.W);
    grow(chan, S * g.H * g.W * g.C + ::Scratch::kPad);
    grow(val, S * g.H * g.W * g.C + ::Scratch::kPad);
    grow(xt, g.H * g.W * g.C);
    grow(xe, g.H * g.W * g.C);
    grow(obuf, S * g.OH * g.OW * Opad);
    grow(mstart, S * g.OH * g.OW + 1);
    grow(moff, S * pairs * g.C + 16);  // every tap of every pixel full, and a vector of slack
    grow(mval, S * pairs * g.C + 16);
  }
  template <class T>
  static void grow(std::vector<T>& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(n);
  }
};

thread_local Scratch t_scratch;

// Samples [0, S) of a block: compact every input pixel's channel vector, flatten each output
// pixel's events, then run the tiles; returns the number of nonzero inputs.
// The lanes of the mask route (binary input, C ≤ kMaskMaxChannels): c * Opad and the value of a
// spike of channel c, zero past C (a lane no mask bit selects).
struct MaskLanes {
  std::vector<int32_t> off;
  std::vector<float> val;
  MaskLanes(const Input& x, int64_t C, int64_t Opad) : off(kMaskMaxChannels, 0), val(kMaskMaxChannels, 0.0f) {
    if (!applies(x, C)) return;
    for (int64_t c = 0; c < C; ++c) {
      off[c] = static_cast<int32_t>(c * Opad);
      val[c] = x.scale[c];
    }
  }
  static bool applies(const Input& x, int64_t C) { return x.binary() && C <= kMaskMaxChannels; }
};

int64_t block(const Input& x, int64_t x0, float* out, int64_t S, const float* bias, const float* wp, int64_t Opad,
              const Geometry& g, const PixelTaps& pt, const MaskLanes& lanes, Scratch& s) {
  const int64_t HW = g.H * g.W, C = g.C, OHW = g.OH * g.OW;
  int64_t total = 0;
  if (MaskLanes::applies(x, C)) {
    for (int64_t n = 0; n < S; ++n) total += spike_masks(x.spikes + x0 + n * C * HW, C, HW, s.masks.data() + n * HW);
    flatten_masks({s.masks.data(), pt.start.data(), pt.woff.data(), pt.pix.data(), lanes.off.data(),
                   lanes.val.data(), S, HW, OHW, s.moff.data(), s.mval.data(), s.mstart.data()});
  } else {
    for (int64_t n = 0; n < S; ++n) {
      const float* xn = s.xe.data();
      if (x.binary()) {  // the sample's spikes as the float32 values they stand for (L1-sized)
        for (int64_t c = 0; c < C; ++c)
          expand_spikes(x.spikes + x0 + n * C * HW + c * HW, HW, x.scale[c], s.xe.data() + c * HW);
      } else {
        xn = x.values + x0 + n * C * HW;
      }
      const float* rows = xn;  // [HW][C]: a pixel's channels contiguous
      if (HW > 1) {
        transpose(xn, C, HW, HW, s.xt.data(), C);
        rows = s.xt.data();
      }
      const int64_t at = n * HW;
      total += compact_rows(rows, HW, C, s.chan.data() + at * C, s.val.data() + at * C, s.cnt.data() + at);
    }
    // flatten: copies in blocks of 8 whatever the count (reading past a pixel's events stays
    // inside the buffers, and what is written past them is overwritten or never read), so that at
    // a few events per tap the only data-dependent branch is the rare second block
    flatten({s.cnt.data(), s.chan.data(), s.val.data(), pt.start.data(), pt.woff.data(), pt.pix.data(), S, HW, C,
             OHW, Opad, s.moff.data(), s.mval.data(), s.mstart.data()});
  }
  const Flat f{s.mstart.data(), s.moff.data(), s.mval.data(), S * OHW, Opad};
  for (int64_t t0 = 0; t0 < Opad; t0 += kTile) {
    const int64_t width = std::min(kTile, Opad - t0);
    pick(width)(wp + t0, bias ? bias + t0 : nullptr, f, s.obuf.data() + t0);
  }
  for (int64_t n = 0; n < S; ++n) {  // [OHW][Opad] -> [O][OHW]
    const float* ob = s.obuf.data() + n * OHW * Opad;
    float* on = out + n * g.O * OHW;
    if (OHW == 1) {
      std::memcpy(on, ob, sizeof(float) * g.O);
      continue;
    }
    transpose(ob, OHW, g.O, Opad, on, OHW);
  }
  return total;
}

}  // namespace gather

// x: [N, C, H, W] float32 (or uint8 with scale [C]); out: [N, O, OH, OW]; wp: float32
// [KH*KW, C, Opad] (Opad: O padded to a multiple of 16 with zero weights); bias: float32 [Opad] or
// 0. groups = 1. Returns the number of nonzero inputs over the whole batch.
int64_t conv2d_gather(uintptr_t x, uintptr_t out, uintptr_t bias, uintptr_t wp, int64_t N, int64_t C, int64_t H,
                      int64_t W, int64_t O, int64_t Opad, int64_t OH, int64_t OW, int64_t KH, int64_t KW, int64_t sh,
                      int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int threads, uintptr_t scale) {
  const Geometry g{C, H, W, O, OH, OW, KH, KW, sh, sw, ph, pw, dh, dw};
  const gather::PixelTaps taps(g, Opad);
  const Input xin = input_at(x, scale);
  const gather::MaskLanes lanes(xin, C, Opad);
  float* op = addr<float>(out);
  const float* bp = bias ? addr<const float>(bias) : nullptr;
  const float* wpp = addr<const float>(wp);
  const int64_t in_size = C * H * W, out_size = O * OH * OW;
  // samples per block: the block's event lists and outputs in about 256 KiB (L2), so that each
  // tile's weights are read once per block and its events stay cached across the tiles
  const int64_t per_sample = in_size * 8 + OH * OW * Opad * 4;
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(64, (256 << 10) / std::max<int64_t>(1, per_sample)));
  const int64_t nblocks = (N + block - 1) / block;
  int64_t total = 0;
  py::gil_scoped_release release;
#pragma omp parallel num_threads(std::max(1, threads)) if (nblocks > 1) reduction(+ : total)
  {
    gather::Scratch& s = gather::t_scratch;
    s.fit(block, g, Opad, static_cast<int64_t>(taps.pix.size()));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t n0 = b * block, S = std::min(block, N - n0);
      total += gather::block(xin, n0 * in_size, op + n0 * out_size, S, bp, wpp, Opad, g, taps, lanes, s);
    }
  }
  return total;
}

// ---- pruned form: pruned weights, whole output planes per vector op ---------------------------
//
// Each sample's input is laid out zero-padded (Hp = pt + H + pb rows, Wp = pl + W + pr columns)
// and split by stride phase: plane (c, ry, rx) holds the padded pixels (y * sh + ry, x * sw + rx),
// Hq = ceil(Hp / sh) rows of Wq = ceil(Wp / sw). Output pixel (oy, ox), at flat position
// q = oy * Wq + ox, then reads tap (ky, kx) of channel c at q + one offset (the phase plane of
// (c, ky*dh mod sh, kx*dw mod sw), shifted by (ky*dh / sh, kx*dw / sw)), the same for every q: with
// stride 1 there is one phase and the layout is the padded image. Each output channel runs its
// nonzero weights only, every weight adding x[q + offset] * w to all q at once (16 per AVX-512
// vector; the columns ox >= OW are computed and dropped). Work ∝ nonzero weights × output pixels,
// independent of the spikes: no event lists, no transposes, the outputs of a block of 8 vectors
// in registers. The form for pruned layers at the spike densities (5-30 %) where building event
// lists costs more than the zeros they skip.
//
// Summation order: bias, then the taps row-major, then channels ascending (event.py orders the
// weights so), one fused multiply-add each: the gather form's order. A zero input (an absent
// spike, padding) or a zero weight adds an exact zero in either form, so the two agree bit for bit.

namespace pruned {

// One output channel's block of NV vectors at q0: acc = bias, + x[q + src[k]] * val[k] for its
// weights k in order, stored to dst (the block's place in the channel's padded output plane).
template <int NV>
void block_portable(const float* xq, const int32_t* src, const float* val, int64_t n, float b, float* dst) {
  float acc[NV * 8];
  for (int j = 0; j < NV * 8; ++j) acc[j] = b;
  for (int64_t k = 0; k < n; ++k) {
    const float* s = xq + src[k];
    const float w = val[k];
    for (int j = 0; j < NV * 8; ++j) acc[j] = std::fma(s[j], w, acc[j]);
  }
  for (int j = 0; j < NV * 8; ++j) dst[j] = acc[j];
}

#ifdef SNNC_EVENT_X86_SIMD
// The SIMD blocks: the portable loop's operations, NV vectors of LANES floats at a time.
#define SNNC_PRUNED_BLOCK_BODY(VEC, LANES, SET1, LOAD, FMA, STORE) \
  VEC acc[NV];                                                     \
  for (int j = 0; j < NV; ++j) acc[j] = SET1(b);                   \
  for (int64_t k = 0; k < n; ++k) {                                \
    const float* s = xq + src[k];                                  \
    const VEC w = SET1(val[k]);                                    \
    for (int j = 0; j < NV; ++j) acc[j] = FMA(LOAD(s + LANES * j), w, acc[j]); \
  }                                                                \
  for (int j = 0; j < NV; ++j) STORE(dst + LANES * j, acc[j]);

template <int NV>
__attribute__((target("avx2,fma"))) void block_avx2(const float* xq, const int32_t* src, const float* val, int64_t n,
                                                    float b, float* dst) {
  SNNC_PRUNED_BLOCK_BODY(__m256, 8, _mm256_set1_ps, _mm256_loadu_ps, _mm256_fmadd_ps, _mm256_storeu_ps)
}

template <int NV>
__attribute__((target("avx512f"))) void block_avx512(const float* xq, const int32_t* src, const float* val, int64_t n,
                                                     float b, float* dst) {
  SNNC_PRUNED_BLOCK_BODY(__m512, 16, _mm512_set1_ps, _mm512_loadu_ps, _mm512_fmadd_ps, _mm512_storeu_ps)
}
#undef SNNC_PRUNED_BLOCK_BODY
#endif

using BlockFn = void (*)(const float*, const int32_t*, const float*, int64_t, float, float*);

constexpr int kMaxVectors = 8;  // vectors per block: 8 accumulators and their loads in registers

// The positions of the nonzero bytes of b[0..n) into pos (room for n + 32); returns their number.
// What a sample of binary spikes costs the pruned form: a scan, then work per spike only.
inline int64_t nonzero_bytes_portable(const uint8_t* b, int64_t n, int32_t* pos) {
  int64_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    pos[m] = static_cast<int32_t>(i);
    m += b[i] != 0;
  }
  return m;
}

#ifdef SNNC_EVENT_X86_SIMD
// 16 bytes at a time widened to 32-bit lanes, compared and compressed in registers and stored
// whole (pos has room): no branch per spike, whose mispredictions cost as much as the layer's
// multiply-adds with a bit-scanning loop.
__attribute__((target("avx512f,popcnt"))) int64_t nonzero_bytes_avx512(const uint8_t* b, int64_t n, int32_t* pos) {
  int64_t m = 0;
  __m512i index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16), zero = _mm512_setzero_si512();
  for (int64_t i = 0; i < n; i += 16) {
    alignas(16) uint8_t tail[16] = {};  // the last bytes of a plane, zero-padded (no byte masks in AVX-512F)
    const uint8_t* at = b + i;
    if (n - i < 16) {
      for (int64_t j = 0; j < n - i; ++j) tail[j] = b[i + j];
      at = tail;
    }
    // the zero-masking form: the plain one trips GCC 12's -Wmaybe-uninitialized in its own header
    const __m512i v = _mm512_maskz_cvtepu8_epi32(0xFFFF, _mm_loadu_si128(reinterpret_cast<const __m128i*>(at)));
    const __mmask16 k = _mm512_cmpneq_epi32_mask(v, zero);
    _mm512_storeu_si512(pos + m, _mm512_maskz_compress_epi32(k, index));
    m += __builtin_popcount(static_cast<unsigned>(k));
    index = _mm512_add_epi32(index, step);
  }
  return m;
}

// The same 8 bytes at a time, packed with a permutation from kLeftPack.
__attribute__((target("avx2,popcnt"))) int64_t nonzero_bytes_avx2(const uint8_t* b, int64_t n, int32_t* pos) {
  int64_t m = 0, i = 0;
  const __m256i zero = _mm256_setzero_si256();
  __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i step = _mm256_set1_epi32(8);
  for (; i + 8 <= n; i += 8) {
    int64_t word;
    std::memcpy(&word, b + i, 8);
    const __m256i v = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(word));
    const int k = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(v, zero)));  // bytes are ≥ 0
    const __m256i perm = left_pack_avx2(static_cast<unsigned>(k));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(pos + m), _mm256_permutevar8x32_epi32(index, perm));
    m += __builtin_popcount(static_cast<unsigned>(k));
    index = _mm256_add_epi32(index, step);
  }
  const int64_t k = nonzero_bytes_portable(b + i, n - i, pos + m);  // the tail, positions from b + i
  for (int64_t j = m; j < m + k; ++j) pos[j] += static_cast<int32_t>(i);
  return m + k;
}
#endif

inline int64_t nonzero_bytes(const uint8_t* b, int64_t n, int32_t* pos) {
#ifdef SNNC_EVENT_X86_SIMD
  if (g_avx512) return nonzero_bytes_avx512(b, n, pos);
  if (g_avx2) return nonzero_bytes_avx2(b, n, pos);
#endif
  return nonzero_bytes_portable(b, n, pos);
}

// Floats per vector on the instruction set in use (the portable loops work in groups of 8).
int64_t vector_width() {
#ifdef SNNC_EVENT_X86_SIMD
  if (g_avx512) return 16;
#endif
  return 8;
}

// The block kernel for nv vectors (1..kMaxVectors) on the widest instruction set in use.
BlockFn pick(int nv) {
#define SNNC_PRUNED_PICK(fn) \
  switch (nv) {              \
    case 1: return fn<1>;    \
    case 2: return fn<2>;    \
    case 3: return fn<3>;    \
    case 4: return fn<4>;    \
    case 5: return fn<5>;    \
    case 6: return fn<6>;    \
    case 7: return fn<7>;    \
    default: return fn<8>;   \
  }
#ifdef SNNC_EVENT_X86_SIMD
  if (g_avx512) SNNC_PRUNED_PICK(block_avx512)
  if (g_avx2) SNNC_PRUNED_PICK(block_avx2)
#endif
  SNNC_PRUNED_PICK(block_portable)
#undef SNNC_PRUNED_PICK
}

}  // namespace pruned

// x: [N, C, H, W] float32 (or uint8 with scale [C]); out: [N, O, OH, OW]; w_off: int64 [O + 1];
// w_ct: int32 [nnz], c * KH * KW + ky * KW + kx of each nonzero weight (global input channel c),
// ordered per output channel by tap, then c; w_val: float32 [nnz]; bias: float32 [O] or 0.
void conv2d_pruned(uintptr_t x, uintptr_t out, uintptr_t bias, uintptr_t w_off, uintptr_t w_ct, uintptr_t w_val,
                   int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t OH, int64_t OW, int64_t KH,
                   int64_t KW, int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t dh, int64_t dw, int threads,
                   uintptr_t scale) {
  // the padded extent the outputs read, and at least the input (trailing pads may cut it off)
  const int64_t Hp = std::max((OH - 1) * sh + (KH - 1) * dh + 1, pt + H);
  const int64_t Wp = std::max((OW - 1) * sw + (KW - 1) * dw + 1, pl + W);
  const int64_t Hq = (Hp + sh - 1) / sh, Wq = (Wp + sw - 1) / sw, phase = Hq * Wq, per_channel = sh * sw * phase;
  const int64_t width = pruned::vector_width();
  const int64_t vectors = (OH * Wq + width - 1) / width, plane = vectors * width;
  // blocks of kMaxVectors vectors, the last one possibly shorter
  const pruned::BlockFn full_block = pruned::pick(pruned::kMaxVectors),
                        last_block = pruned::pick(static_cast<int>((vectors - 1) % pruned::kMaxVectors + 1));
  // the last block reads up to a vector and a row past a phase plane: zeros, never written
  const int64_t xp_size = C * per_channel + width + Wq;
  if (xp_size >= (int64_t{1} << 31)) throw std::invalid_argument("conv2d_pruned: input too large for 32-bit offsets");
  const Input xin = input_at(x, scale);
  const int64_t* offp = addr<const int64_t>(w_off);
  const int32_t* ctp = addr<const int32_t>(w_ct);
  const float* valp = addr<const float>(w_val);
  const float* bp = bias ? addr<const float>(bias) : nullptr;
  float* op = addr<float>(out);
  const int64_t nnz = offp[O], taps = KH * KW;
  std::vector<int32_t> src(static_cast<size_t>(nnz));
  for (int64_t k = 0; k < nnz; ++k) {
    const int64_t c = ctp[k] / taps, ty = ctp[k] % taps / KW * dh, tx = ctp[k] % KW * dw;
    src[k] = static_cast<int32_t>(c * per_channel + ((ty % sh) * sw + tx % sw) * phase + ty / sh * Wq + tx / sw);
  }
  // where input pixel p = iy * W + ix lands in its channel's phase planes
  const int64_t HW = H * W;
  std::vector<int32_t> place(static_cast<size_t>(HW));
  for (int64_t iy = 0; iy < H; ++iy)
    for (int64_t ix = 0; ix < W; ++ix)
      place[iy * W + ix] = static_cast<int32_t>(((iy + pt) % sh * sw + (ix + pl) % sw) * phase +
                                                (iy + pt) / sh * Wq + (ix + pl) / sw);
  const int64_t in_size = C * HW, out_size = O * OH * OW;
  py::gil_scoped_release release;
#pragma omp parallel num_threads(std::max(1, threads)) if (N > 1)
  {
    // xp stays zero but for the current sample's nonzero inputs, which are cleared after it:
    // placing a sample costs a scan and work per spike, not per pixel
    std::vector<float> xp(static_cast<size_t>(xp_size), 0.0f), plane_out(static_cast<size_t>(plane)),
        val(static_cast<size_t>(HW + ::Scratch::kPad));
    std::vector<int32_t> pos(static_cast<size_t>(HW + 32)), placed(static_cast<size_t>(in_size + 1));
    int64_t n_placed = 0;
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t k = 0; k < n_placed; ++k) xp[placed[k]] = 0.0f;
      n_placed = 0;
      for (int64_t c = 0; c < C; ++c) {
        const int64_t at = n * in_size + c * HW, base = c * per_channel;
        const bool binary = xin.binary();
        const int64_t m = binary ? pruned::nonzero_bytes(xin.spikes + at, HW, pos.data())
                                 : compact(xin.values + at, HW, pos.data(), val.data());
        for (int64_t e = 0; e < m; ++e) {
          const int32_t q = static_cast<int32_t>(base + place[pos[e]]);
          xp[q] = binary ? xin.scale[c] : val[e];
          placed[n_placed++] = q;
        }
      }
      for (int64_t o = 0; o < O; ++o) {
        const int64_t lo = offp[o], hi = offp[o + 1];
        const float b = bp ? bp[o] : 0.0f;
        for (int64_t v0 = 0; v0 < vectors; v0 += pruned::kMaxVectors) {
          const pruned::BlockFn run = vectors - v0 >= pruned::kMaxVectors ? full_block : last_block;
          run(xp.data() + v0 * width, src.data() + lo, valp + lo, hi - lo, b, plane_out.data() + v0 * width);
        }
        float* __restrict dst = op + n * out_size + o * OH * OW;
        const float* __restrict from = plane_out.data();
        for (int64_t oy = 0; oy < OH; ++oy)  // short rows (masked vector stores were slower)
          for (int64_t ox = 0; ox < OW; ++ox) dst[oy * OW + ox] = from[oy * Wq + ox];
      }
    }
  }
}

// ---- 2×2 max pooling of spike maps (between the event-driven layers) ---------------------------
//
// Runs body(p0, p1) on each OpenMP thread for its share [p0, p1) of `planes` planes (contiguous,
// in order), in parallel only when `work` (elements touched) is worth the threads' start-up.
template <typename Body>
void over_planes(int64_t planes, int64_t work, int64_t min_work, int threads, Body body) {
  py::gil_scoped_release release;
#pragma omp parallel num_threads(std::max(1, threads)) if (work > min_work)
  {
#ifdef _OPENMP
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    const int64_t t = 0, nt = 1;
#endif
    body(planes * t / nt, planes * (t + 1) / nt);
  }
}

// x float32 [planes, H, W] -> out [planes, H / 2, W / 2] (stride 2, no padding, floor): a max of
// four, NaN-propagating as max_pool2d is. The digits CNN's pools read 16 MiB of spikes the neuron
// kernel streamed to memory: torch's strided elementwise maxima took 1.3 ms there, this 0.7.

inline float max_nan(float a, float b) { return (a > b || a != a) ? a : b; }

void max_pool_2x2_portable(const float* xp, float* op, int64_t p0, int64_t p1, int64_t H, int64_t W) {
  const int64_t OH = H / 2, OW = W / 2;
  for (int64_t p = p0; p < p1; ++p)
    for (int64_t oy = 0; oy < OH; ++oy) {
      const float* r0 = xp + (p * H + 2 * oy) * W;
      const float* r1 = r0 + W;
      float* o = op + (p * OH + oy) * OW;
      for (int64_t ox = 0; ox < OW; ++ox)
        o[ox] = max_nan(max_nan(r0[2 * ox], r0[2 * ox + 1]), max_nan(r1[2 * ox], r1[2 * ox + 1]));
    }
}

#ifdef SNNC_EVENT_X86_SIMD
// max(a, b) per lane, NaN where either is (maxps alone returns its second operand then)
__attribute__((target("avx2"))) inline __m256 max_nan_avx2(__m256 a, __m256 b) {
  return _mm256_blendv_ps(_mm256_max_ps(a, b), _mm256_add_ps(a, b), _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
}

__attribute__((target("avx2"))) void max_pool_2x2_avx2(const float* xp, float* op, int64_t p0, int64_t p1, int64_t H,
                                                       int64_t W) {
  const int64_t OH = H / 2, OW = W / 2;
  const __m256i pack = _mm256_setr_epi32(0, 1, 4, 5, 0, 1, 4, 5);
  for (int64_t p = p0; p < p1; ++p)
    for (int64_t oy = 0; oy < OH; ++oy) {
      const float* r0 = xp + (p * H + 2 * oy) * W;
      const float* r1 = r0 + W;
      float* o = op + (p * OH + oy) * OW;
      int64_t ox = 0;
      for (; ox + 4 <= OW; ox += 4) {  // 8 columns of the two rows -> 4 outputs
        const __m256 m = max_nan_avx2(_mm256_loadu_ps(r0 + 2 * ox), _mm256_loadu_ps(r1 + 2 * ox));
        const __m256 r = max_nan_avx2(_mm256_shuffle_ps(m, m, 0x88), _mm256_shuffle_ps(m, m, 0xDD));
        _mm_storeu_ps(o + ox, _mm256_castps256_ps128(_mm256_permutevar8x32_ps(r, pack)));
      }
      for (; ox < OW; ++ox)
        o[ox] = max_nan(max_nan(r0[2 * ox], r0[2 * ox + 1]), max_nan(r1[2 * ox], r1[2 * ox + 1]));
    }
}
#endif

void max_pool_2x2(uintptr_t x, uintptr_t out, int64_t planes, int64_t H, int64_t W, int threads) {
  const float* xp = addr<const float>(x);
  float* op = addr<float>(out);
  over_planes(planes, planes * H * W, 1 << 16, threads, [&](int64_t p0, int64_t p1) {
#ifdef SNNC_EVENT_X86_SIMD
    if (g_avx2)
      max_pool_2x2_avx2(xp, op, p0, p1, H, W);
    else
#endif
      max_pool_2x2_portable(xp, op, p0, p1, H, W);
  });
}

// Running sums over the time axis, summed in double and rounded per step: out[t] =
// float(carry + x[0] + ... + x[t]) (+ init, in float). Each thread sums a block of columns down the
// steps; torch's cumsum along the leading axis ran 3-17x slower than a copy of the same tensor.
static void running_sums_impl(const float* xp, const float* ip, double* cp, float* op, int64_t T, int64_t N,
                              int threads) {
  constexpr int64_t kCols = 2048;  // 16 KiB of double sums per block
  const int64_t blocks = (N + kCols - 1) / kCols;
  py::gil_scoped_release release;
#pragma omp parallel for num_threads(std::max(1, threads)) schedule(static) if (T * N > (1 << 16))
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t i0 = b * kCols, n = std::min(kCols, N - i0);
    double acc[kCols];
    if (cp) std::copy(cp + i0, cp + i0 + n, acc);
    else std::fill(acc, acc + n, 0.0);
    for (int64_t t = 0; t < T; ++t) {
      const float* xt = xp + t * N + i0;
      float* ot = op + t * N + i0;
      if (ip) {
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
          acc[i] += static_cast<double>(xt[i]);
          ot[i] = static_cast<float>(acc[i]) + ip[i0 + i];
        }
      } else {
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
          acc[i] += static_cast<double>(xt[i]);
          ot[i] = static_cast<float>(acc[i]);
        }
      }
    }
    if (cp) std::copy(acc, acc + n, cp + i0);
  }
}

// out[t] = float(x[0] + ... + x[t], summed in double) + init: what torch's `x.cumsum(0) + init`
// gives on the CPU (its cumsum accumulates float in double and rounds each prefix), bit for bit.
void cumsum_steps(uintptr_t x, uintptr_t init, uintptr_t out, int64_t T, int64_t N, int threads) {
  if (T < 0 || N < 0) throw std::invalid_argument("cumsum_steps: bad sizes");
  running_sums_impl(addr<const float>(x), addr<const float>(init), nullptr, addr<float>(out), T, N, threads);
}

// Running sums continued from a double carry [N] (updated to the last sum): out[t] =
// float(carry + x[0] + ... + x[t]) in double. The same double additions whether the steps come in
// one call or in chunks, so an analog island's running mean does not depend on the chunking, and
// spike sums (exact in double) of equal counts stay equal whatever their timing: ties stay ties.
void cumsum_steps_carried(uintptr_t x, uintptr_t carry, uintptr_t out, int64_t T, int64_t N, int threads) {
  if (T < 0 || N < 0) throw std::invalid_argument("cumsum_steps_carried: bad sizes");
  running_sums_impl(addr<const float>(x), nullptr, addr<double>(carry), addr<float>(out), T, N, threads);
}

// Rate max pooling for training (GraphNet, snnc finetune), 2x2, stride 2, no padding, floor:
// out_t = P_t - P_{t-1}, P_t the window maxima of the running sums c_t = x_0 + ... + x_t, with the
// gradient of the composition torch's autograd differentiates (cumsum, max over row pairs then
// over column pairs, diff) bit for bit: running sums in double (torch's CPU cumsum accumulates
// float in double), a tie splits the gradient in halves at each of the two maxima, a NaN passes
// it whole to both. The forward keeps one byte per window and step (which of its four inputs gets
// the gradient, halved how often) instead of the T-fold running sums; the backward walks time
// backwards with the suffix sums in double. In torch the composition took a third of a digits
// CNN fine-tuning step (strided elementwise maxima and their where/masked_fill backward, flips).
//
// x [T, M, H, W] -> out [T, M, H/2, W/2], codes uint8 [T, M, H/2, W/2]: 2 bits per input of the
// window (a00, a01, a10, a11): 0 = whole gradient, 1 = half, 2 = quarter, 3 = none.
namespace ratepool {

// the gradient each of a, b gets from max(a, b): 0 whole, 1 half, 3 none (torch.maximum's rule)
inline int share(float a, float b, bool first) {
  if (a == b) return 1;
  if (a != a || b != b) return 0;  // unordered: both get the whole gradient
  return ((a > b) == first) ? 0 : 3;
}

inline int combine(int row, int col) { return (row == 3 || col == 3) ? 3 : row + col; }

void forward_planes(const float* x, float* out, uint8_t* codes, int64_t T, int64_t M, int64_t H, int64_t W,
                    int64_t m0, int64_t m1) {
  const int64_t OH = H / 2, OW = W / 2, plane = H * W, oplane = OH * OW;
  std::vector<double> sums(plane);
  std::vector<float> c(plane), prev(oplane);
  for (int64_t m = m0; m < m1; ++m) {
    std::fill(sums.begin(), sums.end(), 0.0);
    std::fill(prev.begin(), prev.end(), 0.0f);
    for (int64_t t = 0; t < T; ++t) {
      const float* xt = x + (t * M + m) * plane;
      for (int64_t i = 0; i < plane; ++i) {
        sums[i] += static_cast<double>(xt[i]);
        c[i] = static_cast<float>(sums[i]);
      }
      float* ot = out + (t * M + m) * oplane;
      uint8_t* ct = codes + (t * M + m) * oplane;
      for (int64_t oy = 0; oy < OH; ++oy)
        for (int64_t ox = 0; ox < OW; ++ox) {
          const float a00 = c[2 * oy * W + 2 * ox], a01 = c[2 * oy * W + 2 * ox + 1];
          const float a10 = c[(2 * oy + 1) * W + 2 * ox], a11 = c[(2 * oy + 1) * W + 2 * ox + 1];
          const float r0 = max_nan(a00, a10), r1 = max_nan(a01, a11), p = max_nan(r0, r1);
          const int c0 = share(r0, r1, true), c1 = share(r0, r1, false);
          const int64_t o = oy * OW + ox;
          ct[o] = static_cast<uint8_t>(combine(share(a00, a10, true), c0) | combine(share(a01, a11, true), c1) << 2 |
                                       combine(share(a00, a10, false), c0) << 4 |
                                       combine(share(a01, a11, false), c1) << 6);
          ot[o] = p - prev[o];
          prev[o] = p;
        }
    }
  }
}

inline float routed(float g, int code) {
  if (code == 3) return 0.0f;
  if (code >= 1) g *= 0.5f;
  if (code == 2) g *= 0.5f;
  return g;
}

void backward_planes(const float* grad, const uint8_t* codes, float* gx, int64_t T, int64_t M, int64_t H, int64_t W,
                     int64_t m0, int64_t m1) {
  const int64_t OH = H / 2, OW = W / 2, plane = H * W, oplane = OH * OW;
  std::vector<double> sums(plane);
  std::vector<float> gc(plane, 0.0f);  // the running sums' gradient at one step; odd edges stay 0
  for (int64_t m = m0; m < m1; ++m) {
    std::fill(sums.begin(), sums.end(), 0.0);
    for (int64_t t = T - 1; t >= 0; --t) {
      const float* gt = grad + (t * M + m) * oplane;
      const float* gn = t + 1 < T ? grad + ((t + 1) * M + m) * oplane : nullptr;
      const uint8_t* ct = codes + (t * M + m) * oplane;
      for (int64_t oy = 0; oy < OH; ++oy)
        for (int64_t ox = 0; ox < OW; ++ox) {
          const int64_t o = oy * OW + ox, i = 2 * oy * W + 2 * ox;
          const float gp = gn ? gt[o] - gn[o] : gt[o];  // diff's gradient
          const int code = ct[o];
          gc[i] = routed(gp, code & 3);
          gc[i + 1] = routed(gp, code >> 2 & 3);
          gc[i + W] = routed(gp, code >> 4 & 3);
          gc[i + W + 1] = routed(gp, code >> 6 & 3);
        }
      float* gxt = gx + (t * M + m) * plane;
      for (int64_t i = 0; i < plane; ++i) {  // cumsum's gradient: suffix sums over time
        sums[i] += static_cast<double>(gc[i]);
        gxt[i] = static_cast<float>(sums[i]);
      }
    }
  }
}

}  // namespace ratepool

void rate_max_pool_2x2_forward(uintptr_t x, uintptr_t out, uintptr_t codes, int64_t T, int64_t M, int64_t H, int64_t W,
                               int threads) {
  const float* xp = addr<const float>(x);
  float* op = addr<float>(out);
  uint8_t* cp = addr<uint8_t>(codes);
  over_planes(M, T * M * H * W, 1 << 15, threads,
                        [&](int64_t m0, int64_t m1) { ratepool::forward_planes(xp, op, cp, T, M, H, W, m0, m1); });
}

void rate_max_pool_2x2_backward(uintptr_t grad, uintptr_t codes, uintptr_t gx, int64_t T, int64_t M, int64_t H,
                                int64_t W, int threads) {
  const float* gp = addr<const float>(grad);
  const uint8_t* cp = addr<const uint8_t>(codes);
  float* gxp = addr<float>(gx);
  over_planes(M, T * M * H * W, 1 << 15, threads,
                        [&](int64_t m0, int64_t m1) { ratepool::backward_planes(gp, cp, gxp, T, M, H, W, m0, m1); });
}

// Rate max pooling in the spiking runtime (runtime/snn.py, _rate_maxpool) for spike inputs: per
// step, each input's running spike count c += (s != 0), each window's largest count P, and the
// output (P - P_prev) * theta[channel]: the increments of the window's largest running count,
// i.e. spikes of theta. Counts are integers, exact in float32, so the result equals the torch
// composition (cumsum, max pooling, diff, multiply) bit for bit; torch's cumsum along the time
// axis alone took half of the digits CNN's run time. Any 2-D window: kernel KH x KW, stride
// SH x SW, begin pads PT, PL (padding never wins a max: windows are clipped to the input), OH x OW
// outputs as the caller computed them (floor or ceil mode), dilation 1. The running counts and
// last maxima come in (sums_in [M, H, W], prev_in [M, OH, OW]; 0 = start from zero) and go out
// in new buffers, so a chunked run carries them.
//
// s [T, M, H, W] float32 (M = batch x C), theta [theta_period] (plane m uses theta[m % period]),
// out [T, M, OH, OW].
void rate_max_pool_steps(uintptr_t s, uintptr_t theta, int64_t theta_period, uintptr_t sums_in, uintptr_t prev_in,
                         uintptr_t out, uintptr_t sums_out, uintptr_t prev_out, int64_t T, int64_t M, int64_t H,
                         int64_t W, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PT, int64_t PL, int64_t OH,
                         int64_t OW, int threads) {
  if (T < 0 || M < 0 || H < 1 || W < 1 || KH < 1 || KW < 1 || SH < 1 || SW < 1 || OH < 0 || OW < 0 ||
      theta_period < 1)
    throw std::invalid_argument("rate_max_pool_steps: bad sizes");
  const float* sp = addr<const float>(s);
  const float* th = addr<const float>(theta);
  const float* si = addr<const float>(sums_in);
  const float* pi = addr<const float>(prev_in);
  float* op = addr<float>(out);
  float* so = addr<float>(sums_out);
  float* po = addr<float>(prev_out);
  const int64_t plane = H * W, oplane = OH * OW;
  // a thread's planes are contiguous at every step: its counts and maxima live in the output
  // state buffers, and each step is a few long loops over all of them (planes are small: a
  // per-plane loop nest spent its time entering loops)
  over_planes(M, T * M * plane, 1 << 15, threads, [&](int64_t m0, int64_t m1) {
    const int64_t planes = m1 - m0;
    float* c = so + m0 * plane;
    float* prev = po + m0 * oplane;
    if (si) std::copy(si + m0 * plane, si + m1 * plane, c);
    else std::fill(c, c + planes * plane, 0.0f);
    if (pi) std::copy(pi + m0 * oplane, pi + m1 * oplane, prev);
    else std::fill(prev, prev + planes * oplane, 0.0f);
    const bool pairs = KH == 2 && KW == 2 && SH == 2 && SW == 2 && PT == 0 && PL == 0 && 2 * OH <= H && 2 * OW <= W;
    for (int64_t t = 0; t < T && planes > 0; ++t) {
      const float* st = sp + (t * M + m0) * plane;
      const int64_t n = planes * plane;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) c[i] += st[i] != 0.0f ? 1.0f : 0.0f;
      float* ot = op + (t * M + m0) * oplane;
      for (int64_t m = 0; m < planes; ++m) {
        const float unit = th[(m0 + m) % theta_period];
        const float* cm = c + m * plane;
        float* pm = prev + m * oplane;
        float* om = ot + m * oplane;
        if (pairs) {  // 2x2, stride 2, no padding: the common case, no window bounds
          for (int64_t oy = 0; oy < OH; ++oy) {
            const float* r0 = cm + 2 * oy * W;
            const float* r1 = r0 + W;
            float* pr = pm + oy * OW;
            float* orow = om + oy * OW;
#pragma omp simd
            for (int64_t ox = 0; ox < OW; ++ox) {
              const float best = std::max(std::max(r0[2 * ox], r0[2 * ox + 1]), std::max(r1[2 * ox], r1[2 * ox + 1]));
              orow[ox] = (best - pr[ox]) * unit;
              pr[ox] = best;
            }
          }
          continue;
        }
        for (int64_t oy = 0; oy < OH; ++oy) {
          const int64_t y0 = std::max<int64_t>(0, oy * SH - PT), y1 = std::min<int64_t>(H, oy * SH - PT + KH);
          for (int64_t ox = 0; ox < OW; ++ox) {
            const int64_t x0 = std::max<int64_t>(0, ox * SW - PL), x1 = std::min<int64_t>(W, ox * SW - PL + KW);
            float best = -std::numeric_limits<float>::infinity();
            for (int64_t y = y0; y < y1; ++y)
              for (int64_t x = x0; x < x1; ++x) best = std::max(best, cm[y * W + x]);
            const int64_t o = oy * OW + ox;
            om[o] = (best - pm[o]) * unit;
            pm[o] = best;
          }
        }
      }
    }
  });
}

// The number of nonzero entries of x[0..n) (NaN counts), float32 or (bytes) uint8: what --exec
// auto reads per chunk to pick a form. torch.count_nonzero took 0.6 ms on a 256K-entry chunk,
// more than the choice saved.
int64_t count_nonzero(uintptr_t x, int64_t n, int threads, bool bytes) {
  int64_t total = 0;
  py::gil_scoped_release release;
  if (bytes) {
    const uint8_t* xb = addr<const uint8_t>(x);
#pragma omp parallel for num_threads(std::max(1, threads)) if (n > (1 << 22)) reduction(+ : total) schedule(static)
    for (int64_t i = 0; i < n; ++i) total += xb[i] != 0;
    return total;
  }
  const float* xp = addr<const float>(x);
#pragma omp parallel for num_threads(std::max(1, threads)) if (n > (1 << 20)) reduction(+ : total) schedule(static)
  for (int64_t i = 0; i < n; ++i) total += !(xp[i] == 0.0f);
  return total;
}

// Instruction-set selection, named as the neuron kernel's (lif_cpu.cpp): baseline (portable
// loops), avx2 (the gather form's AVX2+FMA micro-kernels) and avx512 (every SIMD path).
std::vector<std::string> supported_isas() {
  std::vector<std::string> names{"baseline"};
#ifdef SNNC_EVENT_X86_SIMD
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) names.push_back("avx2");
  if (__builtin_cpu_supports("avx512f")) names.push_back("avx512");
#endif
  return names;
}

std::string isa() {
#ifdef SNNC_EVENT_X86_SIMD
  if (g_avx512) return "avx512";
  if (g_avx2) return "avx2";
#endif
  return "baseline";
}

void set_isa(const std::string& name) {
  const auto names = supported_isas();
  if (std::find(names.begin(), names.end(), name) == names.end())
    throw std::invalid_argument("isa: '" + name + "' is not one this build and CPU run");
#ifdef SNNC_EVENT_X86_SIMD
  g_avx512 = name == "avx512";
  g_avx2 = name != "baseline";
#endif
}

}  // namespace

PYBIND11_MODULE(_event_cpu, m) {
  m.doc() = "Event-driven conv2d/linear over contiguous float32 buffers given by address";
  m.def("conv2d", &conv2d,
        "Scatter the nonzero inputs of x [N,C,H,W] through CSR-compressed weights into out [N,O,OH,OW]; "
        "returns the number of nonzero inputs",
        py::arg("x"), py::arg("out"), py::arg("bias"), py::arg("w_off"), py::arg("w_idx"), py::arg("w_val"),
        py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("O"), py::arg("OH"), py::arg("OW"),
        py::arg("KH"), py::arg("KW"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("dh"),
        py::arg("dw"), py::arg("threads"), py::arg("scale") = 0);
  m.def("conv2d_gather", &conv2d_gather,
        "Gather form: for each output pixel and tile of output channels, sum value x packed weight row over "
        "the nonzero inputs its taps reach; wp [KH*KW, C, Opad]; returns the number of nonzero inputs",
        py::arg("x"), py::arg("out"), py::arg("bias"), py::arg("wp"), py::arg("N"), py::arg("C"), py::arg("H"),
        py::arg("W"), py::arg("O"), py::arg("Opad"), py::arg("OH"), py::arg("OW"), py::arg("KH"), py::arg("KW"),
        py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("dh"), py::arg("dw"),
        py::arg("threads"), py::arg("scale") = 0);
  m.def("conv2d_pruned", &conv2d_pruned,
        "Pruned form: per output channel, its nonzero weights each adding weight x the shifted, zero-padded "
        "input plane (split by stride phase); w_off [O+1], w_ct [nnz] (c*KH*KW + tap), w_val [nnz]",
        py::arg("x"), py::arg("out"), py::arg("bias"), py::arg("w_off"), py::arg("w_ct"), py::arg("w_val"),
        py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("O"), py::arg("OH"), py::arg("OW"),
        py::arg("KH"), py::arg("KW"), py::arg("sh"), py::arg("sw"), py::arg("pt"), py::arg("pl"), py::arg("dh"), py::arg("dw"),
        py::arg("threads"), py::arg("scale") = 0);
  m.def("max_pool_2x2", &max_pool_2x2,
        "2x2 max pooling, stride 2, no padding, of float32 [planes,H,W] into out [planes,H/2,W/2] (NaN propagates)",
        py::arg("x"), py::arg("out"), py::arg("planes"), py::arg("H"), py::arg("W"), py::arg("threads"));
  m.def("rate_max_pool_2x2_forward", &rate_max_pool_2x2_forward,
        "Rate max pooling 2x2 of float32 [T,M,H,W] (window maxima of running sums, differenced over time) into "
        "out [T,M,H/2,W/2] and the gradient routing codes (uint8, same shape)",
        py::arg("x"), py::arg("out"), py::arg("codes"), py::arg("T"), py::arg("M"), py::arg("H"), py::arg("W"),
        py::arg("threads"));
  m.def("rate_max_pool_2x2_backward", &rate_max_pool_2x2_backward,
        "The gradient of rate_max_pool_2x2_forward: float32 grad [T,M,H/2,W/2] and its codes into gx [T,M,H,W]",
        py::arg("grad"), py::arg("codes"), py::arg("gx"), py::arg("T"), py::arg("M"), py::arg("H"), py::arg("W"),
        py::arg("threads"));
  m.def("cumsum_steps", &cumsum_steps,
        "Running sums of float32 [T,N] over T (in double, rounded per step) plus init [N] (0 = none) into out",
        py::arg("x"), py::arg("init"), py::arg("out"), py::arg("T"), py::arg("N"), py::arg("threads"));
  m.def("cumsum_steps_carried", &cumsum_steps_carried,
        "Running sums of float32 [T,N] over T in double, continued from and written back to the double carry [N], "
        "each rounded to float32 into out",
        py::arg("x"), py::arg("carry"), py::arg("out"), py::arg("T"), py::arg("N"), py::arg("threads"));
  m.def("rate_max_pool_steps", &rate_max_pool_steps,
        "The runtime's rate max pooling of spikes float32 [T,M,H,W]: running counts, window maxima, increments "
        "times theta, with the counts and maxima carried in and out",
        py::arg("s"), py::arg("theta"), py::arg("theta_period"), py::arg("sums_in"), py::arg("prev_in"), py::arg("out"),
        py::arg("sums_out"), py::arg("prev_out"), py::arg("T"), py::arg("M"), py::arg("H"), py::arg("W"), py::arg("KH"),
        py::arg("KW"), py::arg("SH"), py::arg("SW"), py::arg("PT"), py::arg("PL"), py::arg("OH"), py::arg("OW"),
        py::arg("threads"));
  m.def("count_nonzero", &count_nonzero, "The number of nonzero entries of a contiguous float32 (or uint8) buffer",
        py::arg("x"), py::arg("n"), py::arg("threads"), py::arg("bytes") = false);
  m.def("has_openmp", &snnc::has_openmp, "Whether the extension was built with OpenMP");
  m.def("simd", [] {
#ifdef SNNC_EVENT_X86_SIMD
    return g_avx512 || g_avx2;
#else
    return false;
#endif
  }, "Whether SIMD paths run (AVX-512 for both forms, or AVX2 with FMA for the gather form)");
  m.def("set_simd", [](bool on) { set_isa(on ? supported_isas().back() : "baseline"); },
        "The best instruction set the CPU has (true) or the portable loops (false)", py::arg("on"));
  m.def("isa", &isa, "The instruction set the kernels run with: baseline, avx2 or avx512");
  m.def("supported_isas", &supported_isas, "Instruction sets this build has and this CPU runs, slowest first");
  m.def("set_isa", &set_isa, "Run the kernels with this instruction set (one of supported_isas())", py::arg("name"));
}
