// XLA FFI CPU kernels: grouped-query attention with a boolean mask, in float32, forward and
// backward.
//
// Causal (attribute `causal`), it is the model's query-block attention
// (`aotd_jax/models/causal_attention.py`): the queries are cut into blocks of `block` rows and
// block t meets keys [0, min((t + 1) block, L)). Otherwise every query meets all L keys (CLIP's
// towers) and `block` only tiles the work. Scores are scaled by head_dim^-1/2 and masked (a masked
// score is float32's lowest value, so a query that sees no key averages the keys it meets, as the
// jnp paths do) and soft-maxed. XLA runs these as ~20 small ops per block, whose batched dots
// reach ~60 GFLOP/s on a CPU, and materialises the (B, heads, L, L) scores; here each (batch,
// kv head) pair is one task that keeps its keys, values and one block of scores in cache:
//   forward:  S = Q K^T, P = softmax(S), O = P V; the log-sum-exp of each row is saved;
//   backward: P is recomputed from the saved log-sum-exp, dP = dO V^T, dS = P (dP - rowsum(dO O)),
//             dQ = dS K, dK += dS^T Q, dV += P^T dO (scaled where the scores were).
// The grouped query heads of a kv head are its task's, so dK and dV need no atomics. Masked
// scores get no gradient; a query that sees no key gets none at all.
//
// Layouts (row-major, as the model holds them, read in place): q, dq (B, L, kv, G, d); k, v, dk,
// dv (B, L, kv, d); mask (B, L, L) or (1, L, L) bool, shared by the batch, or none (attribute
// `masked` false: CLIP's vision tower); out, dout (B, L, kv G d); lse (B, kv, G, L).
//
// Built on demand by `aotd_jax/kernels/build.py`; see `attention.py`. A build without
// AVX-512 (F, BW, VL) compiles to handlers that return an error, and `AotdAttentionSupported`
// returns 0, so Python keeps the jnp path there.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define AOTD_AVX512 1
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Shape {
  int64_t b, l, kv, g, d, block;
  bool causal;
  int64_t mask_batch;  // 0: no mask; 1: one (L, L) mask for the batch; b: one per sequence
  int64_t keys(int64_t r0) const { return causal ? std::min(r0 + block, l) : l; }  // block's keys
  // Row i of sequence bi's mask, or nullptr when there is no mask.
  const bool* mask_row(const bool* mask, int64_t bi, int64_t i) const {
    return mask_batch == 0 ? nullptr : mask + ((mask_batch == 1 ? 0 : bi) * l + i) * l;
  }
  int64_t q_stride() const { return kv * g * d; }  // between query rows of one head
  int64_t k_stride() const { return kv * d; }      // between key rows of one kv head
};

// Runs fn(i) for i in [0, n) on the XLA pool's threads and the calling thread; false if any
// fn(i) returned false. The caller drains chunks too, so it never waits on a pool task that has
// not started (no deadlock on a busy pool).
bool ParallelFor(ffi::ThreadPool& pool, int64_t n, std::function<bool(int64_t)> fn) {
  struct Loop {
    std::function<bool(int64_t)> fn;
    int64_t n;
    std::atomic<int64_t> next{0}, done{0};
    std::atomic<bool> failed{false};
    void Drain() {
      for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) {
        if (!fn(i)) failed.store(true, std::memory_order_relaxed);
        done.fetch_add(1, std::memory_order_release);
      }
    }
  };
  auto loop = std::make_shared<Loop>();  // shared: a late pool task may still read `next`
  loop->fn = std::move(fn);
  loop->n = n;
  const int64_t helpers = std::min<int64_t>(n - 1, pool.num_threads() - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([loop] { loop->Drain(); });
  loop->Drain();
  while (loop->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
  return !loop->failed.load();
}

#ifdef AOTD_AVX512

constexpr int kMaxRows = 6;  // a tile is up to 6 rows x 4 vectors: 24 accumulators of 32 zmm
constexpr int kMaxVecs = 4;

inline int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline __mmask16 FirstLanes(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
}

// C[i, 0:16 NV] (+)= sum_k A(i, k) B[k, 0:16 NV] for MR rows, where A(i, k) = a[i sa + k sk];
// lanes of the last vector outside `last` are neither read nor written.
// Accumulators are named variables, one per (row, vector): GCC kept arrays of them on the stack,
// storing all 24 at every step of K (half the FMA rate).
#define AOTD_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)

template <int MR, int NV>
void Tile(const float* a, int64_t sa, int64_t sk, const float* b, int64_t ldb, float* c,
          int64_t ldc, int64_t k_size, __mmask16 last, bool accumulate) {
  static_assert(MR <= kMaxRows && NV <= kMaxVecs);
  const __mmask16 m0 = NV == 1 ? last : 0xFFFF, m1 = NV == 2 ? last : 0xFFFF,
                  m2 = NV == 3 ? last : 0xFFFF, m3 = NV == 4 ? last : 0xFFFF;
#define AOTD_LOAD(i)                                                                  \
  __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = c##i##0, c##i##2 = c##i##0, c##i##3 = c##i##0; \
  if constexpr (MR > i) {                                                             \
    if (accumulate) {                                                                 \
      c##i##0 = _mm512_maskz_loadu_ps(m0, c + i * ldc);                               \
      if constexpr (NV > 1) c##i##1 = _mm512_maskz_loadu_ps(m1, c + i * ldc + 16);   \
      if constexpr (NV > 2) c##i##2 = _mm512_maskz_loadu_ps(m2, c + i * ldc + 32);   \
      if constexpr (NV > 3) c##i##3 = _mm512_maskz_loadu_ps(m3, c + i * ldc + 48);   \
    }                                                                                 \
  }
  AOTD_ROWS(AOTD_LOAD)
#undef AOTD_LOAD
  for (int64_t k = 0; k < k_size; ++k) {
    const float* bk = b + k * ldb;
    const float* ak = a + k * sk;
    const __m512 b0 = _mm512_maskz_loadu_ps(m0, bk);
    const __m512 b1 = NV > 1 ? _mm512_maskz_loadu_ps(m1, bk + 16) : b0;
    const __m512 b2 = NV > 2 ? _mm512_maskz_loadu_ps(m2, bk + 32) : b0;
    const __m512 b3 = NV > 3 ? _mm512_maskz_loadu_ps(m3, bk + 48) : b0;
#define AOTD_FMA(i)                                                   \
  if constexpr (MR > i) {                                             \
    const __m512 ai = _mm512_set1_ps(ak[i * sa]);                     \
    c##i##0 = _mm512_fmadd_ps(ai, b0, c##i##0);                       \
    if constexpr (NV > 1) c##i##1 = _mm512_fmadd_ps(ai, b1, c##i##1); \
    if constexpr (NV > 2) c##i##2 = _mm512_fmadd_ps(ai, b2, c##i##2); \
    if constexpr (NV > 3) c##i##3 = _mm512_fmadd_ps(ai, b3, c##i##3); \
  }
    AOTD_ROWS(AOTD_FMA)
#undef AOTD_FMA
  }
#define AOTD_STORE(i)                                                          \
  if constexpr (MR > i) {                                                      \
    _mm512_mask_storeu_ps(c + i * ldc, m0, c##i##0);                           \
    if constexpr (NV > 1) _mm512_mask_storeu_ps(c + i * ldc + 16, m1, c##i##1); \
    if constexpr (NV > 2) _mm512_mask_storeu_ps(c + i * ldc + 32, m2, c##i##2); \
    if constexpr (NV > 3) _mm512_mask_storeu_ps(c + i * ldc + 48, m3, c##i##3); \
  }
  AOTD_ROWS(AOTD_STORE)
#undef AOTD_STORE
}

#undef AOTD_ROWS

using TileFn = void (*)(const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t,
                        int64_t, __mmask16, bool);

template <int MR>
struct RowTiles {
  static constexpr TileFn kFns[kMaxVecs + 1] = {nullptr, Tile<MR, 1>, Tile<MR, 2>, Tile<MR, 3>,
                                                Tile<MR, 4>};
};

constexpr const TileFn* kTiles[kMaxRows + 1] = {nullptr, RowTiles<1>::kFns, RowTiles<2>::kFns,
                                                RowTiles<3>::kFns, RowTiles<4>::kFns,
                                                RowTiles<5>::kFns, RowTiles<6>::kFns};

constexpr int64_t kKc = 128;  // rows of B per pass: 128 x 64 floats (32 KB) stay in L1

constexpr int64_t kNc = 16 * kMaxVecs;  // columns of B per tile

// C (M x N, row stride ldc) (+)= A (M x K) B (K x N), A(i, k) = a[i sa + k sk]. B is held in
// panels of kNc columns, `bp` floats apart, with row stride ldb inside a panel: a row-major B has
// bp = kNc; `TransposeToPanels` makes ldb = kNc, bp = K kNc.
void Gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t sa, int64_t sk, const float* b,
          int64_t ldb, int64_t bp, float* c, int64_t ldc, bool accumulate) {
  for (int64_t k0 = 0; k0 < k; k0 += kKc) {
    const int64_t kc = std::min(kKc, k - k0);
    for (int64_t j = 0; j < n; j += kNc) {
      const int64_t cols = std::min<int64_t>(kNc, n - j);
      const int64_t vecs = (cols + 15) / 16;
      const __mmask16 last = FirstLanes(cols - 16 * (vecs - 1));
      for (int64_t i = 0; i < m; i += kMaxRows) {
        const int64_t rows = std::min<int64_t>(kMaxRows, m - i);
        kTiles[rows][vecs](a + i * sa + k0 * sk, sa, sk, b + j / kNc * bp + k0 * ldb, ldb, c + i * ldc + j, ldc,
                           kc, last, accumulate || k0 > 0);
      }
    }
  }
  if (k == 0 && !accumulate) {
    for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.f);
  }
}

// exp(x) for 16 lanes to ~1 ulp: 2^n exp(r), n = round(x / ln 2), |r| <= ln(2) / 2, degree-7
// Taylor polynomial. Below -87.3 (float32's smallest normal) the result is 0.
inline __m512 Exp(__m512 x) {
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.f)), _mm512_set1_ps(88.7f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_maskz_mov_ps(~tiny, _mm512_scalef_ps(p, n));
}

// Lanes of row[j : j + 16] that are true, within the first `cols` (all of those without a mask).
inline __mmask16 MaskLanes(const bool* row, int64_t j, int64_t cols) {
  const __mmask16 in = FirstLanes(cols);
  if (row == nullptr) return in;
  const __m128i bytes = _mm_maskz_loadu_epi8(in, row + j);
  return _mm_mask_test_epi8_mask(in, bytes, bytes);
}

// One row of scores s[0:n] -> probabilities, in place; returns the row's log-sum-exp.
float SoftmaxRow(float* s, int64_t n, const bool* mask, float scale) {
  const __m512 lowest = _mm512_set1_ps(std::numeric_limits<float>::lowest());
  __m512 vmax = lowest;
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 in = FirstLanes(n - j);
    const __m512 x = _mm512_mask_blend_ps(MaskLanes(mask, j, n - j), lowest,
                                          _mm512_mul_ps(_mm512_maskz_loadu_ps(in, s + j), _mm512_set1_ps(scale)));
    _mm512_mask_storeu_ps(s + j, in, x);
    vmax = _mm512_mask_max_ps(vmax, in, vmax, x);
  }
  const float max = _mm512_reduce_max_ps(vmax);
  __m512 vsum = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 in = FirstLanes(n - j);
    const __m512 e = Exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(in, s + j), _mm512_set1_ps(max)));
    _mm512_mask_storeu_ps(s + j, in, e);
    vsum = _mm512_mask_add_ps(vsum, in, vsum, e);
  }
  const float sum = _mm512_reduce_add_ps(vsum);
  const __m512 inv = _mm512_set1_ps(1.f / sum);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 in = FirstLanes(n - j);
    _mm512_mask_storeu_ps(s + j, in, _mm512_mul_ps(_mm512_maskz_loadu_ps(in, s + j), inv));
  }
  return max + std::log(sum);
}

// The backward pass's row: p = exp(s scale - lse) where the mask is true, else 0 (into s);
// ds = p (dp - delta) scale (into dp).
void GradRow(float* s, float* dp, int64_t n, const bool* mask, float scale, float lse, float delta) {
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 in = FirstLanes(n - j);
    const __mmask16 keep = MaskLanes(mask, j, n - j);
    const __m512 x = _mm512_fmsub_ps(_mm512_maskz_loadu_ps(in, s + j), _mm512_set1_ps(scale),
                                     _mm512_set1_ps(lse));
    const __m512 p = _mm512_maskz_mov_ps(keep, Exp(x));
    _mm512_mask_storeu_ps(s + j, in, p);
    const __m512 g = _mm512_sub_ps(_mm512_maskz_loadu_ps(in, dp + j), _mm512_set1_ps(delta));
    _mm512_mask_storeu_ps(dp + j, in, _mm512_mul_ps(_mm512_mul_ps(p, g), _mm512_set1_ps(scale)));
  }
}

float Dot(const float* x, const float* y, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 in = FirstLanes(n - j);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(in, x + j), _mm512_maskz_loadu_ps(in, y + j), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// src^T for src (rows x cols, row stride rs), into panels of kNc columns of src^T (rows of src):
// panel p, kNc x cols floats, holds dst[p][c][j] = src[p kNc + j][c]. Each panel is contiguous,
// so a tile's loads of B stay within a few pages (a row-major src^T at long L put each of its
// rows on its own page). 16 rows at a time, so the reads stay in L1.
void TransposeToPanels(const float* src, int64_t rs, int64_t rows, int64_t cols, float* dst) {
  for (int64_t r0 = 0; r0 < rows; r0 += 16) {
    const int64_t r1 = std::min(rows, r0 + 16);
    float* panel = dst + r0 / kNc * kNc * cols + r0 % kNc;
    for (int64_t c = 0; c < cols; ++c) {
      for (int64_t r = r0; r < r1; ++r) panel[c * kNc + (r - r0)] = src[r * rs + c];
    }
  }
}

// dst (rows x cols, contiguous) = src (rows x cols, row stride rs): one head's keys or values
// read contiguously afterwards (at long L their rows, kv heads apart, span more pages than the TLB).
void Pack(const float* src, int64_t rs, int64_t rows, int64_t cols, float* dst) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * cols, src + r * rs, cols * sizeof(float));
}

// A thread's scratch, grown as needed and kept for its next task; nullptr when out of memory.
float* Scratch(int64_t n) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < n) {
    try {
      buf.resize(n);
    } catch (const std::bad_alloc&) {
      return nullptr;
    }
  }
  return buf.data();
}

struct Fwd {
  Shape s;
  const float *q, *k, *v;
  const bool* mask;
  float *out, *lse;

  bool Unit(int64_t unit) const {  // one (batch, kv head) pair; false when out of memory
    const int64_t bi = unit / s.kv, h = unit % s.kv, d = s.d, lp = RoundUp(s.l, 16);
    const int64_t tp = RoundUp(s.l, kNc) * d;  // floats of K^T in panels
    float* kt = Scratch(tp + s.l * d + std::min(s.block, s.l) * lp);
    if (kt == nullptr) return false;
    float* vp = kt + tp;
    float* sc = vp + s.l * d;
    const int64_t kv_off = (bi * s.l * s.kv + h) * d;
    TransposeToPanels(k + kv_off, s.k_stride(), s.l, d, kt);
    Pack(v + kv_off, s.k_stride(), s.l, d, vp);
    const float scale = 1.f / std::sqrt(static_cast<float>(d));
    for (int64_t r0 = 0; r0 < s.l; r0 += s.block) {
      const int64_t rows = std::min(s.block, s.l - r0), n = s.keys(r0);
      for (int64_t gi = 0; gi < s.g; ++gi) {
        const int64_t q_off = ((bi * s.l + r0) * s.kv + h) * s.g * d + gi * d;
        Gemm(rows, n, d, q + q_off, s.q_stride(), 1, kt, kNc, kNc * d, sc, lp, false);
        float* row_lse = lse + ((bi * s.kv + h) * s.g + gi) * s.l + r0;
        for (int64_t r = 0; r < rows; ++r) {
          row_lse[r] = SoftmaxRow(sc + r * lp, n, s.mask_row(mask, bi, r0 + r), scale);
        }
        Gemm(rows, d, n, sc, lp, 1, vp, d, kNc, out + q_off, s.q_stride(), false);
      }
    }
    return true;
  }
};

struct Bwd {
  Shape s;
  const float *q, *k, *v, *out, *lse, *dout;
  const bool* mask;
  float *dq, *dk, *dv;

  bool Unit(int64_t unit) const {
    const int64_t bi = unit / s.kv, h = unit % s.kv, d = s.d, lp = RoundUp(s.l, 16);
    const int64_t rows = std::min(s.block, s.l), tp = RoundUp(s.l, kNc) * d;
    float* kt = Scratch(2 * tp + 2 * rows * lp + 3 * s.l * d);
    if (kt == nullptr) return false;
    float* vt = kt + tp;
    float* kp = vt + tp;
    float* p = kp + s.l * d;
    float* ds = p + rows * lp;
    float* dk_acc = ds + rows * lp;
    float* dv_acc = dk_acc + s.l * d;
    std::fill(dk_acc, dk_acc + 2 * s.l * d, 0.f);
    const int64_t kv_off = (bi * s.l * s.kv + h) * d;
    TransposeToPanels(k + kv_off, s.k_stride(), s.l, d, kt);
    TransposeToPanels(v + kv_off, s.k_stride(), s.l, d, vt);
    Pack(k + kv_off, s.k_stride(), s.l, d, kp);
    const float scale = 1.f / std::sqrt(static_cast<float>(d));
    for (int64_t r0 = 0; r0 < s.l; r0 += s.block) {
      const int64_t rows = std::min(s.block, s.l - r0), n = s.keys(r0);
      for (int64_t gi = 0; gi < s.g; ++gi) {
        const int64_t q_off = ((bi * s.l + r0) * s.kv + h) * s.g * d + gi * d;
        const float* row_lse = lse + ((bi * s.kv + h) * s.g + gi) * s.l + r0;
        Gemm(rows, n, d, q + q_off, s.q_stride(), 1, kt, kNc, kNc * d, p, lp, false);
        Gemm(rows, n, d, dout + q_off, s.q_stride(), 1, vt, kNc, kNc * d, ds, lp, false);
        for (int64_t r = 0; r < rows; ++r) {
          const float delta = Dot(dout + q_off + r * s.q_stride(), out + q_off + r * s.q_stride(), d);
          GradRow(p + r * lp, ds + r * lp, n, s.mask_row(mask, bi, r0 + r), scale, row_lse[r], delta);
        }
        Gemm(rows, d, n, ds, lp, 1, kp, d, kNc, dq + q_off, s.q_stride(), false);
        Gemm(n, d, rows, ds, 1, lp, q + q_off, s.q_stride(), kNc, dk_acc, d, true);
        Gemm(n, d, rows, p, 1, lp, dout + q_off, s.q_stride(), kNc, dv_acc, d, true);
      }
    }
    for (int64_t j = 0; j < s.l; ++j) {
      std::memcpy(dk + kv_off + j * s.k_stride(), dk_acc + j * d, d * sizeof(float));
      std::memcpy(dv + kv_off + j * s.k_stride(), dv_acc + j * d, d * sizeof(float));
    }
    return true;
  }
};

#endif  // AOTD_AVX512

// Checks the operands' shapes; fills `s` from q (B, L, kv, G, d).
ffi::Error ReadShape(const char* name, ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k,
                     ffi::Buffer<ffi::F32>& v, ffi::Buffer<ffi::PRED>& mask, int64_t block, bool causal,
                     bool masked, Shape* s) {
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions(), md = mask.dimensions();
  if (qd.size() != 5 || kd.size() != 4 || vd.size() != 4 || md.size() != 3) {
    return ffi::Error::InvalidArgument(std::string(name) +
                                       ": want q (B, L, kv, G, d), k and v (B, L, kv, d), mask (B, L, L)");
  }
  *s = Shape{qd[0], qd[1], qd[2], qd[3], qd[4], block, causal, masked ? md[0] : 0};
  for (int i = 0; i < 4; ++i) {
    const int64_t want = i < 3 ? qd[i] : qd[4];
    if (kd[i] != want || vd[i] != want) {
      return ffi::Error::InvalidArgument(std::string(name) + ": keys and values do not fit the queries");
    }
  }
  if (masked && ((md[0] != s->b && md[0] != 1) || md[1] != s->l || md[2] != s->l)) {
    return ffi::Error::InvalidArgument(std::string(name) + ": mask is not (B, L, L) or (1, L, L)");
  }
  if (block < 1) return ffi::Error::InvalidArgument(std::string(name) + ": block must be >= 1");
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                   ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::PRED> mask,
                   ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse, int64_t block,
                   bool causal, bool masked) {
  Shape s;
  if (auto e = ReadShape("aotd_attention_fwd", q, k, v, mask, block, causal, masked, &s); e.failure()) return e;
  if (s.b * s.l * s.kv * s.g == 0) return ffi::Error::Success();
  if (s.d == 0) {
    return ffi::Error::InvalidArgument("aotd_attention_fwd: head_dim must be >= 1");
  }
#ifdef AOTD_AVX512
  const Fwd fwd{s, q.typed_data(), k.typed_data(), v.typed_data(), mask.typed_data(),
                out->typed_data(), lse->typed_data()};
  if (!ParallelFor(pool, s.b * s.kv, [&fwd](int64_t unit) { return fwd.Unit(unit); })) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, "aotd_attention_fwd: out of memory");
  }
  return ffi::Error::Success();
#else
  return ffi::Error::Internal("aotd_attention_fwd: built without AVX-512");
#endif
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::PRED> mask, ffi::Buffer<ffi::F32> out,
                    ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout,
                    ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                    ffi::ResultBuffer<ffi::F32> dv, int64_t block, bool causal, bool masked) {
  Shape s;
  if (auto e = ReadShape("aotd_attention_bwd", q, k, v, mask, block, causal, masked, &s); e.failure()) return e;
  if (out.element_count() != q.element_count() || dout.element_count() != q.element_count() ||
      static_cast<int64_t>(lse.element_count()) != s.b * s.kv * s.g * s.l) {
    return ffi::Error::InvalidArgument("aotd_attention_bwd: out, dout or lse has the wrong size");
  }
  if (s.b * s.l * s.kv * s.g * s.d == 0) {
    std::fill(dk->typed_data(), dk->typed_data() + dk->element_count(), 0.f);
    std::fill(dv->typed_data(), dv->typed_data() + dv->element_count(), 0.f);
    return ffi::Error::Success();
  }
#ifdef AOTD_AVX512
  const Bwd bwd{s, q.typed_data(), k.typed_data(), v.typed_data(), out.typed_data(), lse.typed_data(),
                dout.typed_data(), mask.typed_data(), dq->typed_data(), dk->typed_data(),
                dv->typed_data()};
  if (!ParallelFor(pool, s.b * s.kv, [&bwd](int64_t unit) { return bwd.Unit(unit); })) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, "aotd_attention_bwd: out of memory");
  }
  return ffi::Error::Success();
#else
  return ffi::Error::Internal("aotd_attention_bwd: built without AVX-512");
#endif
}

}  // namespace

// 1 when this build has the AVX-512 (F, BW, VL) code path.
extern "C" int AotdAttentionSupported() {
#ifdef AOTD_AVX512
  return 1;
#else
  return 0;
#endif
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(AotdAttentionFwd, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // q
                                  .Arg<ffi::Buffer<ffi::F32>>()   // k
                                  .Arg<ffi::Buffer<ffi::F32>>()   // v
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // mask
                                  .Ret<ffi::Buffer<ffi::F32>>()   // out
                                  .Ret<ffi::Buffer<ffi::F32>>()   // lse
                                  .Attr<int64_t>("block")
                                  .Attr<bool>("causal")
                                  .Attr<bool>("masked"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(AotdAttentionBwd, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // q
                                  .Arg<ffi::Buffer<ffi::F32>>()   // k
                                  .Arg<ffi::Buffer<ffi::F32>>()   // v
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // mask
                                  .Arg<ffi::Buffer<ffi::F32>>()   // out
                                  .Arg<ffi::Buffer<ffi::F32>>()   // lse
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dout
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dq
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dk
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dv
                                  .Attr<int64_t>("block")
                                  .Attr<bool>("causal")
                                  .Attr<bool>("masked"));
