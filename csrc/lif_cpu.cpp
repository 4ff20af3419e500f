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

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <stdexcept>
#include <vector>

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
  int64_t x_step;  // floats between x[t] and x[t + 1]: N, or 0 for an input constant over time
};

inline void load_block(const Params& p, const float* v0, int64_t n0, int64_t nb, float* v, float* th) {
  std::copy(v0 + n0, v0 + n0 + nb, v);
  if (p.theta_period == 1) {
    std::fill(th, th + nb, p.theta[0]);
    return;
  }
  // Walk (n / inner, n % inner) incrementally: one division per block, not per neuron.
  int64_t q = (n0 / p.theta_inner) % p.theta_period, r = n0 % p.theta_inner;
  for (int64_t i = 0; i < nb;) {
    const int64_t run = std::min(nb - i, p.theta_inner - r);
    std::fill(th + i, th + i + run, p.theta[q]);
    i += run;
    r = 0;
    q = q + 1 == p.theta_period ? 0 : q + 1;
  }
}

// Returns the block's number of spikes with a nonzero value (s = 1 and theta != 0): the runtime's
// firing-rate count, fused here because a separate pass over the spikes costs half the kernel.
template <bool DECAY, bool HARD, int FMT>
int64_t forward_block(const Params& p, const float* x, const float* v0, void* out, float* vout,
                      int64_t n0, int64_t nb) {
  alignas(64) float v[kBlock];
  alignas(64) float th[kBlock];
  alignas(64) uint8_t s8[kBlock];
  load_block(p, v0, n0, nb, v, th);
  const int64_t nbytes = (nb + 7) / 8;
  for (int64_t i = nb; i < nbytes * 8; ++i) s8[i] = 0;  // padding bits of the last byte stay 0
  const float decay = p.decay, vr = p.v_reset;
  int64_t total = 0;
  for (int64_t t = 0; t < p.T; ++t) {
    const float* xt = x + t * p.x_step + n0;
    float* of = static_cast<float*>(out) + t * p.N + n0;
    uint8_t* ob = static_cast<uint8_t*>(out) + t * p.N + n0;
    int32_t count = 0;  // at most kBlock spikes per step; the total over steps is int64
#pragma omp simd reduction(+ : count)
    for (int64_t i = 0; i < nb; ++i) {
      const float h = DECAY ? v[i] * decay + xt[i] : v[i] + xt[i];
      const float t_i = th[i];
      const bool s = h >= t_i;
      const float after = HARD ? vr : h - t_i;
      if constexpr (FMT == kValue) of[i] = s ? t_i : 0.0f;
      if constexpr (FMT == kBinary) ob[i] = s ? 1 : 0;
      if constexpr (FMT == kPacked) s8[i] = s ? 1 : 0;
      count += (s && t_i != 0.0f) ? 1 : 0;
      v[i] = s ? after : h;
    }
    total += count;
    if (FMT == kPacked) {
      uint8_t* op = static_cast<uint8_t*>(out) + t * ((p.N + 7) / 8) + n0 / 8;
      for (int64_t j = 0; j < nbytes; ++j) {
        const uint8_t* b = s8 + 8 * j;
        op[j] = static_cast<uint8_t>(b[0] | (b[1] << 1) | (b[2] << 2) | (b[3] << 3) | (b[4] << 4) |
                                     (b[5] << 5) | (b[6] << 6) | (b[7] << 7));
      }
    }
  }
  for (int64_t i = 0; i < nb; ++i) vout[n0 + i] = v[i];
  return total;
}

template <int SG>
inline float surrogate_grad(float u, float alpha) {
  if (SG == kTriangle) return std::max(0.0f, alpha - alpha * alpha * std::fabs(u));
  if (SG == kAtan) {
    const float z = static_cast<float>(M_PI / 2) * alpha * u;
    return (alpha / 2) / (1.0f + z * z);
  }
  const float sg = 1.0f / (1.0f + std::exp(-alpha * u));
  return alpha * sg * (1.0f - sg);
}

template <bool DECAY, bool HARD, bool DETACH, int SG>
void backward_block(const Params& p, const float* x, const float* v0, const float* gy, const float* gv,
                    float* gx, float* gv0, float* gth, int64_t n0, int64_t nb, float* hbuf) {
  alignas(64) float v[kBlock];
  alignas(64) float th[kBlock];
  alignas(64) float acc[kBlock];
  load_block(p, v0, n0, nb, v, th);
  const float decay = p.decay, vr = p.v_reset, alpha = p.alpha;
  for (int64_t t = 0; t < p.T; ++t) {  // recompute, identical to the forward
    const float* xt = x + t * p.N + n0;
    float* ht = hbuf + t * nb;
#pragma omp simd
    for (int64_t i = 0; i < nb; ++i) {
      const float h = DECAY ? v[i] * decay + xt[i] : v[i] + xt[i];
      ht[i] = h;
      v[i] = h >= th[i] ? (HARD ? vr : h - th[i]) : h;
    }
  }
  float* g = v;  // reuse: the membrane is no longer needed
  for (int64_t i = 0; i < nb; ++i) {
    g[i] = gv ? gv[n0 + i] : 0.0f;
    acc[i] = 0.0f;
  }
  for (int64_t t = p.T - 1; t >= 0; --t) {
    const float* ht = hbuf + t * nb;
    const float* gyt = gy ? gy + t * p.N + n0 : nullptr;
    float* gxt = gx + t * p.N + n0;
    for (int64_t i = 0; i < nb; ++i) {
      const float h = ht[i];
      const float sg = surrogate_grad<SG>(h - th[i], alpha);
      const float s = h >= th[i] ? 1.0f : 0.0f;
      float dvdh, dvdth;
      if (HARD) {
        dvdh = DETACH ? 1.0f - s : (1.0f - s) + (vr - h) * sg;
        dvdth = DETACH ? 0.0f : -((vr - h) * sg);
      } else {
        dvdh = DETACH ? 1.0f : 1.0f - th[i] * sg;
        dvdth = DETACH ? -s : th[i] * sg - s;
      }
      float gh = g[i] * dvdh;
      float ga = g[i] * dvdth;
      if (gyt) {
        gh = gh + gyt[i] * th[i] * sg;
        ga = ga + gyt[i] * (s - th[i] * sg);
      }
      gxt[i] = gh;
      acc[i] += ga;
      g[i] = DECAY ? gh * decay : gh;
    }
  }
  for (int64_t i = 0; i < nb; ++i) {
    gv0[n0 + i] = g[i];
    if (gth) gth[n0 + i] = acc[i];
  }
}

// ---- interface: raw addresses of contiguous buffers ----------------------------------------
// snncompiler/kernels/cpu.py passes tensor.data_ptr() of contiguous tensors it allocated or
// made contiguous itself, with their sizes; 0 means "absent". Zero-copy, and no torch or numpy
// types cross this boundary (a numpy view costs more than the kernel on small layers).
template <class T>
T* addr(uintptr_t a) {
  return reinterpret_cast<T*>(a);
}

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

using FwdFn = int64_t (*)(const Params&, const float*, const float*, void*, float*, int64_t, int64_t);

template <bool D, bool H>
FwdFn pick_fwd(int fmt) {
  return fmt == kValue ? forward_block<D, H, kValue> : fmt == kBinary ? forward_block<D, H, kBinary>
                                                                       : forward_block<D, H, kPacked>;
}

// Returns the number of spikes with a nonzero value (see forward_block). x_step: floats between
// time steps of x (-1: N, a dense [T, N] input; 0: one [N] input repeated at every step, as the
// runtime's first layer under direct encoding, read T times instead of copied T times).
int64_t forward(uintptr_t x, uintptr_t v0, uintptr_t theta, int64_t theta_inner, int64_t theta_period,
                uintptr_t out, uintptr_t vout, int64_t T, int64_t N, double decay, bool hard, double v_reset,
                int fmt, int threads, int64_t x_step) {
  if (fmt < kValue || fmt > kPacked) throw std::invalid_argument("spike_format: unknown code");
  if (theta_inner < 1 || theta_period < 1) throw std::invalid_argument("theta: bad layout");
  if (T < 0 || N < 0) throw std::invalid_argument("T, N: must be >= 0");
  if (x_step != -1 && x_step != 0 && x_step != N) throw std::invalid_argument("x_step: must be -1, 0 or N");
  Params p{T, N, static_cast<float>(decay), static_cast<float>(v_reset), 0.0f, addr<const float>(theta),
           theta_inner, theta_period, x_step == -1 ? N : x_step};
  void* op = addr<void>(out);
  advise_hugepages(op, T * (fmt == kValue ? N * 4 : fmt == kBinary ? N : (N + 7) / 8));
  const bool dec = p.decay != 1.0f;
  const FwdFn fn = dec ? (hard ? pick_fwd<true, true>(fmt) : pick_fwd<true, false>(fmt))
                       : (hard ? pick_fwd<false, true>(fmt) : pick_fwd<false, false>(fmt));
  const float* xp = addr<const float>(x);
  const float* v0p = addr<const float>(v0);
  float* vp = addr<float>(vout);
  py::gil_scoped_release release;
  // kBlock is a multiple of 8, so packed blocks start on byte boundaries and never share a byte.
  return parallel_blocks(N, kBlock, threads, [&](int64_t n0, int64_t nb) { return fn(p, xp, v0p, op, vp, n0, nb); });
}

using BwdFn = void (*)(const Params&, const float*, const float*, const float*, const float*, float*, float*,
                       float*, int64_t, int64_t, float*);

template <bool D, bool H, bool Det>
BwdFn pick_bwd(int sg) {
  return sg == kTriangle ? backward_block<D, H, Det, kTriangle>
         : sg == kAtan   ? backward_block<D, H, Det, kAtan>
                         : backward_block<D, H, Det, kSigmoid>;
}

template <bool D>
BwdFn pick_bwd(bool hard, bool detach, int sg) {
  return hard ? (detach ? pick_bwd<D, true, true>(sg) : pick_bwd<D, true, false>(sg))
              : (detach ? pick_bwd<D, false, true>(sg) : pick_bwd<D, false, false>(sg));
}

void backward(uintptr_t x, uintptr_t v0, uintptr_t theta, int64_t theta_inner, int64_t theta_period, uintptr_t gy,
              uintptr_t gv, uintptr_t gx, uintptr_t gv0, uintptr_t gth, int64_t T, int64_t N, double decay, bool hard,
              double v_reset, int surrogate, double alpha, bool detach, int threads) {
  if (surrogate < kTriangle || surrogate > kSigmoid) throw std::invalid_argument("surrogate: unknown code");
  if (theta_inner < 1 || theta_period < 1) throw std::invalid_argument("theta: bad layout");
  if (T < 0 || N < 0) throw std::invalid_argument("T, N: must be >= 0");
  Params p{T, N, static_cast<float>(decay), static_cast<float>(v_reset), static_cast<float>(alpha),
           addr<const float>(theta), theta_inner, theta_period, N};
  const float* xp = addr<const float>(x);
  const float* v0p = addr<const float>(v0);
  const float* gyp = addr<const float>(gy);
  const float* gvp = addr<const float>(gv);
  float* gxp = addr<float>(gx);
  float* gv0p = addr<float>(gv0);
  float* gthp = addr<float>(gth);
  advise_hugepages(gxp, T * N * 4);
  const BwdFn fn = p.decay != 1.0f ? pick_bwd<true>(hard, detach, surrogate) : pick_bwd<false>(hard, detach, surrogate);
  // The recomputed trajectory of one block, [T, block] floats, should stay in L2 (~256 KiB).
  const int64_t block = std::max<int64_t>(16, std::min<int64_t>(kBlock, (65536 / std::max<int64_t>(T, 1)) / 16 * 16));
  py::gil_scoped_release release;
#pragma omp parallel num_threads(std::max(1, threads)) if (N > block)
  {
    std::vector<float> hbuf(static_cast<size_t>(std::max<int64_t>(T, 1) * block));
    const int64_t nblocks = (N + block - 1) / block;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b)
      fn(p, xp, v0p, gyp, gvp, gxp, gv0p, gthp, b * block, std::min(block, N - b * block), hbuf.data());
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

bool has_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(_lif_cpu, m) {
  m.doc() = "Fused multi-step IF/LIF neuron kernels for CPU (see snncompiler/kernels/cpu.py)";
  m.def("forward", &forward, "Forward over [T, N] float32 buffers given by address; returns the spike count", py::arg("x"), py::arg("v0"),
        py::arg("theta"), py::arg("theta_inner"), py::arg("theta_period"), py::arg("out"), py::arg("vout"),
        py::arg("T"), py::arg("N"), py::arg("decay"), py::arg("hard"), py::arg("v_reset"), py::arg("fmt"),
        py::arg("threads"), py::arg("x_step") = -1);
  m.def("backward", &backward, "Surrogate-gradient backward, recomputing the membrane (addresses; 0 = absent)",
        py::arg("x"), py::arg("v0"), py::arg("theta"), py::arg("theta_inner"), py::arg("theta_period"),
        py::arg("grad_spikes"), py::arg("grad_v"), py::arg("grad_x"), py::arg("grad_v0"), py::arg("grad_theta"),
        py::arg("T"), py::arg("N"), py::arg("decay"), py::arg("hard"), py::arg("v_reset"), py::arg("surrogate"),
        py::arg("alpha"), py::arg("detach_reset"), py::arg("threads"));
  m.def("has_openmp", &has_openmp, "Whether the extension was built with OpenMP");
  m.def("empty", &empty, "DLPack capsule over an uninitialised buffer from the output cache", py::arg("shape"),
        py::arg("code"), py::arg("bits"));
  m.def("cache_release", [] { cache().release(); }, "Free every cached output buffer");
  m.def("cache_set_limit", [](size_t limit) { cache().set_limit(limit); },
        "Most bytes of freed output buffers kept for reuse (0: keep none)", py::arg("limit"));
  m.def("cache_stats", [] { return cache().stats(); }, "cached_bytes, cached_buffers, limit_bytes, hits, misses");
}
