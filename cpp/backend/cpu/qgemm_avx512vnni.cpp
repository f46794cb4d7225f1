// AVX512_VNNI quantized GEMM over 16-row panels (layout in qgemm.h): each vpdpbusd
// multiplies 4 codes of 16 rows by one broadcast group of 4 int8 activations, so the 16
// int32 lanes are the panel's 16 outputs; a block (32 values) is 8 of them, then one float
// multiply-add scales it (d of the 16 rows x dx) and one adds the offset (m x dx * sum q).
// Up to 8 activation rows share each loaded (and, for 4-bit, unpacked) weight vector.
#include <immintrin.h>

#include <cstring>

#include "backend/cpu/qgemm.h"

namespace cserve::cpu::detail {

namespace {

template <bool Half>
inline __m512 load16(const uint8_t* p) {
  if constexpr (Half) return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  else return _mm512_loadu_ps(reinterpret_cast<const float*>(p));
}

inline __m512i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// qgemm_store_panel's arithmetic in one vector (the sums, plus the bias or 0, added to the old y
// when accumulating); whole rows of a large result are stored past the caches.
inline void store_row(const QGemmArgs& g, int64_t row, int64_t p, __m512 v) {
  const QuantMatrix& w = *g.w;
  const int64_t n0 = p * kQPanel;
  const int64_t valid = std::min<int64_t>(kQPanel, w.n - n0);
  const __mmask16 mask = valid >= 16 ? __mmask16(0xffff) : __mmask16((1u << valid) - 1u);
  float* out = g.y + row * g.ldy + n0;
  v = _mm512_add_ps(v, w.bias.empty() ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask, w.bias.data() + n0));
  if (g.accumulate) v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, out), v);
  if (g.stream && valid == 16 && (reinterpret_cast<uintptr_t>(out) & 63) == 0) _mm512_stream_ps(out, v);
  else _mm512_mask_storeu_ps(out, mask, v);
}

template <int Bits, bool Half, int A>
void panel(const QGemmArgs& g, int64_t p, int64_t i0) {
  const QuantMatrix& w = *g.w;
  const QuantActs& a = *g.a;
  const int8_t* x[A];
  for (int i = 0; i < A; ++i) x[i] = a.q + (i0 + i) * a.k;
  __m512 acc[A];
  for (int i = 0; i < A; ++i) acc[i] = _mm512_setzero_ps();
  const __m512i mask = _mm512_set1_epi8(0x0F);
  constexpr int64_t kBlockBytes = Bits * 64;  // 16 rows x 32 values
  for (int64_t b = 0; b < w.blocks; ++b) {
    const uint8_t* codes = w.block_codes(p, b);
    // The codes stream 1 KiB ahead (the next panel's blocks follow this one's).
    for (int64_t line = 0; line < kBlockBytes; line += 64)
      _mm_prefetch(reinterpret_cast<const char*>(codes + 4 * kBlockBytes + line), _MM_HINT_T0);
    __m512i dot[A];
    for (int i = 0; i < A; ++i) dot[i] = _mm512_setzero_si512();
    if constexpr (Bits == 8) {
      for (int grp = 0; grp < 8; ++grp) {
        const __m512i v = _mm512_loadu_si512(codes + grp * 64);
        for (int i = 0; i < A; ++i) dot[i] = _mm512_dpbusd_epi32(dot[i], v, bcast4(x[i] + b * 32 + grp * 4));
      }
    } else {
      for (int grp = 0; grp < 4; ++grp) {
        const __m512i v = _mm512_loadu_si512(codes + grp * 64);
        const __m512i lo = _mm512_and_si512(v, mask);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
        for (int i = 0; i < A; ++i) {
          dot[i] = _mm512_dpbusd_epi32(dot[i], lo, bcast4(x[i] + b * 32 + grp * 8));
          dot[i] = _mm512_dpbusd_epi32(dot[i], hi, bcast4(x[i] + b * 32 + grp * 8 + 4));
        }
      }
    }
    const __m512 d = load16<Half>(w.block_scales(p, b));
    const __m512 m = load16<Half>(w.block_mins(p, b));
    for (int i = 0; i < A; ++i) {
      const float dx = a.dx[(i0 + i) * a.blocks + b], sx = a.sx[(i0 + i) * a.blocks + b];
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[i]), _mm512_mul_ps(d, _mm512_set1_ps(dx)), acc[i]);
      acc[i] = _mm512_fmadd_ps(m, _mm512_set1_ps(sx), acc[i]);
    }
  }
  for (int i = 0; i < A; ++i) store_row(g, i0 + i, p, acc[i]);
}

template <int Bits, bool Half>
void run(const QGemmArgs& g, int64_t panel_begin, int64_t panel_end) {
  const int64_t m = g.a->m;
  for (int64_t p = panel_begin; p < panel_end; ++p) {
    int64_t i = 0;
    switch (m) {  // a verification step (a token and its drafts): all rows share one pass
      case 5: panel<Bits, Half, 5>(g, p, 0); continue;
      case 6: panel<Bits, Half, 6>(g, p, 0); continue;
      case 7: panel<Bits, Half, 7>(g, p, 0); continue;
      case 8: panel<Bits, Half, 8>(g, p, 0); continue;
      default: break;
    }
    if (m >= 32)  // prefill: 8 rows share each weight load (decode steps run faster with 4)
      for (; i + 8 <= m; i += 8) panel<Bits, Half, 8>(g, p, i);
    for (; i + 4 <= m; i += 4) panel<Bits, Half, 4>(g, p, i);
    switch (m - i) {
      case 3: panel<Bits, Half, 3>(g, p, i); break;
      case 2: panel<Bits, Half, 2>(g, p, i); break;
      case 1: panel<Bits, Half, 1>(g, p, i); break;
      default: break;
    }
  }
}

}  // namespace

void quantize_acts_avx512(const float* x, int64_t ldx, int64_t row_begin, int64_t row_end, QuantActs& out) {
  const int64_t k = out.k;
  const __m512 sign = _mm512_set1_ps(-0.0f);
  for (int64_t r = row_begin; r < row_end; ++r) {
    for (int64_t b = 0; b < out.blocks; ++b) {
      const float* xb = x + r * ldx + b * kQBlock;
      const __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1)));
      const float d = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(inv)));
      const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(inv)));
      int8_t* q = out.q + r * k + b * kQBlock;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtsepi32_epi8(q0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16), _mm512_cvtsepi32_epi8(q1));
      out.dx[r * out.blocks + b] = d;
      out.sx[r * out.blocks + b] = d * static_cast<float>(_mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1)));
    }
  }
}

void qgemm_panels_avx512vnni(const QGemmArgs& g, int64_t panel_begin, int64_t panel_end) {
  const bool half = g.w->half_scales;
  if (g.w->bits == 4) half ? run<4, true>(g, panel_begin, panel_end) : run<4, false>(g, panel_begin, panel_end);
  else half ? run<8, true>(g, panel_begin, panel_end) : run<8, false>(g, panel_begin, panel_end);
  if (g.stream) _mm_sfence();  // the streamed rows are visible before the pool says the chunk is done
}

}  // namespace cserve::cpu::detail
