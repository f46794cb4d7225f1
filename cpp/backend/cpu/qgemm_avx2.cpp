// Plain AVX2 quantized GEMM (AVX2 + FMA + F16C: Zen 3, Haswell..., and AVX-512 CPUs without
// VNNI) and the AVX2 activation quantizer; the kernel is qgemm_avx2_impl.h's.
#include "backend/cpu/qgemm_avx2_impl.h"

namespace cserve::cpu::detail {

void qgemm_panels_avx2(const QGemmArgs& g, int64_t panel_begin, int64_t panel_end) {
  dispatch<false, 8, 1, 3>(g, panel_begin, panel_end);
}

void quantize_acts_avx2(const float* x, int64_t ldx, int64_t row_begin, int64_t row_end, QuantActs& out) {
  const int64_t k = out.k;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t r = row_begin; r < row_end; ++r) {
    for (int64_t b = 0; b < out.blocks; ++b) {
      const float* xb = x + r * ldx + b * kQBlock;
      const __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8), v2 = _mm256_loadu_ps(xb + 16),
                   v3 = _mm256_loadu_ps(xb + 24);
      __m256 mx = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
      const float amax = _mm_cvtss_f32(m4);
      const float d = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      const __m256 vi = _mm256_set1_ps(inv);
      // Round to nearest even (the MXCSR default), as lrintf in the scalar quantizer.
      const __m256i q0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, vi)), q1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, vi)),
                    q2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, vi)), q3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, vi));
      // packs works within 128-bit lanes: the dwords come out as q0[0:4] q1[0:4] q2[0:4] q3[0:4] |
      // q0[4:8] q1[4:8] q2[4:8] q3[4:8]; the permutation restores the value order.
      const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.q + r * k + b * kQBlock),
                          _mm256_permutevar8x32_epi32(packed, order));
      const __m256i s = _mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3));
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
      s4 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 1));
      out.dx[r * out.blocks + b] = d;
      out.sx[r * out.blocks + b] = d * static_cast<float>(_mm_cvtsi128_si32(s4));
    }
  }
}

}  // namespace cserve::cpu::detail
