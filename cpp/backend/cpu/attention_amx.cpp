// AMX tile steps of paged attention (see attention_amx.h). Tiles as gemm_amx.cpp configures
// them (16 rows x 64 bytes): 0, 1 sums; 4 the A operand; 6, 7 B operands.
// GCC 12 reports its own _mm512_undefined_* placeholders as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "backend/cpu/attention_amx.h"

namespace cserve::cpu::detail {

namespace {

constexpr int64_t kTileBytes = 64;

// r[i] holds row i of a 16 x 16 matrix of 32-bit values; afterwards r[i] holds column i.
inline void transpose16x16(__m512i (&r)[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // Lane L of r[4i + c] gets column 4L + c of rows 4i .. 4i + 3.
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  __m512i out[16];
  for (int c = 0; c < 4; ++c) {
    const __m512i even0 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x88), odd0 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xdd);
    const __m512i even1 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x88);
    const __m512i odd1 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xdd);
    out[c] = _mm512_shuffle_i32x4(even0, even1, 0x88);
    out[8 + c] = _mm512_shuffle_i32x4(even0, even1, 0xdd);
    out[4 + c] = _mm512_shuffle_i32x4(odd0, odd1, 0x88);
    out[12 + c] = _mm512_shuffle_i32x4(odd0, odd1, 0xdd);
  }
  for (int i = 0; i < 16; ++i) r[i] = out[i];
}

}  // namespace

void amx_pack_keys(const uint16_t* const* rows, int64_t nk, int64_t nk_tiles, int64_t dim, uint16_t* dst) {
  const int64_t steps = dim / 32;
  for (int64_t kt = 0; kt < nk_tiles; ++kt) {
    for (int64_t st = 0; st < steps; ++st) {
      // A dim pair is one 32-bit value: the 16 keys' 32 dims of this step, transposed.
      __m512i r[16];
      for (int64_t j = 0; j < 16; ++j) {
        const int64_t key = kt * 16 + j;
        r[j] = key < nk ? _mm512_loadu_si512(rows[key] + st * 32) : _mm512_setzero_si512();
      }
      transpose16x16(r);
      uint16_t* tile = dst + (kt * steps + st) * 512;
      for (int i = 0; i < 16; ++i) _mm512_storeu_si512(tile + i * 32, r[i]);
    }
  }
}

void amx_pack_values(const uint16_t* const* rows, int64_t nk, int64_t nk_steps, int64_t dim, uint16_t* dst) {
  const int64_t dim_tiles = dim / 16;
  // Interleaves 16 values of key a with the same 16 of key b: lo takes values 0-15, hi 16-31.
  alignas(64) static const uint16_t kLo[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                               8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static const uint16_t kHi[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                               24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  const __m512i lo = _mm512_load_si512(kLo), hi = _mm512_load_si512(kHi);
  for (int64_t pair = 0; pair < nk_steps * 16; ++pair) {
    const int64_t a = 2 * pair, b = a + 1;
    uint16_t* row = dst + (pair / 16 * dim_tiles * 16 + pair % 16) * 32;  // tile (step, 0), row pair % 16
    for (int64_t d = 0; d < dim; d += 32) {
      const __m512i va = a < nk ? _mm512_loadu_si512(rows[a] + d) : _mm512_setzero_si512();
      const __m512i vb = b < nk ? _mm512_loadu_si512(rows[b] + d) : _mm512_setzero_si512();
      _mm512_storeu_si512(row + (d / 16) * 512, _mm512_permutex2var_epi16(va, lo, vb));
      _mm512_storeu_si512(row + (d / 16 + 1) * 512, _mm512_permutex2var_epi16(va, hi, vb));
    }
  }
}

void amx_scores(const uint16_t* q, int64_t row_tiles, int64_t dim, const uint16_t* keys, int64_t nk_tiles, float* s,
                int64_t lds) {
  const int64_t steps = dim / 32;
  for (int64_t rt = 0; rt < row_tiles; ++rt) {
    const uint16_t* qt = q + rt * 16 * dim;
    for (int64_t kt = 0; kt < nk_tiles; kt += 2) {
      _tile_zero(0);
      _tile_zero(1);
      for (int64_t st = 0; st < steps; ++st) {
        _tile_loadd(4, qt + st * 32, dim * 2);
        _tile_loadd(6, keys + (kt * steps + st) * 512, kTileBytes);
        _tile_loadd(7, keys + ((kt + 1) * steps + st) * 512, kTileBytes);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
      }
      float* out = s + rt * 16 * lds + kt * 16;
      _tile_stored(0, out, lds * 4);
      _tile_stored(1, out + 16, lds * 4);
    }
  }
}

void amx_scores_in_place(const uint16_t* q_packed, int64_t rows, int64_t dim, const uint16_t* const* k,
                         int64_t groups, int64_t ldk, float* s, int64_t lds) {
  alignas(64) float t[4][256];  // per group [16 keys][16 query rows]
  // The groups' sums side by side in tiles 0-3: independent chains, none waiting on the last.
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t st = 0; st < dim / 32; ++st) {
    _tile_loadd(6, q_packed + st * 512, kTileBytes);
    _tile_loadd(4, k[0] + st * 32, ldk * 2);
    _tile_dpbf16ps(0, 4, 6);
    if (groups > 1) {
      _tile_loadd(5, k[1] + st * 32, ldk * 2);
      _tile_dpbf16ps(1, 5, 6);
    }
    if (groups > 2) {
      _tile_loadd(4, k[2] + st * 32, ldk * 2);
      _tile_dpbf16ps(2, 4, 6);
    }
    if (groups > 3) {
      _tile_loadd(5, k[3] + st * 32, ldk * 2);
      _tile_dpbf16ps(3, 5, 6);
    }
  }
  _tile_stored(0, t[0], kTileBytes);
  if (groups > 1) _tile_stored(1, t[1], kTileBytes);
  if (groups > 2) _tile_stored(2, t[2], kTileBytes);
  if (groups > 3) _tile_stored(3, t[3], kTileBytes);
  const __m512i by_key = _mm512_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240);
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t r = 0; r < rows; ++r) _mm512_storeu_ps(s + r * lds + 16 * g, _mm512_i32gather_ps(by_key, t[g] + r, 4));
  }
}

void amx_values(const uint16_t* p, int64_t ldp, int64_t row_tiles, const uint16_t* values, int64_t nk_steps,
                int64_t dim, float* o) {
  const int64_t dim_tiles = dim / 16;
  for (int64_t rt = 0; rt < row_tiles; ++rt) {
    const uint16_t* pt = p + rt * 16 * ldp;
    float* ot = o + rt * 16 * dim;
    for (int64_t dt = 0; dt < dim_tiles; dt += 2) {
      _tile_loadd(0, ot + dt * 16, dim * 4);
      _tile_loadd(1, ot + dt * 16 + 16, dim * 4);
      for (int64_t st = 0; st < nk_steps; ++st) {
        _tile_loadd(4, pt + st * 32, ldp * 2);
        _tile_loadd(6, values + (st * dim_tiles + dt) * 512, kTileBytes);
        _tile_loadd(7, values + (st * dim_tiles + dt + 1) * 512, kTileBytes);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
      }
      _tile_stored(0, ot + dt * 16, dim * 4);
      _tile_stored(1, ot + dt * 16 + 16, dim * 4);
    }
  }
}

}  // namespace cserve::cpu::detail
