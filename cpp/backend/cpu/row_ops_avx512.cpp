// AVX-512 row routines (compiled with the AVX-512 flags).
// GCC 12 reports its own _mm512_undefined_* placeholders as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "backend/cpu/row_ops.h"

namespace cserve::cpu::detail {

namespace {

inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1u);
}

// exp(x) for |x| within float range; Cephes polynomial, about 1 ulp.
inline __m512 exp512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.33654f)), _mm512_set1_ps(88.3762626647949f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

inline __m512 load_as_f32(const void* src, DType t, int64_t i, __mmask16 m) {
  switch (t) {
    case DType::F32: return _mm512_maskz_loadu_ps(m, static_cast<const float*>(src) + i);
    case DType::F16:
      return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(src) + i));
    case DType::BF16: {
      const __m512i v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(src) + i));
      return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    }
    case DType::F8E4M3:
    case DType::F8E5M2: break;  // the CPU backend refuses fp8 KV caches
  }
  return _mm512_setzero_ps();
}

void to_f32(const void* src, DType t, float* dst, int64_t n) {
  if (t == DType::F32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * 4);
    return;
  }
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(dst + i, m, load_as_f32(src, t, i, m));
  }
}

// Sums each of a[0..15] across its lanes: result lane j = sum of a[j].
inline __m512 transpose_sum16(__m512 (&a)[16]) {
  __m512 b[8], c[4];
  for (int i = 0; i < 8; ++i)
    b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  for (int i = 0; i < 4; ++i)  // 128-bit lane l of c[i]: partial sums of a[4i..4i+3]
    c[i] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 d0 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 d1 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(c[2], c[3], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(d0, d1, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(d0, d1, _MM_SHUFFLE(3, 1, 3, 1)));
}

// Sixteen (or fewer) dot products at a time, reduced together; K rows of type t are
// converted in registers.
void qk_kv(const float* q, const void* k, DType t, int64_t nk, int64_t dim, float* s) {
  for (int64_t j0 = 0; j0 < nk; j0 += 16) {
    const int64_t cnt = std::min<int64_t>(16, nk - j0);
    __m512 acc[16];
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
    for (int64_t d = 0; d < dim; d += 16) {
      const __mmask16 m = tail_mask(dim - d);
      const __m512 qv = _mm512_maskz_loadu_ps(m, q + d);
      for (int j = 0; j < 16; ++j) {
        if (j < cnt) acc[j] = _mm512_fmadd_ps(qv, load_as_f32(k, t, (j0 + j) * dim + d, m), acc[j]);
      }
    }
    _mm512_mask_storeu_ps(s + j0, tail_mask(cnt), transpose_sum16(acc));
  }
}

// qk_kv for bf16 K on CPUs with AVX512_BF16: q rounded to bf16 once per call and
// vdpbf16ps against the K rows as stored (two multiply-adds per instruction lane, no
// conversion), as vLLM's CPU attention computes in bf16.
void qk_kv_dp(const float* q, const void* k, DType t, int64_t nk, int64_t dim, float* s) {
  if (t != DType::BF16 || dim > 256) {
    qk_kv(q, k, t, nk, dim, s);
    return;
  }
  const int64_t nvec = (dim + 31) / 32;
  __m512i qb[8];
  __mmask32 km[8];
  for (int64_t v = 0; v < nvec; ++v) {
    const int64_t d = v * 32, left = dim - d;
    const __m512 lo = _mm512_maskz_loadu_ps(tail_mask(left), q + d);
    const __m512 hi = _mm512_maskz_loadu_ps(tail_mask(left > 16 ? left - 16 : 0), q + d + 16);
    qb[v] = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));
    km[v] = left >= 32 ? __mmask32(0xffffffffu) : __mmask32((1u << left) - 1u);
  }
  const uint16_t* kb = static_cast<const uint16_t*>(k);
  // Scores of keys [j0, j0 + cnt), cnt <= 16, summed across their lanes together. Whole groups
  // (blocks of 16 or more are all whole) go without a check per key.
  auto group = [&](int64_t j0, int64_t cnt, auto whole) {
    __m512 acc[16];
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
    for (int64_t v = 0; v < nvec; ++v) {
      for (int j = 0; j < 16; ++j) {
        if (!decltype(whole)::value && j >= cnt) break;
        const __m512i kv = _mm512_maskz_loadu_epi16(km[v], kb + (j0 + j) * dim + v * 32);
        acc[j] = _mm512_dpbf16_ps(acc[j], reinterpret_cast<__m512bh>(qb[v]), reinterpret_cast<__m512bh>(kv));
      }
    }
    return transpose_sum16(acc);
  };
  int64_t j0 = 0;
  for (; j0 + 16 <= nk; j0 += 16) _mm512_storeu_ps(s + j0, group(j0, 16, std::true_type{}));
  if (j0 < nk) _mm512_mask_storeu_ps(s + j0, tail_mask(nk - j0), group(j0, nk - j0, std::false_type{}));
}

// Rows [0, R) of acc += p . V over nk keys for the 64 columns from d0: the R x 4 accumulators
// stay in registers (R and the type are constants here) and each V slice is converted once
// for the R rows (a GQA group shares its K/V).
template <int R, DType T>
void pv_slice(float* acc, int64_t ld_acc, const float* p, int64_t ld_p, const void* v, int64_t nk, int64_t dim,
              int64_t d0) {
  __mmask16 m[4];
  for (int c = 0; c < 4; ++c) {
    const int64_t left = dim - d0 - 16 * c;
    m[c] = tail_mask(left < 0 ? 0 : left);
  }
  __m512 a[R][4];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) a[r][c] = _mm512_maskz_loadu_ps(m[c], acc + r * ld_acc + d0 + 16 * c);
  const float* pr[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) pr[r] = p + r * ld_p;
  for (int64_t j = 0; j < nk; ++j) {
    const int64_t base = j * dim + d0;
    __m512 vv[4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) vv[c] = load_as_f32(v, T, base + 16 * c, m[c]);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 pj = _mm512_set1_ps(pr[r][j]);
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) a[r][c] = _mm512_fmadd_ps(pj, vv[c], a[r][c]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) _mm512_mask_storeu_ps(acc + r * ld_acc + d0 + 16 * c, m[c], a[r][c]);
}

template <DType T>
void pv_typed(float* acc, int64_t rows, int64_t ld_acc, const float* p, int64_t ld_p, const void* v, int64_t nk,
              int64_t dim) {
  for (int64_t i0 = 0; i0 < rows; i0 += 4) {
    float* a = acc + i0 * ld_acc;
    const float* pr = p + i0 * ld_p;
    for (int64_t d0 = 0; d0 < dim; d0 += 64) {
      switch (std::min<int64_t>(4, rows - i0)) {
        case 1: pv_slice<1, T>(a, ld_acc, pr, ld_p, v, nk, dim, d0); break;
        case 2: pv_slice<2, T>(a, ld_acc, pr, ld_p, v, nk, dim, d0); break;
        case 3: pv_slice<3, T>(a, ld_acc, pr, ld_p, v, nk, dim, d0); break;
        default: pv_slice<4, T>(a, ld_acc, pr, ld_p, v, nk, dim, d0); break;
      }
    }
  }
}

// acc[i] += p[i] . V over nk keys, with V rows of type t converted in registers.
void pv_kv(float* acc, int64_t rows, int64_t ld_acc, const float* p, int64_t ld_p, const void* v, DType t,
           int64_t nk, int64_t dim) {
  switch (t) {
    case DType::F32: pv_typed<DType::F32>(acc, rows, ld_acc, p, ld_p, v, nk, dim); break;
    case DType::F16: pv_typed<DType::F16>(acc, rows, ld_acc, p, ld_p, v, nk, dim); break;
    case DType::BF16: pv_typed<DType::BF16>(acc, rows, ld_acc, p, ld_p, v, nk, dim); break;
    case DType::F8E4M3:
    case DType::F8E5M2: break;  // the CPU backend refuses fp8 KV caches
  }
}

// Rows [0, R) of acc += p . V over nk keys for the W x 32 columns from d0, V in bf16, with
// vdpbf16ps over pairs of keys: the probabilities rounded to bf16 (as the AMX tiles take them),
// two V rows interleaved 16 bits at a time in registers, so one instruction multiplies and adds
// both keys' values (half the multiply-adds of widening V to f32, no conversions). The unpack
// leaves each accumulator's 16 columns in the order of `lo_cols` / `hi_cols`, undone once at the end.
template <int R, int W>
void pv_pairs(float* acc, int64_t ld_acc, const float* p, int64_t ld_p, const uint16_t* v, int64_t nk, int64_t dim,
              int64_t d0) {
  __m512 a[R][2 * W];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < 2 * W; ++c) a[r][c] = _mm512_setzero_ps();
  alignas(64) uint32_t pairs[R][16];  // 32 keys' probabilities per row, as bf16 pairs
  for (int64_t j0 = 0; j0 < nk; j0 += 32) {
    const int64_t left = nk - j0;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const float* pr = p + r * ld_p + j0;
      const __m512 lo = _mm512_maskz_loadu_ps(tail_mask(left), pr);
      const __m512 hi = _mm512_maskz_loadu_ps(tail_mask(left > 16 ? left - 16 : 0), pr + 16);
      _mm512_store_si512(pairs[r], (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
    const int64_t npairs = std::min<int64_t>(16, (left + 1) / 2);
    for (int64_t i = 0; i < npairs; ++i) {
      const uint16_t* v0 = v + (j0 + 2 * i) * dim + d0;
      const bool odd_end = j0 + 2 * i + 1 >= nk;  // the last key alone: its partner's values are 0
      __m512i x[2 * W];
#pragma GCC unroll 4
      for (int c = 0; c < W; ++c) {
        const __m512i k0 = _mm512_loadu_si512(v0 + 32 * c);
        const __m512i k1 = odd_end ? _mm512_setzero_si512() : _mm512_loadu_si512(v0 + dim + 32 * c);
        x[2 * c] = _mm512_unpacklo_epi16(k0, k1);
        x[2 * c + 1] = _mm512_unpackhi_epi16(k0, k1);
      }
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const __m512bh pj = (__m512bh)_mm512_set1_epi32(static_cast<int>(pairs[r][i]));
#pragma GCC unroll 4
        for (int c = 0; c < 2 * W; ++c) a[r][c] = _mm512_dpbf16_ps(a[r][c], pj, (__m512bh)x[c]);
      }
    }
  }
  // Column e of 32: unpacklo holds columns 8 (e / 4) + e % 4 of each 128-bit lane, unpackhi those 4 on.
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < W; ++c) {
      float* out = acc + r * ld_acc + d0 + 32 * c;
      const __m512 lo = a[r][2 * c], hi = a[r][2 * c + 1];
      _mm512_storeu_ps(out, _mm512_add_ps(_mm512_loadu_ps(out), _mm512_permutex2var_ps(lo, first, hi)));
      _mm512_storeu_ps(out + 16, _mm512_add_ps(_mm512_loadu_ps(out + 16), _mm512_permutex2var_ps(lo, second, hi)));
    }
}

template <int R>
void pv_pairs_rows(float* acc, int64_t ld_acc, const float* p, int64_t ld_p, const uint16_t* v, int64_t nk,
                   int64_t dim) {
  int64_t d0 = 0;
  for (; d0 + 64 <= dim; d0 += 64) pv_pairs<R, 2>(acc, ld_acc, p, ld_p, v, nk, dim, d0);
  if (d0 < dim) pv_pairs<R, 1>(acc, ld_acc, p, ld_p, v, nk, dim, d0);
}

// pv_kv on CPUs with AVX512_BF16: a bf16 V whose rows are whole 32-column vectors takes pv_pairs.
void pv_kv_dp(float* acc, int64_t rows, int64_t ld_acc, const float* p, int64_t ld_p, const void* v, DType t,
              int64_t nk, int64_t dim) {
  if (t != DType::BF16 || dim % 32 != 0) {
    pv_kv(acc, rows, ld_acc, p, ld_p, v, t, nk, dim);
    return;
  }
  const uint16_t* vb = static_cast<const uint16_t*>(v);
  for (int64_t i0 = 0; i0 < rows; i0 += 4) {
    float* a = acc + i0 * ld_acc;
    const float* pr = p + i0 * ld_p;
    switch (std::min<int64_t>(4, rows - i0)) {
      case 1: pv_pairs_rows<1>(a, ld_acc, pr, ld_p, vb, nk, dim); break;
      case 2: pv_pairs_rows<2>(a, ld_acc, pr, ld_p, vb, nk, dim); break;
      case 3: pv_pairs_rows<3>(a, ld_acc, pr, ld_p, vb, nk, dim); break;
      default: pv_pairs_rows<4>(a, ld_acc, pr, ld_p, vb, nk, dim); break;
    }
  }
}

void qk(const float* q, const float* k, int64_t nk, int64_t dim, float* s) { qk_kv(q, k, DType::F32, nk, dim, s); }

void pv(float* acc, int64_t rows, int64_t ld_acc, const float* p, int64_t ld_p, const float* v, int64_t nk,
        int64_t dim) {
  pv_kv(acc, rows, ld_acc, p, ld_p, v, DType::F32, nk, dim);
}

float exp_shift_sum(float* x, int64_t n, float shift) {
  __m512 sum = _mm512_setzero_ps();
  const __m512 s = _mm512_set1_ps(shift);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), s));
    _mm512_mask_storeu_ps(x + i, m, e);
    sum = _mm512_mask_add_ps(sum, m, sum, e);
  }
  return _mm512_reduce_add_ps(sum);
}

void silu_mul(const float* g, const float* u, float* out, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 gv = _mm512_maskz_loadu_ps(m, g + i);
    const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv));
    const __m512 s = _mm512_div_ps(gv, _mm512_add_ps(one, e));
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, u + i)));
  }
}

void gelu_tanh_mul(const float* g, const float* u, float* out, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f), c1 = _mm512_set1_ps(-kGeluTanhC1), c3 = _mm512_set1_ps(-kGeluTanhC3);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 x = _mm512_maskz_loadu_ps(m, g + i);
    const __m512 neg_z = _mm512_mul_ps(x, _mm512_fmadd_ps(c3, _mm512_mul_ps(x, x), c1));  // -(C1 x + C3 x^3)
    const __m512 s = _mm512_div_ps(x, _mm512_add_ps(one, exp512(neg_z)));
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, u + i)));
  }
}

// cap * tanh(x / cap) = cap - 2 cap / (1 + exp(2 x / cap)): exp overflowing to inf gives cap.
void softcap(float* x, int64_t n, float cap) {
  const __m512 one = _mm512_set1_ps(1.0f), c = _mm512_set1_ps(cap), two_c = _mm512_set1_ps(2.0f * cap);
  const __m512 k = _mm512_set1_ps(2.0f / cap);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 e = exp512(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), k));
    _mm512_mask_storeu_ps(x + i, m, _mm512_sub_ps(c, _mm512_div_ps(two_c, _mm512_add_ps(one, e))));
  }
}

float sum_squares(const float* x, int64_t n) {
  __m512 s = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(tail_mask(n - i), x + i);
    s = _mm512_fmadd_ps(v, v, s);
  }
  return _mm512_reduce_add_ps(s);
}

void scale_mul(const float* x, float s, const float* w, float* out, int64_t n) {
  const __m512 sv = _mm512_set1_ps(s);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), sv),
                                   _mm512_maskz_loadu_ps(m, w + i));
    _mm512_mask_storeu_ps(out + i, m, v);
  }
}

}  // namespace

const RowOps kRowOpsAvx512 = {to_f32, qk,       pv,        exp_shift_sum, silu_mul, gelu_tanh_mul,
                              softcap, sum_squares, scale_mul, qk_kv,        pv_kv};
const RowOps kRowOpsAvx512Bf16 = {to_f32,  qk,          pv,        exp_shift_sum, silu_mul, gelu_tanh_mul,
                                  softcap, sum_squares, scale_mul, qk_kv_dp,      pv_kv_dp};

}  // namespace cserve::cpu::detail
