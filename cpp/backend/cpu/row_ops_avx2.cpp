// AVX2 row routines (compiled with -mavx2 -mfma -mf16c); tails are scalar.
#include <immintrin.h>

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

float dot(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  float s = hsum(_mm256_add_ps(s0, s1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

void qk(const float* q, const float* k, int64_t nk, int64_t dim, float* s) {
  for (int64_t j = 0; j < nk; ++j) s[j] = dot(q, k + j * dim, dim);
}

void pv(float* acc, int64_t rows, int64_t ld_acc, const float* p, int64_t ld_p, const float* v,
        int64_t nk, int64_t dim) {
  for (int64_t i = 0; i < rows; ++i) {
    float* a = acc + i * ld_acc;
    const float* pi = p + i * ld_p;
    int64_t d0 = 0;
    for (; d0 + 32 <= dim; d0 += 32) {
      __m256 a0 = _mm256_loadu_ps(a + d0), a1 = _mm256_loadu_ps(a + d0 + 8),
             a2 = _mm256_loadu_ps(a + d0 + 16), a3 = _mm256_loadu_ps(a + d0 + 24);
      for (int64_t j = 0; j < nk; ++j) {
        const __m256 pj = _mm256_set1_ps(pi[j]);
        const float* vj = v + j * dim + d0;
        a0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj), a0);
        a1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8), a1);
        a2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 16), a2);
        a3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 24), a3);
      }
      _mm256_storeu_ps(a + d0, a0);
      _mm256_storeu_ps(a + d0 + 8, a1);
      _mm256_storeu_ps(a + d0 + 16, a2);
      _mm256_storeu_ps(a + d0 + 24, a3);
    }
    for (; d0 + 8 <= dim; d0 += 8) {
      __m256 a0 = _mm256_loadu_ps(a + d0);
      for (int64_t j = 0; j < nk; ++j)
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(pi[j]), _mm256_loadu_ps(v + j * dim + d0), a0);
      _mm256_storeu_ps(a + d0, a0);
    }
    for (; d0 < dim; ++d0) {
      float s = a[d0];
      for (int64_t j = 0; j < nk; ++j) s += pi[j] * v[j * dim + d0];
      a[d0] = s;
    }
  }
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
                            nullptr, nullptr};

}  // namespace cserve::cpu::detail
