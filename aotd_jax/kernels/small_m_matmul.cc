// XLA FFI CPU kernel: out (M, N) = x (M, K) @ w (K, N) in float32, row-major, for small M.
//
// A decode step multiplies a handful of rows (the batch) by every weight matrix. XLA's CPU dot
// runs these at ~12 % of the core's FMA peak; the step is bound by how fast the weights stream
// in. This kernel streams w once: columns are split over the XLA intra-op thread pool, each
// thread walks its columns in blocks of kBlockRows rows of w (read once, with a software
// prefetch kPrefetchRows rows ahead) and keeps a (rows x kPanel) tile of the output in
// registers. Built on demand by `aotd_jax/kernels/build.py`; see `small_m_matmul.py`.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX512F__)
constexpr int kLanes = 16;  // floats per vector register
constexpr int kMaxRows = 8;  // 8 rows x 2 vectors = 16 accumulators of 32 zmm registers
#else
constexpr int kLanes = 8;
constexpr int kMaxRows = 4;  // 4 rows x 2 vectors = 8 accumulators of 16 ymm registers
#endif
typedef float Vec __attribute__((vector_size(kLanes * 4)));
typedef float VecU __attribute__((vector_size(kLanes * 4), aligned(4)));  // unaligned access

constexpr int64_t kPanel = 2 * kLanes;  // output columns per tile
constexpr int64_t kBlockRows = 32;      // rows of w per pass over a thread's columns
constexpr int64_t kPrefetchRows = 16;   // software prefetch distance down the rows of w

inline Vec Load(const float* p) { return *reinterpret_cast<const VecU*>(p); }
inline void Store(float* p, Vec v) { *reinterpret_cast<VecU*>(p) = v; }

// Rows [k0, k1) of w's contribution to an (MR x kPanel) output tile; k0 == 0 starts from zero.
template <int MR>
void Tile(const float* x, int64_t k_size, const float* w, int64_t n_size, float* out, int64_t k0,
          int64_t k1) {
  Vec acc0[MR], acc1[MR];
  for (int m = 0; m < MR; ++m) {
    acc0[m] = k0 == 0 ? Vec{} : Load(out + m * n_size);
    acc1[m] = k0 == 0 ? Vec{} : Load(out + m * n_size + kLanes);
  }
  const float* wp = w + k0 * n_size;
  for (int64_t k = k0; k < k1; ++k, wp += n_size) {
    __builtin_prefetch(wp + kPrefetchRows * n_size);
    __builtin_prefetch(wp + kPrefetchRows * n_size + kLanes);
    const Vec w0 = Load(wp);
    const Vec w1 = Load(wp + kLanes);
    for (int m = 0; m < MR; ++m) {
      const float s = x[m * k_size + k];
      acc0[m] += s * w0;
      acc1[m] += s * w1;
    }
  }
  for (int m = 0; m < MR; ++m) {
    Store(out + m * n_size, acc0[m]);
    Store(out + m * n_size + kLanes, acc1[m]);
  }
}

template <int... R>
struct TileTable {
  using Fn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t);
  static constexpr Fn kFns[] = {nullptr, Tile<R>...};
};
#if defined(__AVX512F__)
using Tiles = TileTable<1, 2, 3, 4, 5, 6, 7, 8>;
#else
using Tiles = TileTable<1, 2, 3, 4>;
#endif

// Output columns [n0, n1): n0 is a multiple of kPanel, n1 too unless it is n_size.
void Columns(const float* x, const float* w, float* out, int64_t m_size, int64_t k_size,
             int64_t n_size, int64_t n0, int64_t n1) {
  const int64_t tiled_end = n0 + (n1 - n0) / kPanel * kPanel;
  for (int64_t k0 = 0; k0 < k_size; k0 += kBlockRows) {
    const int64_t k1 = std::min(k_size, k0 + kBlockRows);
    for (int64_t n = n0; n < tiled_end; n += kPanel) {
      for (int64_t m = 0; m < m_size; m += kMaxRows) {
        const int64_t rows = std::min<int64_t>(kMaxRows, m_size - m);
        Tiles::kFns[rows](x + m * k_size, k_size, w + n, n_size, out + m * n_size + n, k0, k1);
      }
    }
  }
  for (int64_t m = 0; m < m_size; ++m) {  // the last n_size % kPanel columns
    for (int64_t n = tiled_end; n < n1; ++n) {
      float s = 0.f;
      for (int64_t k = 0; k < k_size; ++k) s += x[m * k_size + k] * w[k * n_size + n];
      out[m * n_size + n] = s;
    }
  }
}

// Column chunks handed out to whichever threads come: the caller drains them too, so it never
// waits for a task the pool has not started (no deadlock on a busy or one-thread pool).
struct Work {
  const float* x;
  const float* w;
  float* out;
  int64_t m_size, k_size, n_size, chunk_cols, num_chunks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void Drain() {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < num_chunks;) {
      const int64_t n0 = c * chunk_cols;
      Columns(x, w, out, m_size, k_size, n_size, n0, std::min(n_size, n0 + chunk_cols));
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error SmallMMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                        ffi::ResultBuffer<ffi::F32> out) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[0]) {
    return ffi::Error::InvalidArgument("aotd_small_m_matmul: want x (M, K) and w (K, N)");
  }
  auto work = std::make_shared<Work>();  // shared: a late pool task may still read `next`
  work->x = x.typed_data();
  work->w = w.typed_data();
  work->out = out->typed_data();
  work->m_size = xd[0];
  work->k_size = xd[1];
  work->n_size = wd[1];
  if (work->m_size == 0 || work->n_size == 0) return ffi::Error::Success();
  if (work->k_size == 0) {
    std::fill(work->out, work->out + work->m_size * work->n_size, 0.f);
    return ffi::Error::Success();
  }
  const int64_t panels = (work->n_size + kPanel - 1) / kPanel;
  const int64_t chunks = std::min<int64_t>(panels, std::max<int64_t>(1, pool.num_threads()));
  work->chunk_cols = (panels + chunks - 1) / chunks * kPanel;
  work->num_chunks = (work->n_size + work->chunk_cols - 1) / work->chunk_cols;
  for (int64_t t = 1; t < work->num_chunks; ++t) pool.Schedule([work] { work->Drain(); });
  work->Drain();
  while (work->done.load(std::memory_order_acquire) < work->num_chunks) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AotdSmallMMatmul, SmallMMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
