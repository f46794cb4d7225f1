// AVX2 quantized GEMM (also AVX-512 CPUs without VNNI): one block of 32 at a time.
// maddubs multiplies unsigned codes by int8 activations into int16 pairs; 8-bit codes
// are split into nibbles first so no pair sum can saturate (15 * 127 * 2 < 32767).
#include <immintrin.h>

#include "backend/cpu/qgemm.h"

namespace cserve::cpu::detail {

namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// sum(u * q) over a block, as 8 int32 lanes.
template <int Bits>
inline __m256i block_dot(const uint8_t* codes, int64_t b, __m256i q) {
  const __m256i mask = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (Bits == 4) {
    const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + (b / 2) * 32));
    const __m256i u = (b % 2) ? _mm256_and_si256(_mm256_srli_epi16(packed, 4), mask) : _mm256_and_si256(packed, mask);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), ones);
  } else {
    const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + b * 32));
    const __m256i lo = _mm256_and_si256(u, mask);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(u, 4), mask);
    const __m256i lo_sum = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, q), ones);
    const __m256i hi_sum = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, q), _mm256_set1_epi16(16));
    return _mm256_add_epi32(lo_sum, hi_sum);
  }
}

template <int Bits>
void run(const QGemmArgs& g, int64_t n_begin, int64_t n_end) {
  const QuantMatrix& w = *g.w;
  const QuantActs& a = *g.a;
  for_each_output(g, n_begin, n_end, [&](int64_t n, int64_t r) {
    const uint8_t* codes = w.codes.as<uint8_t>() + n * w.row_code_bytes();
    const uint8_t* scales = w.row_scales(n);
    const uint8_t* mins = w.row_mins(n);
    const int8_t* q = a.q.data() + r * a.k_padded;
    const float* dx = a.dx.data() + r * a.blocks;
    const float* sx = a.sx.data() + r * a.blocks;
    __m256 acc = _mm256_setzero_ps();
    float offset = 0.0f;
    for (int64_t b = 0; b < w.blocks; ++b) {
      const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + b * 32));
      const __m256 dot = _mm256_cvtepi32_ps(block_dot<Bits>(codes, b, qv));
      acc = _mm256_fmadd_ps(dot, _mm256_set1_ps(scale_at(w, scales, b) * dx[b]), acc);
      offset += scale_at(w, mins, b) * sx[b];
    }
    return hsum(acc) + offset;
  });
}

}  // namespace

void qgemm_rows_avx2(const QGemmArgs& g, int64_t n_begin, int64_t n_end) {
  if (g.w->bits == 4) run<4>(g, n_begin, n_end);
  else run<8>(g, n_begin, n_end);
}

}  // namespace cserve::cpu::detail
