// XLA FFI CPU kernel: out (M, N) = op(a) @ op(b) for float32 a, b on Intel AMX, in "bf16x3" or
// "bf16x6" (attribute `passes`: 3 or 6).
//
// bf16x3: each float32 operand is split into two bfloat16 parts, x = hi + lo (hi = bf16(x),
// lo = bf16(x - hi)), and the product is hi_a hi_b + lo_a hi_b + hi_a lo_b, summed in float32
// by AMX's TDPBF16PS. That is JAX's `Precision.HIGH` ("bf16_3x", what TPUs run for it): about
// 16 bits of each operand's significand are kept, so the relative error is ~5e-6 where a float32
// GEMM's is ~1e-6. AMX multiplies bfloat16 tiles ~7x faster than AVX-512 runs float32 FMAs, so
// three passes still beat a float32 GEMM ~2x on the train step's shapes.
//
// bf16x6 (`Precision.HIGHEST` on TPUs): three parts x = x0 + x1 + x2 hold all 24 bits, and the
// six products x_i y_j with i + j <= 2 are summed. What it drops is ~2^-24 relative, so its
// error is a float32 GEMM's; it runs ~1.15x faster than XLA's float32 dot.
//
// op(x) is x or x^T (attributes transpose_a / transpose_b), so a backward pass needs no
// transposed copies. The work: B is split and packed once per call (column panels of 32, pairs of
// rows interleaved as AMX wants), A per block of rows and columns of K inside each thread, and a
// 32 x 32 block of the output is kept in four tile registers through a block of K. Row blocks are
// handed to the XLA intra-op thread pool; the calling thread drains them too.
//
// Built on demand by `aotd_jax/kernels/build.py`; see `amx_matmul.py`. Without AMX in the build
// (`-march=native` on a CPU that lacks it) the handler returns an error and `AotdAmxSupported`
// returns 0, so Python never calls it.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__linux__)
#define AOTD_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// A float32 matrix viewed through strides: element (r, c) is p[r * rs + c * cs].
struct View {
  const float* p;
  int64_t rs, cs, rows, cols;
  float at(int64_t r, int64_t c) const {
    return r < rows && c < cols ? p[r * rs + c * cs] : 0.f;
  }
};

inline int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Parallel loops of every call in flight, as one pool of chunks. XLA runs independent ops at
// once (gate_proj and up_proj, a layer's dx and dw), so two calls often overlap: each calling
// thread then works on both, and the cores never hold more threads than they have.
class Loops {
 public:
  struct Loop {
    std::function<void(int64_t)> fn;
    int64_t n = 0;
    std::atomic<int64_t> next{0}, done{0};
    bool RunOne() {  // runs one chunk of this loop, if one is left to take
      const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= n) return false;
      fn(i);
      done.fetch_add(1, std::memory_order_release);
      return true;
    }
    bool Finished() const { return done.load(std::memory_order_acquire) >= n; }
  };

  // Runs fn(i) for i in [0, n) on the pool's threads and the calling thread; returns when all
  // ran. The caller takes its own chunks first, then helps other loops while its last ones finish,
  // so it never waits on a pool task that has not started (no deadlock on a busy pool).
  void ParallelFor(ffi::ThreadPool& pool, int64_t n, std::function<void(int64_t)> fn) {
    auto loop = std::make_shared<Loop>();  // shared: a late helper may still look at it
    loop->fn = std::move(fn);
    loop->n = n;
    Add(loop);
    const int64_t helpers = std::min<int64_t>(n - 1, pool.num_threads() - 1);
    for (int64_t t = 0; t < helpers; ++t) pool.Schedule([this] { while (RunAny()) {} });
    while (loop->RunOne()) {}
    while (!loop->Finished()) {
      if (!RunAny()) std::this_thread::yield();
    }
    Remove(loop.get());
  }

 private:
  void Add(std::shared_ptr<Loop> loop) {
    std::lock_guard<std::mutex> lock(mu_);
    loops_.push_back(std::move(loop));
  }
  void Remove(Loop* loop) {
    std::lock_guard<std::mutex> lock(mu_);
    loops_.erase(std::find_if(loops_.begin(), loops_.end(),
                              [loop](const auto& l) { return l.get() == loop; }));
  }
  bool RunAny() {  // one chunk of any loop in flight; false if none is left to take
    std::shared_ptr<Loop> pick;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& l : loops_) {
        if (l->next.load(std::memory_order_relaxed) < l->n) {
          pick = l;
          break;
        }
      }
    }
    return pick != nullptr && pick->RunOne();
  }

  std::mutex mu_;
  std::vector<std::shared_ptr<Loop>> loops_;
};

Loops& AllLoops() {
  static Loops* loops = new Loops();  // never destroyed: pool threads may outlive static teardown
  return *loops;
}

void ParallelFor(ffi::ThreadPool& pool, int64_t n, std::function<void(int64_t)> fn) {
  AllLoops().ParallelFor(pool, n, std::move(fn));
}

#ifdef AOTD_AMX

constexpr int64_t kMc = 256;   // at most this many rows of A packed at a time (a multiple of 32)
// Columns of K per pass over the output (a multiple of 32), for kParts parts of each operand:
// the packed A block (kMc x kc x kParts bf16, 1 MB / 0.75 MB) and a B panel's slice stay in L2
// (2 MB per core on Sapphire Rapids). bf16x6 with 1024 columns (1.5 MB of A) ran its K = 1408-8192
// shapes 8-17 % slower; 256 was slower again (RESULTS.md).
template <int kParts>
constexpr int64_t KBlock() { return kParts == 3 ? 512 : 1024; }

bool OsAllowsAmx() {
  static const bool ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                                 18 /* XFEATURE_XTILEDATA */) == 0;
  return ok;
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: the 32 x 32 float32 output block; 4-5: 16 rows x 32 bf16 of A; 6-7: 16 pair-rows
// x 16 columns of B. All 16 rows of 64 bytes.
void ConfigureTiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
}

inline __m512i Bf16Bits(__m512 x) {  // round to nearest even; 16 bf16 values, widened to 32 bits
  return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x));
}

// hi = bf16(x), lo = bf16(x - hi), each as 16 values widened to 32 bits. Where hi is not finite
// (x is inf or NaN, or rounds past bf16's largest value) lo is 0 rather than inf - inf = NaN.
// Outputs are non-finite where float32's are; an inf can still come out NaN (it meets the other
// operand's lo part, whose sign is its own).
template <int kParts>
inline void Split(__m512 x, __m512i* part) {
  part[0] = Bf16Bits(x);
  const __m512 hi_f = _mm512_castsi512_ps(_mm512_slli_epi32(part[0], 16));
  const __mmask16 finite = ~_mm512_fpclass_ps_mask(hi_f, 0x99);  // QNaN | +inf | -inf | SNaN
  __m512 rest = _mm512_maskz_sub_ps(finite, x, hi_f);  // exact: x and hi_f share the exponent
  for (int p = 1; p < kParts; ++p) {
    part[p] = Bf16Bits(rest);
    if (p + 1 < kParts) {
      rest = _mm512_sub_ps(rest, _mm512_castsi512_ps(_mm512_slli_epi32(part[p], 16)));
    }
  }
}

// Packs all of B (K x N) into column panels of 32: panel j holds pair-rows p = 0..kp/2 of
// 32 columns x 2 bf16 (rows 2p and 2p + 1 interleaved), for each of the kParts parts; part q of
// the panel starts at bp + q * part_stride.
template <int kParts>
void PackBPanel(const View& b, int64_t j, int64_t kp, uint16_t* bp, int64_t part_stride) {
  alignas(64) float r0[32], r1[32];
  const int64_t n0 = j * 32;
  for (int64_t k = 0; k < kp; k += 2) {
    const bool inside = k + 1 < b.rows && n0 + 32 <= b.cols;
    if (inside && b.cs == 1) {
      std::memcpy(r0, b.p + k * b.rs + n0, sizeof(r0));
      std::memcpy(r1, b.p + (k + 1) * b.rs + n0, sizeof(r1));
    } else if (inside && b.rs == 1 && 31 * b.cs < (int64_t{1} << 31)) {  // transposed storage
      const __m512i idx = _mm512_mullo_epi32(
          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
          _mm512_set1_epi32(static_cast<int32_t>(b.cs)));
      for (int h = 0; h < 2; ++h) {
        const float* base = b.p + (n0 + 16 * h) * b.cs + k;
        _mm512_store_ps(r0 + 16 * h, _mm512_i32gather_ps(idx, base, 4));
        _mm512_store_ps(r1 + 16 * h, _mm512_i32gather_ps(idx, base + 1, 4));
      }
    } else {
      for (int c = 0; c < 32; ++c) {
        r0[c] = b.at(k, n0 + c);
        r1[c] = b.at(k + 1, n0 + c);
      }
    }
    for (int h = 0; h < 2; ++h) {
      __m512i p0[kParts], p1[kParts];
      Split<kParts>(_mm512_load_ps(r0 + 16 * h), p0);
      Split<kParts>(_mm512_load_ps(r1 + 16 * h), p1);
      for (int q = 0; q < kParts; ++q) {
        _mm512_store_si512(bp + q * part_stride + k * 32 + h * 32,
                           _mm512_or_si512(p0[q], _mm512_slli_epi32(p1[q], 16)));
      }
    }
  }
}

// Packs A rows [m0, m0 + mc) x columns [k0, k0 + kc) (zero beyond A) as row-major hi / lo bf16
// blocks with row stride kc, one per part, part_stride apart. A transposed A (cs != 1) goes
// through a float32 block first.
template <int kParts>
void PackABlock(const View& a, int64_t m0, int64_t mc, int64_t k0, int64_t kc, float* scratch,
                uint16_t* ap, int64_t part_stride) {
  const float* src;
  int64_t ld;
  const bool inside = m0 + mc <= a.rows && k0 + kc <= a.cols;
  if (inside && a.cs == 1) {
    src = a.p + m0 * a.rs + k0;
    ld = a.rs;
  } else if (inside && a.rs == 1 && 15 * a.cs < (int64_t{1} << 31)) {
    // Transposed storage: gather 16 values of K (16 rows of memory) per row of A; the 16 rows'
    // cache lines serve the next 15 rows of A too.
    const __m512i idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(static_cast<int32_t>(a.cs)));
    for (int64_t k = 0; k < kc; k += 16) {
      const float* base = a.p + (k0 + k) * a.cs + m0;
      for (int64_t m = 0; m < mc; ++m) {
        __m512i part[kParts];
        Split<kParts>(_mm512_i32gather_ps(idx, base + m, 4), part);
        for (int q = 0; q < kParts; ++q) {
          _mm256_store_si256((__m256i*)(ap + q * part_stride + m * kc + k),
                             _mm512_cvtepi32_epi16(part[q]));
        }
      }
    }
    return;
  } else {
    for (int64_t m = 0; m < mc; ++m) std::fill(scratch + m * kc, scratch + (m + 1) * kc, 0.f);
    const int64_t m1 = std::min(mc, a.rows - m0), kk1 = std::min(kc, a.cols - k0);
    if (a.rs == 1) {  // transposed storage: walk K outer so the reads run along memory
      for (int64_t k = 0; k < kk1; ++k) {
        const float* row = a.p + (k0 + k) * a.cs + m0;
        for (int64_t m = 0; m < m1; ++m) scratch[m * kc + k] = row[m];
      }
    } else {
      for (int64_t m = 0; m < m1; ++m)
        for (int64_t k = 0; k < kk1; ++k) scratch[m * kc + k] = a.p[(m0 + m) * a.rs + (k0 + k) * a.cs];
    }
    src = scratch;
    ld = kc;
  }
  for (int64_t m = 0; m < mc; ++m) {
    for (int64_t k = 0; k < kc; k += 32) {
      __m512i p0[kParts], p1[kParts];
      Split<kParts>(_mm512_loadu_ps(src + m * ld + k), p0);
      Split<kParts>(_mm512_loadu_ps(src + m * ld + k + 16), p1);
      // Pack two 16 x 32-bit vectors of bf16 back to 32 x 16 bits.
      for (int q = 0; q < kParts; ++q) {
        uint16_t* dst = ap + q * part_stride + m * kc + k;
        _mm256_store_si256((__m256i*)dst, _mm512_cvtepi32_epi16(p0[q]));
        _mm256_store_si256((__m256i*)(dst + 16), _mm512_cvtepi32_epi16(p1[q]));
      }
    }
  }
}

// Tiles 4-5: rows 0-15 and 16-31 of A (stride lda bf16); 6-7: columns 0-15 and 16-31 of a B
// panel; 0-3 += their four products.
inline void LoadA(const uint16_t* a, int64_t lda) {
  _tile_loadd(4, a, lda * 2);
  _tile_loadd(5, a + 16 * lda, lda * 2);
}
inline void LoadB(const uint16_t* b) {
  _tile_loadd(6, b, 128);
  _tile_loadd(7, b + 32, 128);
}
inline void Accumulate2x2() {
  _tile_dpbf16ps(0, 4, 6);
  _tile_dpbf16ps(1, 4, 7);
  _tile_dpbf16ps(2, 5, 6);
  _tile_dpbf16ps(3, 5, 7);
}

// c (32 x 32, row stride ldc floats) += or = A block (32 rows, stride lda bf16) @ B panel, over
// `steps` slices of 32 columns of K: the products of parts a_i b_j with i + j < kParts
// (kParts 2: bf16x3, 3: bf16x6). Parts of A are a_stride apart, of B b_stride.
// What the next blocks will read from memory, fetched into L2 while this one computes: `lines`
// cache lines of each part of B from b (parts b_stride bf16 apart), and the 32 x 32 output
// block at c (row stride ldc floats) when it will be accumulated into.
struct Prefetch {
  const uint16_t* b = nullptr;
  int64_t b_stride = 0, lines = 0;
  const float* c = nullptr;
  int64_t ldc = 0;
};

template <int kParts>
void MicroKernel(const uint16_t* a, int64_t a_stride, int64_t lda, const uint16_t* b,
                 int64_t b_stride, int64_t steps, float* c, int64_t ldc, bool accumulate,
                 const Prefetch& pf) {
  const int64_t ldc_b = ldc * 4;
  if (pf.c != nullptr) {
    for (int r = 0; r < 32; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(pf.c + r * pf.ldc), _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(pf.c + r * pf.ldc + 16), _MM_HINT_T1);
    }
  }
  const int64_t per_step = (pf.lines + steps - 1) / steps;
  if (accumulate) {
    _tile_loadd(0, c, ldc_b);
    _tile_loadd(1, c + 16, ldc_b);
    _tile_loadd(2, c + 16 * ldc, ldc_b);
    _tile_loadd(3, c + 16 * ldc + 16, ldc_b);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t s = 0; s < steps; ++s) {
    if (pf.b != nullptr) {
      for (int64_t t = s * per_step; t < std::min(pf.lines, (s + 1) * per_step); ++t) {
        for (int q = 0; q < kParts; ++q) {
          _mm_prefetch(reinterpret_cast<const char*>(pf.b + q * pf.b_stride + t * 32), _MM_HINT_T1);
        }
      }
    }
    const uint16_t* bs = b + s * 32 * 32;  // 16 pair-rows x 64 bf16 per 32 columns of K
    for (int i = 0; i < kParts; ++i) {
      LoadA(a + i * a_stride + s * 32, lda);
      for (int j = 0; j + i < kParts; ++j) {
        LoadB(bs + j * b_stride);
        Accumulate2x2();  // a_i b_j
      }
    }
  }
  _tile_stored(0, c, ldc_b);
  _tile_stored(1, c + 16, ldc_b);
  _tile_stored(2, c + 16 * ldc, ldc_b);
  _tile_stored(3, c + 16 * ldc + 16, ldc_b);
}

// A grow-only, 64-byte aligned scratch buffer of this thread's, reused by every call: fresh
// multi-megabyte allocations would come from mmap and page-fault on each call.
constexpr size_t kKeepScratchBytes = size_t{256} << 20;  // larger buffers are freed after a call

template <typename T, int kSlot>
struct ScratchBuffer {
  T* p = nullptr;
  size_t size = 0;
  ~ScratchBuffer() { std::free(p); }
  static ScratchBuffer& Get() {
    thread_local ScratchBuffer buf;
    return buf;
  }
};

// The buffer of n Ts in this thread's slot kSlot, or nullptr if it cannot be allocated.
template <typename T, int kSlot>
T* ThreadScratch(size_t n) {
  auto& buf = ScratchBuffer<T, kSlot>::Get();
  if (buf.size < n) {
    std::free(buf.p);
    buf.p = static_cast<T*>(std::aligned_alloc(64, RoundUp(n * sizeof(T), 64)));
    buf.size = buf.p == nullptr ? 0 : n;
  }
  return buf.p;
}

// Frees this thread's slot kSlot if it grew past kKeepScratchBytes (a 7B model's LM head would
// otherwise keep ~0.5 GB per thread).
template <typename T, int kSlot>
void TrimThreadScratch() {
  auto& buf = ScratchBuffer<T, kSlot>::Get();
  if (buf.size * sizeof(T) > kKeepScratchBytes) {
    std::free(buf.p);
    buf.p = nullptr;
    buf.size = 0;
  }
}

// False if a packing buffer could not be allocated.
template <int kParts>
bool Gemm(ffi::ThreadPool& pool, const View& a, const View& b, float* out) {
  const int64_t m = a.rows, n = b.cols, k = a.cols;
  const int64_t mp = RoundUp(m, 32), np = RoundUp(n, 32), kp = RoundUp(k, 32);
  const int64_t panels = np / 32;
  const bool padded = mp != m || np != n;
  const int64_t b_stride = panels * kp * 32, a_stride = kMc * KBlock<kParts>();
  // B's packed panels (and a padded output) belong to the calling thread; the helpers only read
  // or write them until it returns.
  uint16_t* bp = ThreadScratch<uint16_t, 0>(kParts * b_stride);
  float* c = padded ? ThreadScratch<float, 1>(mp * np) : out;
  // The helpers' A blocks, allocated here first so that a failure shows before any work.
  if (bp == nullptr || c == nullptr || ThreadScratch<uint16_t, 2>(kParts * a_stride) == nullptr ||
      ThreadScratch<float, 3>(kMc * KBlock<kParts>()) == nullptr) {
    return false;
  }
  const int64_t pack_chunks = std::min<int64_t>(panels, 4 * (pool.num_threads() + 1));
  ParallelFor(pool, pack_chunks, [&](int64_t i) {
    for (int64_t j = i * panels / pack_chunks; j < (i + 1) * panels / pack_chunks; ++j)
      PackBPanel<kParts>(b, j, kp, bp + j * kp * 32, b_stride);
  });
  const int64_t ldc = padded ? np : n;
  // Row blocks of up to kMc rows (a sweep over the tuning table in RESULTS.md), fewer rows when
  // that would leave a thread without a block.
  const int64_t workers = std::max<int64_t>(1, pool.num_threads());
  const int64_t block_rows = std::min(kMc, RoundUp((mp + workers - 1) / workers, 32));
  const int64_t blocks = (mp + block_rows - 1) / block_rows;
  std::atomic<bool> failed{false};
  ParallelFor(pool, blocks, [&](int64_t i) {
    OsAllowsAmx();
    ConfigureTiles();
    const int64_t m0 = i * block_rows, mc = std::min(block_rows, mp - m0);
    uint16_t* ap = ThreadScratch<uint16_t, 2>(kParts * a_stride);
    float* scratch = ThreadScratch<float, 3>(kMc * KBlock<kParts>());
    if (ap == nullptr || scratch == nullptr) {
      failed.store(true, std::memory_order_relaxed);
      return;
    }
    for (int64_t k0 = 0; k0 < kp; k0 += KBlock<kParts>()) {
      const int64_t kc = std::min(KBlock<kParts>(), kp - k0);
      PackABlock<kParts>(a, m0, mc, k0, kc, scratch, ap, a_stride);
      const int64_t strips = mc / 32;
      for (int64_t j = 0; j < panels; ++j) {
        const uint16_t* bj = bp + j * kp * 32 + k0 * 32;
        for (int64_t r = 0; r < mc; r += 32) {
          // The strips of this panel share the fetch of the next panel's kc lines per part.
          Prefetch pf;
          const int64_t strip = r / 32;
          if (j + 1 < panels) {
            const int64_t l0 = strip * kc / strips, l1 = (strip + 1) * kc / strips;
            pf.b = bj + kp * 32 + l0 * 32;
            pf.b_stride = b_stride;
            pf.lines = l1 - l0;
          }
          if (k0 > 0 && (r + 32 < mc || j + 1 < panels)) {
            pf.c = r + 32 < mc ? c + (m0 + r + 32) * ldc + j * 32 : c + m0 * ldc + (j + 1) * 32;
            pf.ldc = ldc;
          }
          MicroKernel<kParts>(ap + r * kc, a_stride, kc, bj, b_stride, kc / 32,
                              c + (m0 + r) * ldc + j * 32, ldc, k0 > 0, pf);
        }
      }
    }
    _tile_release();
    if (padded) {
      for (int64_t r = m0; r < std::min(m, m0 + mc); ++r)
        std::memcpy(out + r * n, c + r * ldc, n * sizeof(float));
    }
  });
  TrimThreadScratch<uint16_t, 0>();
  TrimThreadScratch<float, 1>();
  return !failed.load();
}

#endif  // AOTD_AMX

ffi::Error AmxMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                     ffi::ResultBuffer<ffi::F32> out, bool transpose_a, bool transpose_b,
                     int32_t passes) {
  const auto ad = a.dimensions();
  const auto bd = b.dimensions();
  if (ad.size() != 2 || bd.size() != 2) {
    return ffi::Error::InvalidArgument("aotd_amx_matmul: want 2-D a and b");
  }
  // op(a) is (M, K); op(b) is (K, N).
  const View av = transpose_a ? View{a.typed_data(), 1, ad[1], ad[1], ad[0]}
                              : View{a.typed_data(), ad[1], 1, ad[0], ad[1]};
  const View bv = transpose_b ? View{b.typed_data(), 1, bd[1], bd[1], bd[0]}
                              : View{b.typed_data(), bd[1], 1, bd[0], bd[1]};
  if (av.cols != bv.rows) {
    return ffi::Error::InvalidArgument("aotd_amx_matmul: op(a) and op(b) disagree on K");
  }
  float* o = out->typed_data();
  if (av.rows == 0 || bv.cols == 0) return ffi::Error::Success();
  if (av.cols == 0) {
    std::fill(o, o + av.rows * bv.cols, 0.f);
    return ffi::Error::Success();
  }
#ifdef AOTD_AMX
  if (!OsAllowsAmx()) return ffi::Error::Internal("aotd_amx_matmul: the OS does not grant AMX");
  if (passes != 3 && passes != 6) {
    return ffi::Error::InvalidArgument("aotd_amx_matmul: passes must be 3 or 6");
  }
  if (!(passes == 3 ? Gemm<2>(pool, av, bv, o) : Gemm<3>(pool, av, bv, o))) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      "aotd_amx_matmul: out of memory for the packing buffers");
  }
  return ffi::Error::Success();
#else
  return ffi::Error::Internal("aotd_amx_matmul: built without AMX-BF16");
#endif
}

}  // namespace

// 1 when this build has AMX-BF16 and the OS lets this process use the tile registers.
extern "C" int AotdAmxSupported() {
#ifdef AOTD_AMX
  return OsAllowsAmx() ? 1 : 0;
#else
  return 0;
#endif
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(AotdAmxMatmul, AmxMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("transpose_a")
                                  .Attr<bool>("transpose_b")
                                  .Attr<int32_t>("passes"));
