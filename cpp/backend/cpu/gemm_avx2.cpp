// AVX2 GEMM panel kernels (compiled with -mavx2 -mfma -mf16c). Same blocking as
// the AVX-512 kernels: groups of NP 16-column panels (two ymm each) stay in
// cache while tiles of MR rows of x pass over them.
#include <immintrin.h>

#include <algorithm>

#include "backend/cpu/gemm_internal.h"

namespace cserve::cpu::detail {

namespace {

inline void store_panel(__m256 lo, __m256 hi, const GemmArgs& a, int64_t row, int64_t col0) {
  const int64_t valid = std::min<int64_t>(kPanel, a.w->n - col0);
  float* y = a.y + row * a.ldy + col0;
  if (valid == kPanel) {
    if (a.bias != nullptr) {
      lo = _mm256_add_ps(lo, _mm256_loadu_ps(a.bias + col0));
      hi = _mm256_add_ps(hi, _mm256_loadu_ps(a.bias + col0 + 8));
    }
    if (a.accumulate) {
      lo = _mm256_add_ps(lo, _mm256_loadu_ps(y));
      hi = _mm256_add_ps(hi, _mm256_loadu_ps(y + 8));
    }
    _mm256_storeu_ps(y, lo);
    _mm256_storeu_ps(y + 8, hi);
    return;
  }
  alignas(32) float tmp[kPanel];
  _mm256_store_ps(tmp, lo);
  _mm256_store_ps(tmp + 8, hi);
  for (int64_t l = 0; l < valid; ++l) {
    float v = tmp[l];
    if (a.bias != nullptr) v += a.bias[col0 + l];
    y[l] = a.accumulate ? y[l] + v : v;
  }
}

template <int MR, int NP>
inline void store_tile(__m256 (&acc)[MR][NP][2], const GemmArgs& a, int64_t row0, int64_t panel0) {
  for (int r = 0; r < MR; ++r)
    for (int p = 0; p < NP; ++p) store_panel(acc[r][p][0], acc[r][p][1], a, row0 + r, (panel0 + p) * kPanel);
}

// Software prefetch k steps ahead (as the AVX-512 kernels), by the group's first row tile: the
// hardware prefetcher alone left one stream of bf16 weights at 33 GB/s on Zen 5 where the
// AVX-512 kernel read 41 (decode_gemms 1, CSERVE_ISA=avx2: 7.7-8.5 -> 6.5-6.8 ms; 16 rows 28.2
// -> 25.7-26.0 ms).
constexpr int64_t kAhead = 64;

// Asks for the line `kAhead` steps past step c of each of the NP panels from wbase (panels
// `stride` bytes apart, `step` bytes a step, `steps` steps each; groups of 2 panels).
template <int NP>
inline void prefetch_ahead(const GemmArgs& a, const char* wbase, int64_t stride, int64_t step, int64_t steps,
                           int64_t c) {
  const int64_t at = prefetch_offset(a, NP, 2, c + kAhead, steps, step, stride);
  for (int p = 0; p < NP; ++p) _mm_prefetch(wbase + p * stride + at, _MM_HINT_T1);
}

template <bool F16>
inline __m256 load_w8(const void* base, int64_t idx) {
  if constexpr (F16) {
    return _mm256_cvtph_ps(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + idx)));
  } else {
    return _mm256_loadu_ps(static_cast<const float*>(base) + idx);
  }
}

// f32 / f16 weights: [n/16][k][16].
template <bool F16, int MR, int NP>
void tile_fp(const GemmArgs& a, int64_t row0, int64_t panel0) {
  const int64_t k = a.w->k, stride = a.w->k_padded * kPanel;
  const int64_t esize = F16 ? 2 : 4;
  const char* wbase = static_cast<const char*>(a.w->data.data()) + panel0 * stride * esize;
  const float* x = a.x + row0 * a.ldx;
  __m256 acc[MR][NP][2];
  for (int r = 0; r < MR; ++r)
    for (int p = 0; p < NP; ++p) acc[r][p][0] = acc[r][p][1] = _mm256_setzero_ps();
  const bool first = row0 == 0;
  for (int64_t c = 0; c < k; ++c) {
    if (first && (!F16 || c % 2 == 0))  // an f16 step is half a line
      prefetch_ahead<NP>(a, wbase, stride * esize, kPanel * esize, a.w->k_padded, c);
    __m256 xv[MR];
    for (int r = 0; r < MR; ++r) xv[r] = _mm256_broadcast_ss(x + r * a.ldx + c);
    for (int p = 0; p < NP; ++p) {
      for (int h = 0; h < 2; ++h) {
        const __m256 w = load_w8<F16>(wbase + p * stride * esize, c * kPanel + h * 8);
        for (int r = 0; r < MR; ++r) acc[r][p][h] = _mm256_fmadd_ps(xv[r], w, acc[r][p][h]);
      }
    }
  }
  store_tile<MR, NP>(acc, a, row0, panel0);
}

// bf16 weights, pair layout [n/16][k/2][16][2]: split each 32-bit pair into its
// even (low half, shifted up) and odd (high half, masked) element as f32.
template <int MR, int NP>
void tile_bf16(const GemmArgs& a, int64_t row0, int64_t panel0) {
  const int64_t k = a.w->k, stride = a.w->k_padded * kPanel;  // in uint16
  const uint16_t* wbase = a.w->data.as<uint16_t>() + panel0 * stride;
  const float* x = a.x + row0 * a.ldx;
  const __m256i hi_mask = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  __m256 acc[MR][NP][2];
  for (int r = 0; r < MR; ++r)
    for (int p = 0; p < NP; ++p) acc[r][p][0] = acc[r][p][1] = _mm256_setzero_ps();
  const int64_t full_pairs = k / 2;
  const bool first = row0 == 0;
  for (int64_t c2 = 0; c2 < full_pairs; ++c2) {
    if (first) {
      prefetch_ahead<NP>(a, reinterpret_cast<const char*>(wbase), stride * 2, 2 * kPanel * 2, a.w->k_padded / 2,
                         c2);
    }
    __m256 x0[MR], x1[MR];
    for (int r = 0; r < MR; ++r) {
      x0[r] = _mm256_broadcast_ss(x + r * a.ldx + 2 * c2);
      x1[r] = _mm256_broadcast_ss(x + r * a.ldx + 2 * c2 + 1);
    }
    for (int p = 0; p < NP; ++p) {
      for (int h = 0; h < 2; ++h) {
        const __m256i v = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(wbase + p * stride + c2 * 2 * kPanel + h * 16));
        const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
        const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(v, hi_mask));
        for (int r = 0; r < MR; ++r) {
          acc[r][p][h] = _mm256_fmadd_ps(x0[r], we, acc[r][p][h]);
          acc[r][p][h] = _mm256_fmadd_ps(x1[r], wo, acc[r][p][h]);
        }
      }
    }
  }
  if (k & 1) {  // the last pair holds only an even element
    const int64_t c2 = full_pairs;
    for (int p = 0; p < NP; ++p) {
      for (int h = 0; h < 2; ++h) {
        const __m256i v = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(wbase + p * stride + c2 * 2 * kPanel + h * 16));
        const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
        for (int r = 0; r < MR; ++r)
          acc[r][p][h] = _mm256_fmadd_ps(_mm256_broadcast_ss(x + r * a.ldx + 2 * c2), we, acc[r][p][h]);
      }
    }
  }
  store_tile<MR, NP>(acc, a, row0, panel0);
}

enum class Kind { F32, F16, Bf16 };

template <Kind K, int MR, int NP>
void run_tile(const GemmArgs& a, int64_t row0, int64_t panel0) {
  if constexpr (K == Kind::F32) tile_fp<false, MR, NP>(a, row0, panel0);
  if constexpr (K == Kind::F16) tile_fp<true, MR, NP>(a, row0, panel0);
  if constexpr (K == Kind::Bf16) tile_bf16<MR, NP>(a, row0, panel0);
}

template <Kind K, int MRMAX, int NP>
void rows_over_group(const GemmArgs& a, int64_t panel0) {
  static_assert(MRMAX <= 3, "tile shape");
  int64_t row = 0;
  for (; row + MRMAX <= a.m; row += MRMAX) run_tile<K, MRMAX, NP>(a, row, panel0);
  switch (a.m - row) {
    case 1: if constexpr (MRMAX > 1) run_tile<K, 1, NP>(a, row, panel0); break;
    case 2: if constexpr (MRMAX > 2) run_tile<K, 2, NP>(a, row, panel0); break;
    default: break;
  }
}

template <Kind K, int MRMAX>
void run_panels(const GemmArgs& a, int64_t panel_begin, int64_t panel_end) {
  walk_pairs(
      a, panel_begin, panel_end, [&](int64_t p) { rows_over_group<K, MRMAX, 2>(a, p); },
      [&](int64_t p) { rows_over_group<K, MRMAX, 1>(a, p); });
}

}  // namespace

void gemm_panels_avx2(const GemmArgs& a, int64_t panel_begin, int64_t panel_end) {
  switch (a.w->dtype) {
    case DType::F32: run_panels<Kind::F32, 3>(a, panel_begin, panel_end); break;
    case DType::F16: run_panels<Kind::F16, 3>(a, panel_begin, panel_end); break;
    case DType::BF16: run_panels<Kind::Bf16, 2>(a, panel_begin, panel_end); break;
    case DType::F8E4M3:
    case DType::F8E5M2: break;  // never packed (pack_matrix refuses fp8)
  }
}

}  // namespace cserve::cpu::detail
