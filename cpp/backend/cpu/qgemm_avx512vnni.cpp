// AVX512_VNNI quantized GEMM: vpdpbusd multiplies 64 unsigned weight codes by 64 int8
// activation codes, 4 products summed per int32 lane; a zmm covers a pair of blocks, so
// lanes 0-7 belong to block 2p and lanes 8-15 to block 2p+1 and are scaled by their own
// d_w * dx. The block offset m_w * (dx * sum q) is spread over the block's 8 lanes in the
// same accumulator. Tiles of R weight rows x A activation rows share each unpacked weight
// vector and each activation vector.
#include <immintrin.h>

#include "backend/cpu/qgemm.h"

namespace cserve::cpu::detail {

namespace {

// [v[0] x8, v[1] x8]: a pair of block values spread over the lanes of their blocks.
inline __m512 spread_pair(__m128 two) {
  const __m512i idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(two));
}

template <bool Half>
inline __m512 pair_at(const uint8_t* row, int64_t p) {
  if constexpr (Half) {
    int32_t bits;
    __builtin_memcpy(&bits, row + p * 4, 4);
    return spread_pair(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)));
  } else {
    return spread_pair(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(row + p * 8))));
  }
}

inline __m512 pair_at(const float* v, int64_t p) {
  return spread_pair(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(v + 2 * p))));
}

template <int Bits>
inline __m512i load_codes(const uint8_t* p) {
  if constexpr (Bits == 8) {
    return _mm512_loadu_si512(p);
  } else {
    const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i mask = _mm256_set1_epi8(0x0F);
    const __m256i lo = _mm256_and_si256(packed, mask);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), mask);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
  }
}

template <int Bits, bool Half, int R, int A>
void tile(const QGemmArgs& g, int64_t n0, int64_t r0) {
  const QuantMatrix& w = *g.w;
  const QuantActs& a = *g.a;
  const size_t row_bytes = w.row_code_bytes();
  const uint8_t* codes[R];
  const uint8_t* scales[R];
  const uint8_t* mins[R];
  for (int r = 0; r < R; ++r) {
    codes[r] = w.codes.as<uint8_t>() + (n0 + r) * row_bytes;
    scales[r] = w.row_scales(n0 + r);
    mins[r] = w.row_mins(n0 + r);
  }
  __m512 acc[R][A];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < A; ++i) acc[r][i] = _mm512_setzero_ps();
  const int64_t pairs = w.blocks / 2;
  constexpr int64_t pair_bytes = Bits == 8 ? 64 : 32;
  const __m512 eighth = _mm512_set1_ps(0.125f);
  for (int64_t p = 0; p < pairs; ++p) {
    __m512i wv[R];
    __m512 ws[R], wm[R];
    for (int r = 0; r < R; ++r) {
      wv[r] = load_codes<Bits>(codes[r] + p * pair_bytes);
      ws[r] = pair_at<Half>(scales[r], p);
      wm[r] = pair_at<Half>(mins[r], p);
    }
    for (int i = 0; i < A; ++i) {
      const __m512i xv = _mm512_loadu_si512(a.q.data() + (r0 + i) * a.k_padded + p * 64);
      const __m512 xs = pair_at(a.dx.data() + (r0 + i) * a.blocks, p);
      const __m512 xm = _mm512_mul_ps(pair_at(a.sx.data() + (r0 + i) * a.blocks, p), eighth);
      for (int r = 0; r < R; ++r) {
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[r], xv);
        acc[r][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(ws[r], xs), acc[r][i]);
        acc[r][i] = _mm512_fmadd_ps(wm[r], xm, acc[r][i]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < A; ++i) qgemm_store(g, r0 + i, n0 + r, _mm512_reduce_add_ps(acc[r][i]));
}

template <int Bits, bool Half, int R>
void rows(const QGemmArgs& g, int64_t n0) {
  const int64_t m = g.a->m;
  int64_t r0 = 0;
  for (; r0 + 4 <= m; r0 += 4) tile<Bits, Half, R, 4>(g, n0, r0);
  switch (m - r0) {
    case 3: tile<Bits, Half, R, 3>(g, n0, r0); break;
    case 2: tile<Bits, Half, R, 2>(g, n0, r0); break;
    case 1: tile<Bits, Half, R, 1>(g, n0, r0); break;
    default: break;
  }
}

template <int Bits, bool Half>
void run(const QGemmArgs& g, int64_t n_begin, int64_t n_end) {
  int64_t n = n_begin;
  for (; n + 4 <= n_end; n += 4) rows<Bits, Half, 4>(g, n);
  switch (n_end - n) {
    case 3: rows<Bits, Half, 3>(g, n); break;
    case 2: rows<Bits, Half, 2>(g, n); break;
    case 1: rows<Bits, Half, 1>(g, n); break;
    default: break;
  }
}

}  // namespace

void qgemm_rows_avx512vnni(const QGemmArgs& g, int64_t n_begin, int64_t n_end) {
  const bool half = g.w->half_scales;
  if (g.w->bits == 4) half ? run<4, true>(g, n_begin, n_end) : run<4, false>(g, n_begin, n_end);
  else half ? run<8, true>(g, n_begin, n_end) : run<8, false>(g, n_begin, n_end);
}

}  // namespace cserve::cpu::detail
