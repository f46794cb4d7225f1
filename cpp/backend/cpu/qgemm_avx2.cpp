// AVX2 quantized GEMM (also AVX-512 CPUs without VNNI) over 16-row panels (layout in
// qgemm.h), 8 rows per ymm: maddubs multiplies the codes by a broadcast group of 4 int8
// activations into int16 pairs, madd sums pairs into int32 lanes (one per row). 8-bit codes
// are split into nibbles first so no int16 pair sum can saturate (15 * 127 * 2 < 32767).
#include <immintrin.h>

#include <cstring>

#include "backend/cpu/qgemm.h"

namespace cserve::cpu::detail {

namespace {

inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// sum over 4 values of u * q, u below 16, as 8 int32 lanes.
inline __m256i dot4(__m256i u, __m256i q) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), _mm256_set1_epi16(1));
}

template <int Bits>
inline __m256i block_dot(const uint8_t* codes, int half, const int8_t* x) {
  const __m256i mask = _mm256_set1_epi8(0x0F);
  __m256i acc = _mm256_setzero_si256();
  if constexpr (Bits == 8) {
    for (int grp = 0; grp < 8; ++grp) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + grp * 64 + half * 32));
      const __m256i q = bcast4(x + grp * 4);
      const __m256i lo = _mm256_and_si256(v, mask);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
      acc = _mm256_add_epi32(acc, dot4(lo, q));
      acc = _mm256_add_epi32(acc, _mm256_slli_epi32(dot4(hi, q), 4));
    }
  } else {
    for (int grp = 0; grp < 4; ++grp) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + grp * 64 + half * 32));
      acc = _mm256_add_epi32(acc, dot4(_mm256_and_si256(v, mask), bcast4(x + grp * 8)));
      acc = _mm256_add_epi32(acc, dot4(_mm256_and_si256(_mm256_srli_epi16(v, 4), mask), bcast4(x + grp * 8 + 4)));
    }
  }
  return acc;
}

inline __m256 load8(const QuantMatrix& w, const uint8_t* values, int half) {
  if (w.half_scales)
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(values + half * 16)));
  return _mm256_loadu_ps(reinterpret_cast<const float*>(values) + half * 8);
}

template <int Bits>
void run(const QGemmArgs& g, int64_t panel_begin, int64_t panel_end) {
  const QuantMatrix& w = *g.w;
  const QuantActs& a = *g.a;
  alignas(32) float out[kQPanel];
  for (int64_t p = panel_begin; p < panel_end; ++p) {
    for (int64_t i = 0; i < a.m; ++i) {
      for (int half = 0; half < 2; ++half) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t b = 0; b < w.blocks; ++b) {
          const __m256i dot = block_dot<Bits>(w.block_codes(p, b), half, a.q.data() + i * a.k + b * kQBlock);
          const float dx = a.dx[i * a.blocks + b], sx = a.sx[i * a.blocks + b];
          acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(load8(w, w.block_scales(p, b), half),
                                                                       _mm256_set1_ps(dx)), acc);
          acc = _mm256_fmadd_ps(load8(w, w.block_mins(p, b), half), _mm256_set1_ps(sx), acc);
        }
        _mm256_store_ps(out + half * 8, acc);
      }
      qgemm_store_panel(g, i, p, out);
    }
  }
}

}  // namespace

void qgemm_panels_avx2(const QGemmArgs& g, int64_t panel_begin, int64_t panel_end) {
  if (g.w->bits == 4) run<4>(g, panel_begin, panel_end);
  else run<8>(g, panel_begin, panel_end);
}

}  // namespace cserve::cpu::detail
