// AVX2 row routines (compiled with -mavx2 -mfma -mf16c); tails are scalar.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/row_ops.h"

namespace cserve::cpu::detail {

namespace {

// exp(x); Cephes polynomial, 2^n built in the exponent field.
inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.33654f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

void to_f32(const void* src, DType t, float* dst, int64_t n) {
  if (t == DType::F32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * 4);
    return;
  }
  const uint16_t* s = static_cast<const uint16_t*>(src);
  int64_t i = 0;
  if (t == DType::F16) {
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
    for (; i < n; ++i) dst[i] = f16_to_f32(s[i]);
  } else {
    for (; i + 8 <= n; i += 8) {
      const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
      _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
    }
    for (; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
  }
}

// Eight values of a row of type T (F32, F16 or BF16) from element idx, as f32.
template <DType T>
inline __m256 load8_as_f32(const void* src, int64_t idx) {
  if constexpr (T == DType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(src) + idx);
  } else if constexpr (T == DType::F16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(src) + idx)));
  } else {
    const __m256i v = _mm256_cvtepu16_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(src) + idx)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  }
}

template <DType T>
inline float value_as_f32(const void* src, int64_t idx) {
  if constexpr (T == DType::F32) return static_cast<const float*>(src)[idx];
  else if constexpr (T == DType::F16) return f16_to_f32(static_cast<const uint16_t*>(src)[idx]);
  else return bf16_to_f32(static_cast<const uint16_t*>(src)[idx]);
}

// Lane j of the result: the sum of the lanes of a[j].
inline __m256 transpose_sum8(const __m256 (&a)[8]) {
  const __m256 b0 = _mm256_hadd_ps(a[0], a[1]), b1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 b2 = _mm256_hadd_ps(a[4], a[5]), b3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 c0 = _mm256_hadd_ps(b0, b1), c1 = _mm256_hadd_ps(b2, b3);  // per 128-bit half: a0..a3 | a4..a7
  return _mm256_add_ps(_mm256_permute2f128_ps(c0, c1, 0x20), _mm256_permute2f128_ps(c0, c1, 0x31));
}

// Eight (or fewer) dot products at a time, reduced together; K rows of type T are converted
// in registers (no f32 copy of the cache).
template <DType T>
void qk_t(const float* q, const void* k, int64_t nk, int64_t dim, float* s) {
  const int64_t dim8 = dim / 8 * 8;
  for (int64_t j0 = 0; j0 < nk; j0 += 8) {
    const int64_t cnt = std::min<int64_t>(8, nk - j0);
    __m256 acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
    for (int64_t d = 0; d < dim8; d += 8) {
      const __m256 qv = _mm256_loadu_ps(q + d);
      for (int j = 0; j < 8; ++j)
        if (j < cnt) acc[j] = _mm256_fmadd_ps(qv, load8_as_f32<T>(k, (j0 + j) * dim + d), acc[j]);
    }
    alignas(32) float sums[8];
    _mm256_store_ps(sums, transpose_sum8(acc));
    for (int64_t j = 0; j < cnt; ++j) {
      float v = sums[j];
      for (int64_t d = dim8; d < dim; ++d) v += q[d] * value_as_f32<T>(k, (j0 + j) * dim + d);
      s[j0 + j] = v;
    }
  }
}

void qk_kv(const float* q, const void* k, DType t, int64_t nk, int64_t dim, float* s) {
  if (t == DType::F16) qk_t<DType::F16>(q, k, nk, dim, s);
  else if (t == DType::BF16) qk_t<DType::BF16>(q, k, nk, dim, s);
  else qk_t<DType::F32>(q, k, nk, dim, s);
}

void qk(const float* q, const float* k, int64_t nk, int64_t dim, float* s) { qk_t<DType::F32>(q, k, nk, dim, s); }

// acc[i] += p[i] . V for NR query rows sharing each converted V slice (a GQA group shares
// its K/V): 16 dims at a time (NR x 2 accumulators), then 8, then the scalar rest.
template <DType T, int NR>
void pv_rows(float* acc, int64_t ld_acc, const float* p, int64_t ld_p, const void* v, int64_t nk, int64_t dim) {
  int64_t d0 = 0;
  for (; d0 + 16 <= dim; d0 += 16) {
    __m256 a[NR][2];
    for (int r = 0; r < NR; ++r) {
      a[r][0] = _mm256_loadu_ps(acc + r * ld_acc + d0);
      a[r][1] = _mm256_loadu_ps(acc + r * ld_acc + d0 + 8);
    }
    for (int64_t j = 0; j < nk; ++j) {
      const __m256 v0 = load8_as_f32<T>(v, j * dim + d0), v1 = load8_as_f32<T>(v, j * dim + d0 + 8);
      for (int r = 0; r < NR; ++r) {
        const __m256 pj = _mm256_broadcast_ss(p + r * ld_p + j);
        a[r][0] = _mm256_fmadd_ps(pj, v0, a[r][0]);
        a[r][1] = _mm256_fmadd_ps(pj, v1, a[r][1]);
      }
    }
    for (int r = 0; r < NR; ++r) {
      _mm256_storeu_ps(acc + r * ld_acc + d0, a[r][0]);
      _mm256_storeu_ps(acc + r * ld_acc + d0 + 8, a[r][1]);
    }
  }
  for (; d0 + 8 <= dim; d0 += 8) {
    __m256 a[NR];
    for (int r = 0; r < NR; ++r) a[r] = _mm256_loadu_ps(acc + r * ld_acc + d0);
    for (int64_t j = 0; j < nk; ++j) {
      const __m256 v0 = load8_as_f32<T>(v, j * dim + d0);
      for (int r = 0; r < NR; ++r) a[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(p + r * ld_p + j), v0, a[r]);
    }
    for (int r = 0; r < NR; ++r) _mm256_storeu_ps(acc + r * ld_acc + d0, a[r]);
  }
  for (; d0 < dim; ++d0) {
    for (int r = 0; r < NR; ++r) {
      float s = acc[r * ld_acc + d0];
      for (int64_t j = 0; j < nk; ++j) s += p[r * ld_p + j] * value_as_f32<T>(v, j * dim + d0);
      acc[r * ld_acc + d0] = s;
    }
  }
}

template <DType T>
void pv_t(float* acc, int64_t rows, int64_t ld_acc, const float* p, int64_t ld_p, const void* v, int64_t nk,
          int64_t dim) {
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4) pv_rows<T, 4>(acc + i * ld_acc, ld_acc, p + i * ld_p, ld_p, v, nk, dim);
  switch (rows - i) {
    case 3: pv_rows<T, 3>(acc + i * ld_acc, ld_acc, p + i * ld_p, ld_p, v, nk, dim); break;
    case 2: pv_rows<T, 2>(acc + i * ld_acc, ld_acc, p + i * ld_p, ld_p, v, nk, dim); break;
    case 1: pv_rows<T, 1>(acc + i * ld_acc, ld_acc, p + i * ld_p, ld_p, v, nk, dim); break;
    default: break;
  }
}

void pv_kv(float* acc, int64_t rows, int64_t ld_acc, const float* p, int64_t ld_p, const void* v, DType t,
           int64_t nk, int64_t dim) {
  if (t == DType::F16) pv_t<DType::F16>(acc, rows, ld_acc, p, ld_p, v, nk, dim);
  else if (t == DType::BF16) pv_t<DType::BF16>(acc, rows, ld_acc, p, ld_p, v, nk, dim);
  else pv_t<DType::F32>(acc, rows, ld_acc, p, ld_p, v, nk, dim);
}

void pv(float* acc, int64_t rows, int64_t ld_acc, const float* p, int64_t ld_p, const float* v, int64_t nk,
        int64_t dim) {
  pv_t<DType::F32>(acc, rows, ld_acc, p, ld_p, v, nk, dim);
}

float exp_shift_sum(float* x, int64_t n, float shift) {
  __m256 sum = _mm256_setzero_ps();
  const __m256 s = _mm256_set1_ps(shift);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
    _mm256_storeu_ps(x + i, e);
    sum = _mm256_add_ps(sum, e);
  }
  float total = hsum(sum);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - shift);
    total += x[i];
  }
  return total;
}

void silu_mul(const float* g, const float* u, float* out, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i);
    const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), gv));
    const __m256 s = _mm256_div_ps(gv, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
  }
  for (; i < n; ++i) out[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void gelu_tanh_mul(const float* g, const float* u, float* out, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f), c1 = _mm256_set1_ps(-kGeluTanhC1), c3 = _mm256_set1_ps(-kGeluTanhC3);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(g + i);
    const __m256 neg_z = _mm256_mul_ps(x, _mm256_fmadd_ps(c3, _mm256_mul_ps(x, x), c1));  // -(C1 x + C3 x^3)
    const __m256 s = _mm256_div_ps(x, _mm256_add_ps(one, exp256(neg_z)));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
  }
  for (; i < n; ++i) {
    const float x = g[i], z = kGeluTanhC1 * x + kGeluTanhC3 * x * x * x;
    out[i] = x / (1.0f + std::exp(-z)) * u[i];
  }
}

// cap * tanh(x / cap) = cap - 2 cap / (1 + exp(2 x / cap)): exp overflowing to inf gives cap.
void softcap(float* x, int64_t n, float cap) {
  const __m256 one = _mm256_set1_ps(1.0f), c = _mm256_set1_ps(cap), two_c = _mm256_set1_ps(2.0f * cap);
  const __m256 k = _mm256_set1_ps(2.0f / cap);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp256(_mm256_mul_ps(_mm256_loadu_ps(x + i), k));
    _mm256_storeu_ps(x + i, _mm256_sub_ps(c, _mm256_div_ps(two_c, _mm256_add_ps(one, e))));
  }
  for (; i < n; ++i) x[i] = cap * std::tanh(x[i] / cap);
}

float sum_squares(const float* x, int64_t n) {
  __m256 s = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    s = _mm256_fmadd_ps(v, v, s);
  }
  float total = hsum(s);
  for (; i < n; ++i) total += x[i] * x[i];
  return total;
}

void scale_mul(const float* x, float s, const float* w, float* out, int64_t n) {
  const __m256 sv = _mm256_set1_ps(s);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), sv), _mm256_loadu_ps(w + i)));
  for (; i < n; ++i) out[i] = x[i] * s * w[i];
}

}  // namespace

const RowOps kRowOpsAvx2 = {to_f32, qk, pv, exp_shift_sum, silu_mul, gelu_tanh_mul, softcap, sum_squares, scale_mul,
                            qk_kv, pv_kv};

}  // namespace cserve::cpu::detail
