// Event-driven conv2d / linear on CPU: the current from the active inputs only.
//
// A spiking layer's input is mostly zeros (a neuron emits θ or nothing), and the weights of a
// pruned layer are mostly zeros too. Dense convolution pays for every (input, weight) pair; this
// kernel pays only for pairs where both are nonzero, in scatter form:
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
// takes its own path (scatter_rows): one event list over all its inputs.
//
// Why this loop order: spikes are irregular, so a branch per event or per tap mispredicts. Here
// compaction is branch-free, and the innermost loop (one weight, all events of one tap) has no
// branch and no conflicts (a tap maps distinct inputs to distinct outputs), so its cost is the
// multiply-adds themselves; the per-(channel, tap) overhead is paid only where weights survive
// pruning.
//
// Values are summed in float32 in input order, not a dense GEMM's order, so results match
// F.conv2d within float32 summation-order error, not bit for bit. Built with -ffp-contract=off
// (setup.py) so that v * w + out stays two roundings.
//
// Layout: x [N, C, H, W] and out [N, O, OH, OW] contiguous float32, given by address (no torch
// headers, as lif_cpu.cpp). OpenMP across the samples; each thread reuses its event lists.

#include <pybind11/pybind11.h>

#include "common.h"  // after Python.h (pybind11), which must come first

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SNNC_EVENT_AVX512 1
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

#ifdef SNNC_EVENT_AVX512
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
#endif

inline void scatter_add(float* __restrict d, const int32_t* __restrict tp, const float* __restrict tv, int64_t m,
                        float w) {
#ifdef SNNC_EVENT_AVX512
  if (g_avx512) return scatter_add_avx512(d, tp, tv, m, w);
#endif
  for (int64_t e = 0; e < m; ++e) d[tp[e]] += tv[e] * w;
}

inline int64_t compact(const float* x, int64_t n, int32_t* pos, float* val) {
#ifdef SNNC_EVENT_AVX512
  if (g_avx512) return compact_avx512(x, n, pos, val);
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

struct Scratch {  // one thread's event lists, reused across sample blocks
  std::vector<int32_t> pos, sample_off, bpos, bsoff, tpos;
  std::vector<float> val, bval, tval;
  static constexpr int64_t kPad = 16;  // room for the whole-vector stores past the last event
  explicit Scratch(int64_t n)
      : pos(n + kPad), sample_off(n + kPad), bpos(n + kPad), bsoff(n + kPad), tpos(n + kPad), val(n + kPad), bval(n + kPad), tval(n + kPad) {}
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
int64_t conv_block(const float* x, float* out, int64_t S, const float* bias, const int64_t* off, const int32_t* idx,
                   const float* wval, const Geometry& g, const int32_t* target, const Buckets& bk, Scratch& s) {
  const int64_t plane = g.H * g.W, out_plane = g.OH * g.OW, taps = g.KH * g.KW;
  const int64_t in_size = g.C * plane, out_size = g.O * out_plane;
  for (int64_t n = 0; n < S; ++n) init_out(out + n * out_size, bias, g.O, out_plane);
  int64_t total = 0;
  int32_t* __restrict tp = s.tpos.data();
  float* __restrict tv = s.tval.data();
  int64_t start[65], fill[64];  // bucket b holds bpos/bval[start[b] .. start[b + 1])
  bool bucketed = bk.count > 1 && bk.count <= 64;
#ifdef SNNC_EVENT_AVX512
  if (g_avx512) bucketed = false;  // filtering all events per tap, vectorised, beat sorting them into buckets
#endif
  for (int64_t c = 0; c < g.C; ++c) {
    int64_t n = 0;
    for (int64_t i = 0; i < S; ++i) {
      const int64_t k = compact(x + i * in_size + c * plane, plane, s.pos.data() + n, s.val.data() + n);
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
#ifdef SNNC_EVENT_AVX512
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
int64_t linear_sample(const float* x, float* out, const float* bias, const int64_t* off, const int32_t* idx,
                      const float* wval, int64_t C, int64_t O, Scratch& s) {
  init_out(out, bias, O, 1);
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

// x: [N, C, H, W]; out: [N, O, OH, OW]; w_off: int64 [C*KH*KW + 1]; w_idx: int32, w_val: float32
// [nnz]; bias: float32 [O] or 0; ph, pw: the leading pads (the trailing ones only set OH, OW).
// Returns the number of nonzero inputs over the whole batch.
int64_t conv2d(uintptr_t x, uintptr_t out, uintptr_t bias, uintptr_t w_off, uintptr_t w_idx, uintptr_t w_val,
               int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t OH, int64_t OW, int64_t KH, int64_t KW,
               int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int threads) {
  const Geometry g{C, H, W, O, OH, OW, KH, KW, sh, sw, ph, pw, dh, dw};
  const bool dense_1x1 = H == 1 && W == 1 && KH == 1 && KW == 1 && OH == 1 && OW == 1;
  const std::vector<int32_t> target = dense_1x1 ? std::vector<int32_t>() : tap_targets(g);
  const Buckets buckets(dense_1x1 ? Geometry{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1} : g);
  const float* xp = addr<const float>(x);
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
    Scratch s(dense_1x1 ? C : block * H * W);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t n0 = b * block, S = std::min(block, N - n0);
      if (dense_1x1)
        total += linear_sample(xp + n0 * in_size, op + n0 * out_size, bp, offp, idxp, valp, C, O, s);
      else
        total += conv_block(xp + n0 * in_size, op + n0 * out_size, S, bp, offp, idxp, valp, g, target.data(), buckets, s);
    }
  }
  return total;
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
        py::arg("dw"), py::arg("threads"));
  m.def("has_openmp", &snnc::has_openmp, "Whether the extension was built with OpenMP");
  m.def("simd", [] {
#ifdef SNNC_EVENT_AVX512
    return g_avx512;
#else
    return false;
#endif
  }, "Whether the AVX-512 paths run");
  m.def("set_simd", [](bool on) {
#ifdef SNNC_EVENT_AVX512
    g_avx512 = on && __builtin_cpu_supports("avx512f");
#else
    (void)on;
#endif
  }, "Use the AVX-512 paths where the CPU has them (true) or the portable loops (false)", py::arg("on"));
}
