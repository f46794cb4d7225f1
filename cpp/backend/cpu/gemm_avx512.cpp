// AVX-512 GEMM panel kernels (compiled with -mavx512f/bw/vl/dq/bf16 -mfma -mf16c).
// A thread owns a range of 16-column panels; it walks them in groups of up to
// NP panels and, for each group, passes every row tile of x (MR rows) over it,
// so each weight byte comes from memory once while the group stays in cache.
// Accumulators: MR x NP zmm registers. The k loop is cut into blocks and every
// row tile advances one block at a time (partial sums parked in an L1 scratch),
// so the weight stream is consumed at an even pace across all row tiles and the
// hardware prefetcher overlaps memory with compute even for a few tiles.
// GCC 12 reports its own _mm512_undefined_* placeholders as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>

#include "backend/cpu/gemm_internal.h"

namespace cserve::cpu::detail {

namespace {

// The first n of 16 lanes (none for n <= 0).
inline __mmask16 first_mask(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : n > 0 ? __mmask16((1u << n) - 1u) : __mmask16(0);
}

// Adds bias / the old y and stores one row's panel, masking columns >= n.
inline void store_panel(__m512 acc, const GemmArgs& a, int64_t row, int64_t col0) {
  const __mmask16 mask = first_mask(a.w->n - col0);
  float* y = a.y + row * a.ldy + col0;
  if (a.bias != nullptr) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask, a.bias + col0));
  if (a.accumulate) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask, y));
  _mm512_mask_storeu_ps(y, mask, acc);
}

// Where a tile's k range sits in the whole k loop, and its parked partial sums
// ([MR][NP][16] floats, row stride kAccStride).
struct KRange {
  int64_t begin, end;  // k steps (elements for f32/f16, pairs for bf16)
  bool first, last;
  float* park;
  // Software prefetch of the weights `prefetch` steps ahead (0: none), spread
  // over the row tiles of a block: this tile takes steps begin + phase + i * period.
  int64_t prefetch, pf_phase, pf_period;
};
constexpr int64_t kAccStride = 4 * kPanel;  // NP <= 4

template <int MR, int NP>
inline void load_tile(__m512 (&acc)[MR][NP], const KRange& kr) {
  for (int r = 0; r < MR; ++r)
    for (int p = 0; p < NP; ++p)
      acc[r][p] = kr.first ? _mm512_setzero_ps() : _mm512_load_ps(kr.park + r * kAccStride + p * kPanel);
}

template <int MR, int NP>
inline void store_tile(__m512 (&acc)[MR][NP], const GemmArgs& a, int64_t row0, int64_t panel0,
                       const KRange& kr) {
  for (int r = 0; r < MR; ++r)
    for (int p = 0; p < NP; ++p) {
      if (kr.last) {
        store_panel(acc[r][p], a, row0 + r, (panel0 + p) * kPanel);
      } else {
        _mm512_store_ps(kr.park + r * kAccStride + p * kPanel, acc[r][p]);
      }
    }
}

inline void prefetch_l2(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1); }

// prefetch_offset for a tile of NP panels: groups of 4, or a gated tile's NP / 2 gate panels
// (groups of 2) with their up panels.
template <int NP>
inline int64_t tile_prefetch_offset(const GemmArgs& a, int64_t ahead, int64_t steps, int64_t step, int64_t stride) {
  const bool gated = a.gate != nullptr;
  return prefetch_offset(a, gated ? NP / 2 : NP, gated ? 2 : 4, ahead, steps, step, stride);
}

// ---- f32 / f16 weights: [n/16][k][16] ----

template <bool F16>
inline __m512 load_w(const void* base, int64_t idx) {
  if constexpr (F16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(
        static_cast<const uint16_t*>(base) + idx)));
  } else {
    return _mm512_loadu_ps(static_cast<const float*>(base) + idx);
  }
}

template <bool F16, int MR, int NP>
__attribute__((noinline)) void tile_fp(const GemmArgs& a, int64_t row0, int64_t panel0, const KRange& kr) {
  const int64_t stride = a.w->k_padded * kPanel;
  const int64_t esize = F16 ? 2 : 4;
  const char* wbase = static_cast<const char*>(a.w->data.data()) + panel0 * stride * esize;
  const float* x = a.x + row0 * a.ldx;
  __m512 acc[MR][NP];
  load_tile<MR, NP>(acc, kr);
  int64_t next_pf = kr.prefetch > 0 ? kr.begin + kr.pf_phase : kr.end;
  for (int64_t c = kr.begin; c < kr.end; ++c) {
    if (c == next_pf) {
      const int64_t at = tile_prefetch_offset<NP>(a, c + kr.prefetch, a.w->k_padded, kPanel, stride);
      for (int p = 0; p < NP; ++p) prefetch_l2(wbase + (p * stride + at) * esize);
      next_pf += kr.pf_period;
    }
    __m512 w[NP];
    for (int p = 0; p < NP; ++p) w[p] = load_w<F16>(wbase + p * stride * esize, c * kPanel);
    for (int r = 0; r < MR; ++r) {
      const __m512 xv = _mm512_set1_ps(x[r * a.ldx + c]);
      for (int p = 0; p < NP; ++p) acc[r][p] = _mm512_fmadd_ps(xv, w[p], acc[r][p]);
    }
  }
  store_tile<MR, NP>(acc, a, row0, panel0, kr);
}

// ---- bf16 weights, pair layout [n/16][k/2][16][2], shift-convert to f32 ----

template <int MR, int NP>
__attribute__((noinline)) void tile_bf16_shift(const GemmArgs& a, int64_t row0, int64_t panel0, const KRange& kr) {
  const int64_t k = a.w->k, stride = a.w->k_padded * kPanel;  // in uint16
  const uint16_t* wbase = a.w->data.as<uint16_t>() + panel0 * stride;
  const float* x = a.x + row0 * a.ldx;
  const __m512i hi_mask = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  __m512 acc[MR][NP];
  load_tile<MR, NP>(acc, kr);
  const int64_t full_pairs = k / 2;
  int64_t next_pf = kr.prefetch > 0 ? kr.begin + kr.pf_phase : kr.end;
  for (int64_t c2 = kr.begin; c2 < std::min(kr.end, full_pairs); ++c2) {
    if (c2 == next_pf) {
      const int64_t at = tile_prefetch_offset<NP>(a, c2 + kr.prefetch, a.w->k_padded / 2, 2 * kPanel, stride);
      for (int p = 0; p < NP; ++p) prefetch_l2(wbase + p * stride + at);
      next_pf += kr.pf_period;
    }
    __m512 we[NP], wo[NP];
    for (int p = 0; p < NP; ++p) {
      const __m512i v = _mm512_loadu_si512(wbase + p * stride + c2 * 2 * kPanel);
      we[p] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
      wo[p] = _mm512_castsi512_ps(_mm512_and_si512(v, hi_mask));
    }
    for (int r = 0; r < MR; ++r) {
      const __m512 x0 = _mm512_set1_ps(x[r * a.ldx + 2 * c2]);
      const __m512 x1 = _mm512_set1_ps(x[r * a.ldx + 2 * c2 + 1]);
      for (int p = 0; p < NP; ++p) {
        acc[r][p] = _mm512_fmadd_ps(x0, we[p], acc[r][p]);
        acc[r][p] = _mm512_fmadd_ps(x1, wo[p], acc[r][p]);
      }
    }
  }
  if ((k & 1) && kr.end > full_pairs) {  // the last pair holds only an even element
    const int64_t c2 = full_pairs;
    for (int p = 0; p < NP; ++p) {
      const __m512i v = _mm512_loadu_si512(wbase + p * stride + c2 * 2 * kPanel);
      const __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
      for (int r = 0; r < MR; ++r)
        acc[r][p] = _mm512_fmadd_ps(_mm512_set1_ps(x[r * a.ldx + 2 * c2]), we, acc[r][p]);
    }
  }
  store_tile<MR, NP>(acc, a, row0, panel0, kr);
}

// ---- bf16 weights with vdpbf16ps against bf16-rounded x ----

// The panels a tile reads: NP from panel0 on, or for a gated GEMM NP / 2 gate panels from panel0
// on, then their up panels (n / 2 columns on).
template <int NP>
inline void tile_panels(const GemmArgs& a, int64_t panel0, const uint32_t* (&wp)[NP]) {
  const int64_t stride = a.w->k_padded / 2 * kPanel;  // in uint32 pairs
  const int64_t up = a.gate != nullptr ? a.w->n / 2 / kPanel - NP / 2 : 0;
  for (int p = 0; p < NP; ++p) wp[p] = a.w->data.as<uint32_t>() + (panel0 + p + (p >= NP / 2 ? up : 0)) * stride;
}

// A gated tile's result: gate(g + bias, u + bias) for its NP / 2 gate panels (acc[r][p]) and
// their up panels (acc[r][p + NP / 2]), into y's columns of the gate panels, or rounded to bf16
// into yb's (as convert_rows_bf16_avx512bf16 rounds). n / 2 is a multiple of 16.
template <int MR, int NP>
inline void store_gated(__m512 (&acc)[MR][NP], const GemmArgs& a, int64_t row0, int64_t panel0) {
  constexpr int G = NP / 2;
  const int64_t half = a.w->n / 2, col0 = panel0 * kPanel;
  alignas(64) float g[MR * G * kPanel], u[MR * G * kPanel];
  for (int r = 0; r < MR; ++r)
    for (int p = 0; p < G; ++p) {
      __m512 gv = acc[r][p], uv = acc[r][p + G];
      if (a.bias != nullptr) {
        gv = _mm512_add_ps(gv, _mm512_loadu_ps(a.bias + col0 + p * kPanel));
        uv = _mm512_add_ps(uv, _mm512_loadu_ps(a.bias + half + col0 + p * kPanel));
      }
      _mm512_store_ps(g + (r * G + p) * kPanel, gv);
      _mm512_store_ps(u + (r * G + p) * kPanel, uv);
    }
  a.gate(g, u, g, MR * G * kPanel);
  for (int r = 0; r < MR; ++r)
    for (int p = 0; p < G; ++p) {
      const __m512 v = _mm512_load_ps(g + (r * G + p) * kPanel);
      const int64_t col = col0 + p * kPanel;
      if (a.yb != nullptr) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(a.yb + (row0 + r) * a.ldyb + col),
                            (__m256i)_mm512_cvtneps_pbh(v));
      } else {
        _mm512_storeu_ps(a.y + (row0 + r) * a.ldy + col, v);
      }
    }
}

template <int MR, int NP>
__attribute__((noinline)) void tile_bf16_dp(const GemmArgs& a, int64_t row0, int64_t panel0, const KRange& kr) {
  const uint32_t* wp[NP];
  tile_panels<NP>(a, panel0, wp);
  const int64_t steps = a.w->k_padded / 2, stride = steps * kPanel;
  const uint32_t* xb = reinterpret_cast<const uint32_t*>(a.xb + row0 * a.ldxb);
  const int64_t ldxb = a.ldxb / 2;
  __m512 acc[MR][NP];
  load_tile<MR, NP>(acc, kr);
  int64_t next_pf = kr.prefetch > 0 ? kr.begin + kr.pf_phase : kr.end;
  for (int64_t c2 = kr.begin; c2 < kr.end; ++c2) {
    if (c2 == next_pf) {
      const int64_t at = tile_prefetch_offset<NP>(a, c2 + kr.prefetch, steps, kPanel, stride);
      for (int p = 0; p < NP; ++p) prefetch_l2(wp[p] + at);
      next_pf += kr.pf_period;
    }
    __m512i w[NP];
    for (int p = 0; p < NP; ++p) w[p] = _mm512_loadu_si512(wp[p] + c2 * kPanel);
    for (int r = 0; r < MR; ++r) {
      const __m512i xv = _mm512_set1_epi32(static_cast<int>(xb[r * ldxb + c2]));
      for (int p = 0; p < NP; ++p)
        acc[r][p] = _mm512_dpbf16_ps(acc[r][p], (__m512bh)xv, (__m512bh)w[p]);
    }
  }
  if (a.gate != nullptr && kr.last) store_gated<MR, NP>(acc, a, row0, panel0);
  else store_tile<MR, NP>(acc, a, row0, panel0, kr);
}

// ---- drivers ----
// The tile kernels are kept out of line so each gets the whole register file.

enum class Kind { F32, F16, Bf16Shift, Bf16Dp };

template <Kind K, int MR, int NP>
void run_tile(const GemmArgs& a, int64_t row0, int64_t panel0, const KRange& kr) {
  if constexpr (K == Kind::F32) tile_fp<false, MR, NP>(a, row0, panel0, kr);
  if constexpr (K == Kind::F16) tile_fp<true, MR, NP>(a, row0, panel0, kr);
  if constexpr (K == Kind::Bf16Shift) tile_bf16_shift<MR, NP>(a, row0, panel0, kr);
  if constexpr (K == Kind::Bf16Dp) tile_bf16_dp<MR, NP>(a, row0, panel0, kr);
}

// k steps per block: 64-byte lines per panel, so a block of a 4-panel group is 16 KiB.
template <Kind K>
constexpr int64_t kStepsPerBlock = K == Kind::F16 ? 128 : 64;
// Rows whose partial sums are parked at once (a multiple of every MRMAX).
constexpr int64_t kRowChunk = 48;

// Where x has more rows than one chunk (a prefill), a block is the whole k, up to 256 KiB of a
// 4-panel group (in L2): no sums parked between blocks, and the weights come from memory for the
// first tile only (Zen 5, the layer's GEMMs for 1600 rows: 8-17% faster than 16 KiB blocks).
// Fewer rows interleave their tiles block by block, so the weights stream at an even pace.
template <Kind K>
int64_t steps_per_block(int64_t m, int64_t steps) {
  return m > kRowChunk ? std::min(steps, 16 * kStepsPerBlock<K>) : kStepsPerBlock<K>;
}

template <Kind K, int MRMAX, int NP>
void rows_over_group(const GemmArgs& a, int64_t panel0, float* park) {
  const int64_t steps = (K == Kind::F32 || K == Kind::F16) ? a.w->k : a.w->k_padded / 2;
  const int64_t block = steps_per_block<K>(a.m, steps);
  const int64_t steps_per_line = K == Kind::F16 ? 2 : 1;
  for (int64_t chunk = 0; chunk < a.m; chunk += kRowChunk) {
    const int64_t chunk_end = std::min(a.m, chunk + kRowChunk);
    for (int64_t s0 = 0; s0 < steps; s0 += block) {
      const int64_t tiles = (chunk_end - chunk + MRMAX - 1) / MRMAX;
      // Prefetch a block of kStepsPerBlock ahead into L2 while this one is computed, only in the
      // first row chunk (later chunks find the weights in cache): the tiles of a block share the
      // lines, or the first tile asks for them all where a block is the whole k.
      const bool shared = block == kStepsPerBlock<K>;
      KRange kr{s0, std::min(steps, s0 + block), s0 == 0, s0 + block >= steps, nullptr,
                chunk == 0 ? kStepsPerBlock<K> : 0, 0, (shared ? tiles : 1) * steps_per_line};
      int64_t row = chunk;
      for (; row + MRMAX <= chunk_end; row += MRMAX) {
        kr.park = park + (row - chunk) * kAccStride;
        run_tile<K, MRMAX, NP>(a, row, panel0, kr);
        kr.pf_phase += steps_per_line;
        if (!shared) kr.prefetch = 0;
      }
      kr.park = park + (row - chunk) * kAccStride;
      switch (chunk_end - row) {
        case 1: if constexpr (MRMAX > 1) run_tile<K, 1, NP>(a, row, panel0, kr); break;
        case 2: if constexpr (MRMAX > 2) run_tile<K, 2, NP>(a, row, panel0, kr); break;
        case 3: if constexpr (MRMAX > 3) run_tile<K, 3, NP>(a, row, panel0, kr); break;
        case 4: if constexpr (MRMAX > 4) run_tile<K, 4, NP>(a, row, panel0, kr); break;
        case 5: if constexpr (MRMAX > 5) run_tile<K, 5, NP>(a, row, panel0, kr); break;
        default: break;
      }
    }
  }
}

template <Kind K, int MRMAX, int NPMAX>
void run_panels(const GemmArgs& a, int64_t panel_begin, int64_t panel_end) {
  static_assert(MRMAX <= 6 && NPMAX == 4 && kRowChunk % MRMAX == 0, "tile shape");
  alignas(64) float park[kRowChunk * kAccStride];
  int64_t p = panel_begin;
  if (a.gate != nullptr) {  // gate panels, two at a time with their two up panels
    walk_pairs(
        a, panel_begin, panel_end, [&](int64_t q) { rows_over_group<K, MRMAX, 4>(a, q, park); },
        [&](int64_t q) { rows_over_group<K, MRMAX, 2>(a, q, park); });
    return;
  }
  for (; p + NPMAX <= panel_end; p += NPMAX) rows_over_group<K, MRMAX, NPMAX>(a, p, park);
  switch (panel_end - p) {
    case 1: rows_over_group<K, MRMAX, 1>(a, p, park); break;
    case 2: rows_over_group<K, MRMAX, 2>(a, p, park); break;
    case 3: rows_over_group<K, MRMAX, 3>(a, p, park); break;
    default: break;
  }
}

}  // namespace

void gemm_panels_avx512(const GemmArgs& a, int64_t panel_begin, int64_t panel_end) {
  switch (a.w->dtype) {
    case DType::F32: run_panels<Kind::F32, 6, 4>(a, panel_begin, panel_end); break;
    case DType::F16: run_panels<Kind::F16, 6, 4>(a, panel_begin, panel_end); break;
    case DType::BF16: run_panels<Kind::Bf16Shift, 4, 4>(a, panel_begin, panel_end); break;
    case DType::F8E4M3:
    case DType::F8E5M2: break;  // never packed (pack_matrix refuses fp8)
  }
}

void gemm_panels_avx512bf16(const GemmArgs& a, int64_t panel_begin, int64_t panel_end) {
  if (a.w->dtype != DType::BF16 || a.xb == nullptr) {
    gemm_panels_avx512(a, panel_begin, panel_end);
    return;
  }
  run_panels<Kind::Bf16Dp, 6, 4>(a, panel_begin, panel_end);
}

void convert_rows_bf16_avx512bf16(const float* x, int64_t m, int64_t ldx, int64_t k,
                                  int64_t k_padded, uint16_t* out, int64_t ld_out) {
  for (int64_t r = 0; r < m; ++r) {
    const float* src = x + r * ldx;
    uint16_t* dst = out + r * ld_out;
    int64_t c = 0;
    for (; c + 16 <= k; c += 16) {
      const __m256bh v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + c));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c), (__m256i)v);
    }
    if (c < k) {
      const __mmask16 mask = first_mask(k - c);
      const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, src + c));
      _mm256_mask_storeu_epi16(dst + c, mask, (__m256i)v);
    }
    for (int64_t i = k; i < k_padded; ++i) dst[i] = 0;
  }
}

void convert_rows_bf16_tiles_avx512bf16(const float* x, int64_t r0, int64_t r1, int64_t ldx, int64_t k,
                                        int64_t k_padded, uint16_t* tiles) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* src = x + r * ldx;
    for (int64_t c = 0; c < k_padded; c += 32) {
      uint16_t* dst = tiles + amx_tile_of(k_padded, r / 16, c / 32) + (r % 16) * 32;
      const __m512 lo = _mm512_maskz_loadu_ps(first_mask(k - c), src + c);
      const __m512 hi = _mm512_maskz_loadu_ps(first_mask(k - c - 16), src + c + 16);
      _mm512_storeu_si512(dst, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));  // zeros past k
    }
  }
}

}  // namespace cserve::cpu::detail
