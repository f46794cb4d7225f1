// Quantized GEMM on AMX-INT8 tiles: per block of 32 values, tdpbsud multiplies 16 rows of int8
// activations (A: 16 x 32 bytes) by the block's codes of a 16-row panel (B: 8 rows of 64 bytes,
// 4 values of 16 weight rows each: the panel layout of qgemm.h, so 8-bit codes load as they
// are stored and 4-bit codes split into two rows per 64 bytes) into 16 x 16 int32 sums. Each
// block's sums are then scaled exactly as the vpdpbusd kernel scales them (one multiply-add by
// d dx, one by m sx, block after block), so the results are bit for bit those of
// qgemm_avx512vnni.cpp for any number of rows: a row never depends on its batch.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "backend/cpu/gemm_internal.h"
#include "backend/cpu/qgemm.h"

namespace cserve::cpu::detail {

namespace {

constexpr int kRows = 16;

// Tiles 0, 1: int32 sums of two blocks; 2, 3: their activations; 4, 5: their codes. A constant
// in memory: GCC does not see ldtilecfg read its operand and may drop stores to a local one.
void configure_int8_tiles() {
  static const AmxTileConfig cfg = [] {
    AmxTileConfig c;
    for (int t = 0; t < 2; ++t) {
      c.colsb[t] = 64, c.rows[t] = kRows;          // 16 x 16 int32
      c.colsb[2 + t] = 32, c.rows[2 + t] = kRows;  // 16 rows x 32 int8
      c.colsb[4 + t] = 64, c.rows[4 + t] = 8;      // 8 groups of 4 values x 16 weight rows
    }
    return c;
  }();
  _tile_loadconfig(&cfg);
}

template <bool Half>
inline __m512 load16(const uint8_t* p) {
  if constexpr (Half) return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  else return _mm512_loadu_ps(reinterpret_cast<const float*>(p));
}

// A panel's codes as B tiles, block after block (8 rows of 64 bytes each): 8-bit codes are
// already so; 4-bit codes are split into their low and high nibbles.
const uint8_t* panel_tiles(const QuantMatrix& w, int64_t p, std::vector<uint8_t>& scratch) {
  if (w.bits == 8) return w.block_codes(p, 0);
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  uint8_t* out = scratch.data();
  for (int64_t b = 0; b < w.blocks; ++b) {
    const uint8_t* codes = w.block_codes(p, b);
    for (int grp = 0; grp < 4; ++grp) {
      const __m512i v = _mm512_loadu_si512(codes + grp * 64);
      _mm512_storeu_si512(out + (b * 8 + 2 * grp) * 64, _mm512_and_si512(v, nibble));
      _mm512_storeu_si512(out + (b * 8 + 2 * grp + 1) * 64, _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble));
    }
  }
  return scratch.data();
}

// acc[r] += sums[r] d dx[r] + m sx[r] for the rows of one block (as the vpdpbusd kernel).
template <bool Half>
inline void scale_block(__m512 (&acc)[kRows], const int32_t* sums, const QuantMatrix& w, const QuantActs& a,
                        int64_t p, int64_t b, int64_t row0, int rows) {
  const __m512 d = load16<Half>(w.block_scales(p, b)), m = load16<Half>(w.block_mins(p, b));
  for (int r = 0; r < rows; ++r) {
    const float dx = a.dx[(row0 + r) * a.blocks + b], sx = a.sx[(row0 + r) * a.blocks + b];
    const __m512 dot = _mm512_cvtepi32_ps(_mm512_load_si512(sums + r * 16));
    acc[r] = _mm512_fmadd_ps(dot, _mm512_mul_ps(d, _mm512_set1_ps(dx)), acc[r]);
    acc[r] = _mm512_fmadd_ps(m, _mm512_set1_ps(sx), acc[r]);
  }
}

// Rows [row0, row0 + rows) (rows <= 16; the A tiles read 16, the extra ones are never stored)
// of panel p, over every block.
template <bool Half>
void row_tile(const QGemmArgs& g, int64_t p, const uint8_t* tiles, int64_t row0, int rows) {
  const QuantMatrix& w = *g.w;
  const QuantActs& a = *g.a;
  alignas(64) int32_t sums[2][kRows * 16];
  __m512 acc[kRows];
  for (auto& v : acc) v = _mm512_setzero_ps();
  const int8_t* x = a.q.data() + row0 * a.k;
  int64_t b = 0;
  for (; b + 2 <= w.blocks; b += 2) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_loadd(2, x + b * kQBlock, a.k);
    _tile_loadd(3, x + (b + 1) * kQBlock, a.k);
    _tile_loadd(4, tiles + b * 512, 64);
    _tile_loadd(5, tiles + (b + 1) * 512, 64);
    _tile_dpbsud(0, 2, 4);
    _tile_dpbsud(1, 3, 5);
    _tile_stored(0, sums[0], 64);
    _tile_stored(1, sums[1], 64);
    scale_block<Half>(acc, sums[0], w, a, p, b, row0, rows);
    scale_block<Half>(acc, sums[1], w, a, p, b + 1, row0, rows);
  }
  if (b < w.blocks) {
    _tile_zero(0);
    _tile_loadd(2, x + b * kQBlock, a.k);
    _tile_loadd(4, tiles + b * 512, 64);
    _tile_dpbsud(0, 2, 4);
    _tile_stored(0, sums[0], 64);
    scale_block<Half>(acc, sums[0], w, a, p, b, row0, rows);
  }
  alignas(64) float out[kQPanel];
  for (int r = 0; r < rows; ++r) {
    _mm512_store_ps(out, acc[r]);
    qgemm_store_panel(g, row0 + r, p, out);
  }
}

}  // namespace

void qgemm_panels_amx(const QGemmArgs& g, int64_t panel_begin, int64_t panel_end) {
  const QuantMatrix& w = *g.w;
  thread_local std::vector<uint8_t> scratch;
  if (w.bits == 4 && scratch.size() < static_cast<size_t>(w.blocks * 512)) scratch.resize(static_cast<size_t>(w.blocks * 512));
  configure_int8_tiles();
  for (int64_t p = panel_begin; p < panel_end; ++p) {
    const uint8_t* tiles = panel_tiles(w, p, scratch);
    for (int64_t row0 = 0; row0 < g.a->m; row0 += kRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kRows, g.a->m - row0));
      if (w.half_scales) row_tile<true>(g, p, tiles, row0, rows);
      else row_tile<false>(g, p, tiles, row0, rows);
    }
  }
  _tile_release();
}

}  // namespace cserve::cpu::detail
