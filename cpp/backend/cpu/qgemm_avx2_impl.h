// The AVX2 quantized GEMM over 16-row panels (layout in qgemm.h), included by
// qgemm_avx2.cpp (plain AVX2 + FMA + F16C, as on Zen 3) and qgemm_avxvnni.cpp (the same
// with AVX-VNNI's ymm vpdpbusd); everything here has internal linkage, so the two
// translation units, compiled for different instruction sets, never share a function.
//
// A ymm holds 4 codes of 8 weight rows, so a panel is two halves of 8 output columns.
// A activation rows (A = 1..8) share each loaded and unpacked weight vector; their int32 block
// dots and float accumulators stay in registers. With few rows one pass streams both halves
// (2 x A accumulators); with more, each half gets its own pass, the second from cache. Per
// block, half and row:
//   AVX-VNNI: vpdpbusd(codes, broadcast 4 int8 activations), 8 per block.
//   4-bit:    maddubs of the nibbles summed in int16 over the whole block (each lane: 16
//             products, <= 16 * 15 * 127 = 30480, never saturating), then one madd.
//   8-bit:    the codes as signed s = u - 128: maddubs(|s|, sign(q, s)) (pair sums <=
//             2 * 128 * 127 = 32512, never saturating), then dot(u, q) = dot(s, q) + 128 sum(q)
//             is folded into the offset: d dx dot(s, q) + (m + 128 d) sx. For Q8_0 (m = -128 d)
//             the offset term is exactly zero. (Splitting the codes into nibbles instead takes
//             two maddubs, two madds and a shift per group and row.)
// Every row goes through the same operations whatever A is, so a row's result does not depend
// on the rows beside it. The codes are prefetched: in a first pass the blocks 4 ahead, in a
// second pass the next panel's block at the same position.
// Row counts and blockings were chosen with benchmarks/cpu_probes/qgemm_rows.cpp.
#pragma once
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

template <bool Half>
inline __m256 load8(const uint8_t* values, int half) {
  if constexpr (Half) return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(values + half * 16)));
  else return _mm256_loadu_ps(reinterpret_cast<const float*>(values) + half * 8);
}

template <bool Vnni>
inline __m256i dpbusd(__m256i acc, __m256i u, __m256i q) {
#if defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(acc, u, q);
#else
  static_assert(!Vnni, "AVX-VNNI kernels need -mavxvnni");
  return acc;
#endif
}

// The int32 dots of A rows with one half (8 weight rows) of block b's codes.
template <int Bits, bool Vnni, int A>
inline void block_dots(const uint8_t* codes, const int8_t* const (&x)[A], __m256i (&dot)[A]) {
  const __m256i mask = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int i = 0; i < A; ++i) dot[i] = _mm256_setzero_si256();
  if constexpr (Vnni && Bits == 8) {
    for (int grp = 0; grp < 8; ++grp) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + grp * 64));
      for (int i = 0; i < A; ++i) dot[i] = dpbusd<Vnni>(dot[i], v, bcast4(x[i] + grp * 4));
    }
  } else if constexpr (Vnni) {
    for (int grp = 0; grp < 4; ++grp) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + grp * 64));
      const __m256i lo = _mm256_and_si256(v, mask);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
      for (int i = 0; i < A; ++i) {
        dot[i] = dpbusd<Vnni>(dot[i], lo, bcast4(x[i] + grp * 8));
        dot[i] = dpbusd<Vnni>(dot[i], hi, bcast4(x[i] + grp * 8 + 4));
      }
    }
  } else if constexpr (Bits == 8) {
    const __m256i bias8 = _mm256_set1_epi8(static_cast<char>(0x80));
    for (int grp = 0; grp < 8; ++grp) {
      const __m256i s = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + grp * 64)), bias8);
      const __m256i magnitude = _mm256_abs_epi8(s);
      for (int i = 0; i < A; ++i) {
        const __m256i q = _mm256_sign_epi8(bcast4(x[i] + grp * 4), s);
        dot[i] = _mm256_add_epi32(dot[i], _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, q), ones));
      }
    }
  } else {
    __m256i sum16[A];
    for (int grp = 0; grp < 4; ++grp) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + grp * 64));
      const __m256i lo = _mm256_and_si256(v, mask);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
      for (int i = 0; i < A; ++i) {
        const __m256i pair = _mm256_add_epi16(_mm256_maddubs_epi16(lo, bcast4(x[i] + grp * 8)),
                                              _mm256_maddubs_epi16(hi, bcast4(x[i] + grp * 8 + 4)));
        sum16[i] = grp == 0 ? pair : _mm256_add_epi16(sum16[i], pair);
      }
    }
    for (int i = 0; i < A; ++i) dot[i] = _mm256_madd_epi16(sum16[i], ones);
  }
}

// A rows i0..i0+A-1 of panel p, NH halves (8 output columns each) from half0, into
// out[i][half * 8 ..]. NH = 2 streams the panel once (few rows: the accumulators of both
// halves fit the registers); NH = 1 takes two passes, the second from cache.
template <int Bits, bool Half, bool Vnni, int A, int NH>
inline void panel_pass(const QGemmArgs& g, int64_t p, int64_t i0, int half0, float (*out)[kQPanel]) {
  const QuantMatrix& w = *g.w;
  const QuantActs& a = *g.a;
  constexpr int64_t kBlockBytes = Bits * 64;  // 16 rows x 32 values
  // Prefetch: 4 blocks ahead in a first (or only) pass, the next panel's block in a second.
  const int64_t ahead = half0 == 0 ? 4 * kBlockBytes : w.blocks * kBlockBytes;
  const int8_t* x[A];
  for (int i = 0; i < A; ++i) x[i] = a.q + (i0 + i) * a.k;
  const float* dxs = a.dx.data() + i0 * a.blocks;
  const float* sxs = a.sx.data() + i0 * a.blocks;
  __m256 acc[NH][A];
  for (int h = 0; h < NH; ++h)
    for (int i = 0; i < A; ++i) acc[h][i] = _mm256_setzero_ps();
  for (int64_t b = 0; b < w.blocks; ++b) {
    const uint8_t* block = w.block_codes(p, b);
    for (int64_t line = 0; line < kBlockBytes; line += 64)
      _mm_prefetch(reinterpret_cast<const char*>(block + ahead + line), _MM_HINT_T0);
    const int8_t* xb[A];
    for (int i = 0; i < A; ++i) xb[i] = x[i] + b * kQBlock;
    for (int h = 0; h < NH; ++h) {
      const int half = half0 + h;
      __m256i dot[A];
      block_dots<Bits, Vnni, A>(block + half * 32, xb, dot);
      const __m256 d = load8<Half>(w.block_scales(p, b), half);
      __m256 m = load8<Half>(w.block_mins(p, b), half);
      if constexpr (!Vnni && Bits == 8) m = _mm256_fmadd_ps(d, _mm256_set1_ps(128.0f), m);
      for (int i = 0; i < A; ++i) {
        acc[h][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[i]), _mm256_mul_ps(d, _mm256_set1_ps(dxs[i * a.blocks + b])),
                                    acc[h][i]);
        acc[h][i] = _mm256_fmadd_ps(m, _mm256_set1_ps(sxs[i * a.blocks + b]), acc[h][i]);
      }
    }
  }
  for (int h = 0; h < NH; ++h)
    for (int i = 0; i < A; ++i) _mm256_storeu_ps(out[i] + (half0 + h) * 8, acc[h][i]);
}

// qgemm_store_panel's arithmetic eight columns at a time (the sums, plus the bias or 0, added to
// the old y when accumulating); whole 64-byte rows of a large result stored past the caches.
inline void store_row(const QGemmArgs& g, int64_t row, int64_t p, const float* v) {
  const QuantMatrix& w = *g.w;
  const int64_t n0 = p * kQPanel;
  if (n0 + kQPanel > w.n) {  // the last panel's tail
    qgemm_store_panel(g, row, p, v);
    return;
  }
  float* out = g.y + row * g.ldy + n0;
  const bool stream = g.stream && (reinterpret_cast<uintptr_t>(out) & 63) == 0;
  for (int h = 0; h < 2; ++h) {
    __m256 x = _mm256_add_ps(_mm256_load_ps(v + 8 * h),
                             w.bias.empty() ? _mm256_setzero_ps() : _mm256_loadu_ps(w.bias.data() + n0 + 8 * h));
    if (g.accumulate) x = _mm256_add_ps(_mm256_loadu_ps(out + 8 * h), x);
    if (stream) _mm256_stream_ps(out + 8 * h, x);
    else _mm256_storeu_ps(out + 8 * h, x);
  }
}

template <int Bits, bool Half, bool Vnni, int A, int kBothMax>
void panel(const QGemmArgs& g, int64_t p, int64_t i0) {
  alignas(32) float out[A][kQPanel];
  if constexpr (A <= kBothMax) {
    panel_pass<Bits, Half, Vnni, A, 2>(g, p, i0, 0, out);
  } else {
    panel_pass<Bits, Half, Vnni, A, 1>(g, p, i0, 0, out);
    panel_pass<Bits, Half, Vnni, A, 1>(g, p, i0, 1, out);
  }
  for (int i = 0; i < A; ++i) store_row(g, i0 + i, p, out[i]);
}

// Rows per pass: every m of 1..8 in one pass (a decode step, or a token and its drafts in a
// verification step); larger m in passes of kRows, the last 1..8 rows in one.
template <int Bits, bool Half, bool Vnni, int kRows, int kBothMax>
void run(const QGemmArgs& g, int64_t panel_begin, int64_t panel_end) {
  const int64_t m = g.a->m;
  for (int64_t p = panel_begin; p < panel_end; ++p) {
    int64_t i = 0;
    for (; m - i > 8; i += kRows) panel<Bits, Half, Vnni, kRows, kBothMax>(g, p, i);
    switch (m - i) {
      case 8: panel<Bits, Half, Vnni, 8, kBothMax>(g, p, i); break;
      case 7: panel<Bits, Half, Vnni, 7, kBothMax>(g, p, i); break;
      case 6: panel<Bits, Half, Vnni, 6, kBothMax>(g, p, i); break;
      case 5: panel<Bits, Half, Vnni, 5, kBothMax>(g, p, i); break;
      case 4: panel<Bits, Half, Vnni, 4, kBothMax>(g, p, i); break;
      case 3: panel<Bits, Half, Vnni, 3, kBothMax>(g, p, i); break;
      case 2: panel<Bits, Half, Vnni, 2, kBothMax>(g, p, i); break;
      case 1: panel<Bits, Half, Vnni, 1, kBothMax>(g, p, i); break;
      default: break;
    }
  }
}

// kRows: rows per pass when m > 8; kBoth4 / kBoth8: up to how many rows a pass streams both
// halves of a panel, for 4- and 8-bit codes (by measurement: as many as the registers hold).
template <bool Vnni, int kRows, int kBoth4, int kBoth8>
void dispatch(const QGemmArgs& g, int64_t panel_begin, int64_t panel_end) {
  const bool half = g.w->half_scales;
  if (g.w->bits == 4)
    half ? run<4, true, Vnni, kRows, kBoth4>(g, panel_begin, panel_end) : run<4, false, Vnni, kRows, kBoth4>(g, panel_begin, panel_end);
  else
    half ? run<8, true, Vnni, kRows, kBoth8>(g, panel_begin, panel_end) : run<8, false, Vnni, kRows, kBoth8>(g, panel_begin, panel_end);
  if (g.stream) _mm_sfence();  // the streamed rows are visible before the pool says the chunk is done
}

}  // namespace
}  // namespace cserve::cpu::detail
