// AMX bf16 GEMM (Sapphire Rapids and later): tdpbf16ps multiplies a 16-row x 32-k tile of x by a
// 32-k x 16-column tile of W into 16 x 16 float sums. The packed bf16 layout [n/16][k/2][16][2]
// is already AMX's B-tile layout (a 64-byte row = 16 columns x one k pair), so B tiles load
// straight from the weights, and A tiles from the bf16 copy of x, laid out tile by tile. Two row
// tiles x two panels of sums (4 C tiles) take two A and two B loads per 32 k.
// GCC 12 reports its own _mm512_undefined_* placeholders as maybe-uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/cpu/gemm_internal.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace cserve::cpu {

namespace {

// Linux keeps AMX tile data off until the process asks for it (arch_prctl, Linux 5.16+).
bool request_tile_permission() {
#if defined(__x86_64__) && defined(SYS_arch_prctl)
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

bool detect_amx_bf16() {
#if defined(__x86_64__)
  unsigned a, b, c, d;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 0, a, b, c, d);
  const bool amx_bf16 = d & (1u << 22), amx_tile = d & (1u << 24);
  return amx_bf16 && amx_tile;
#else
  return false;
#endif
}

}  // namespace

bool cpu_detects_amx() {
  static const bool amx = detect_amx_bf16();
  return amx;
}

bool cpu_has_amx() {
  static const bool amx = [] {
    if (cpu_isa() != Isa::Avx512Bf16 || !cpu_detects_amx()) return false;
    const char* env = std::getenv("CSERVE_ISA");
    if (env != nullptr && *env != '\0' && std::strcmp(env, "amx") != 0) return false;
    return request_tile_permission();
  }();
  return amx;
}

namespace detail {

namespace {

constexpr int kTileRows = 16;
constexpr int kTileBytes = 64;  // per tile row: 16 floats, 32 bf16 or 16 bf16 pairs

// Adds bias / the old y and stores `rows` rows of a 16 x 16 block of sums, columns < n.
void store_block(const AmxOutput& out, const float* sums, int64_t row0, int64_t rows, int64_t panel) {
  const int64_t col0 = panel * kPanel;
  const int64_t valid = std::min<int64_t>(kPanel, out.n - col0);
  const __mmask16 mask = valid >= 16 ? __mmask16(0xffff) : __mmask16((1u << valid) - 1u);
  const __m512 bias = out.bias != nullptr ? _mm512_maskz_loadu_ps(mask, out.bias + col0) : _mm512_setzero_ps();
  for (int64_t r = 0; r < rows; ++r) {
    float* y = out.y + (row0 + r) * out.ldy + col0;
    __m512 v = _mm512_add_ps(_mm512_load_ps(sums + r * kPanel), bias);
    if (out.accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, y));
    if (out.stream && valid == 16 && (reinterpret_cast<uintptr_t>(y) & 63) == 0) _mm512_stream_ps(y, v);
    else _mm512_mask_storeu_ps(y, mask, v);
  }
}

// Gated output: `rows` rows of gate(g + bias, u + bias) for a 16 x 16 block of gate sums g and
// the matching up sums u (n / 2 columns on), into y's columns of the gate panel. g and u are
// overwritten. n / 2 is a multiple of 16: every column is valid.
void store_gated(const AmxOutput& out, float* g, float* u, int64_t row0, int64_t rows, int64_t panel) {
  const int64_t col0 = panel * kPanel, half = out.n / 2;
  if (out.bias != nullptr) {
    const __m512 bg = _mm512_loadu_ps(out.bias + col0), bu = _mm512_loadu_ps(out.bias + half + col0);
    for (int64_t r = 0; r < rows; ++r) {
      _mm512_store_ps(g + r * kPanel, _mm512_add_ps(_mm512_load_ps(g + r * kPanel), bg));
      _mm512_store_ps(u + r * kPanel, _mm512_add_ps(_mm512_load_ps(u + r * kPanel), bu));
    }
  }
  out.gate(g, u, g, rows * kPanel);
  if (out.yb != nullptr) {  // half a tile row each, rounded as convert_rows_bf16_tiles_avx512bf16 does
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t row = row0 + r;
      uint16_t* dst = out.yb + amx_tile_of(out.ldyb, row / kTileRows, col0 / 32) + row % kTileRows * 32 + col0 % 32;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), (__m256i)_mm512_cvtneps_pbh(_mm512_load_ps(g + r * kPanel)));
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    float* y = out.y + (row0 + r) * out.ldy + col0;
    const __m512 v = _mm512_load_ps(g + r * kPanel);
    if (out.stream && (reinterpret_cast<uintptr_t>(y) & 63) == 0) _mm512_stream_ps(y, v);
    else _mm512_storeu_ps(y, v);
  }
}

// Sums of row tiles [row0, row0 + 16 * RT) over one or two panels (NP) and k [k0, k1), added to
// the sums of k [0, k0) in `sums` (k0 > 0) or started there (k0 = 0). Tiles 0-3: sums (row tile
// r, panel p) at 2 * r + p; 4, 5: x; 6, 7: weights.
template <int RT, int NP>
void tile_block(const AmxPanels& w, const uint16_t* xb, int64_t ldxb, int64_t row0, int64_t k0, int64_t k1,
                float* sums) {
  const uint16_t* x0 = xb + amx_tile_of(ldxb, row0 / kTileRows, 0);
  const uint16_t* x1 = xb + amx_tile_of(ldxb, row0 / kTileRows + 1, 0);
  if (k0 == 0) {
    _tile_zero(0);
    if constexpr (NP > 1) _tile_zero(1);
    if constexpr (RT > 1) _tile_zero(2);
    if constexpr (RT > 1 && NP > 1) _tile_zero(3);
  } else {
    _tile_loadd(0, sums, kPanel * 4);
    if constexpr (NP > 1) _tile_loadd(1, sums + 256, kPanel * 4);
    if constexpr (RT > 1) _tile_loadd(2, sums + 512, kPanel * 4);
    if constexpr (RT > 1 && NP > 1) _tile_loadd(3, sums + 768, kPanel * 4);
  }
  for (int64_t k = k0; k < k1; k += 32) {
    // A 32-k step of a panel is 16 pair rows of 64 bytes, contiguous; so is one of x's tiles.
    _tile_loadd(6, w.panel[0] + k * kPanel, kTileBytes);
    _tile_loadd(4, x0 + k * kTileRows, kTileBytes);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (NP > 1) {
      _tile_loadd(7, w.panel[1] + k * kPanel, kTileBytes);
      _tile_dpbf16ps(1, 4, 7);
    }
    if constexpr (RT > 1) {
      _tile_loadd(5, x1 + k * kTileRows, kTileBytes);
      _tile_dpbf16ps(2, 5, 6);
      if constexpr (NP > 1) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, sums, kPanel * 4);
  if constexpr (NP > 1) _tile_stored(1, sums + 256, kPanel * 4);
  if constexpr (RT > 1) _tile_stored(2, sums + 512, kPanel * 4);
  if constexpr (RT > 1 && NP > 1) _tile_stored(3, sums + 768, kPanel * 4);
}

// Adds bias (or gates) and stores the finished sums of row tiles [row0, row0 + 16 * RT).
template <int RT, int NP>
void store_sums(const AmxPanels& w, int64_t m, int64_t row0, const AmxOutput& out, float* sums) {
  for (int r = 0; r < RT; ++r) {
    const int64_t rows = std::min<int64_t>(kTileRows, m - row0 - r * kTileRows);
    if (out.gate != nullptr) {
      store_gated(out, sums + 2 * r * 256, sums + (2 * r + 1) * 256, row0 + r * kTileRows, rows, w.first);
      continue;
    }
    for (int p = 0; p < NP; ++p) store_block(out, sums + (2 * r + p) * 256, row0 + r * kTileRows, rows, w.first + p);
  }
}

// Row tiles [tile_begin, tile_end) in pairs (and a last single one), k in blocks of at most
// kMaxBlockSteps steps of 32: each block's panel steps (16 KiB for two panels) stay in L1 while
// the row pairs' x tiles pass, where all of k (36 KiB of each at k = 576) would not. Measured
// alone (benchmarks/cpu_probes/amx_tile_block.cpp, 4 row pairs): 1522-1570 GFLOP/s with 18
// steps, 1659-1938 with 8.
template <int NP>
void run_tiles(const AmxPanels& w, const uint16_t* xb, int64_t ldxb, int64_t m, int64_t tile_begin,
               int64_t tile_end, const AmxOutput& out) {
  constexpr int64_t kMaxBlockSteps = 8;
  const int64_t steps = w.k_padded / 32, blocks = (steps + kMaxBlockSteps - 1) / kMaxBlockSteps;
  const int64_t block_k = (steps + blocks - 1) / blocks * 32;
  const int64_t tiles = tile_end - tile_begin, units = (tiles + 1) / 2;
  thread_local std::vector<float> storage;
  float* sums = aligned_scratch(storage, static_cast<size_t>(units * 1024));  // a 4-tile block per row pair
  for (int64_t k0 = 0; k0 < w.k_padded; k0 += block_k) {
    const int64_t k1 = std::min(w.k_padded, k0 + block_k);
    for (int64_t u = 0; u < units; ++u) {
      const int64_t row0 = (tile_begin + 2 * u) * kTileRows;
      if (2 * u + 1 < tiles) tile_block<2, NP>(w, xb, ldxb, row0, k0, k1, sums + u * 1024);
      else tile_block<1, NP>(w, xb, ldxb, row0, k0, k1, sums + u * 1024);
    }
  }
  for (int64_t u = 0; u < units; ++u) {
    const int64_t row0 = (tile_begin + 2 * u) * kTileRows;
    if (2 * u + 1 < tiles) store_sums<2, NP>(w, m, row0, out, sums + u * 1024);
    else store_sums<1, NP>(w, m, row0, out, sums + u * 1024);
  }
}

}  // namespace

void amx_configure_tiles() {
  // Every tile 16 rows x 64 bytes (tile_block says which holds what). A constant in memory:
  // GCC does not see ldtilecfg read its operand and may drop stores to a local one.
  static const AmxTileConfig cfg = [] {
    AmxTileConfig c;
    for (int t = 0; t < 8; ++t) {
      c.colsb[t] = kTileBytes;
      c.rows[t] = kTileRows;
    }
    return c;
  }();
  _tile_loadconfig(&cfg);
}

void amx_release_tiles() { _tile_release(); }

void amx_bf16_panels(const AmxPanels& w, const uint16_t* xb, int64_t ldxb, int64_t m, int64_t tile_begin,
                     int64_t tile_end, const AmxOutput& out) {
  if (w.panel[1] != nullptr) run_tiles<2>(w, xb, ldxb, m, tile_begin, tile_end, out);
  else run_tiles<1>(w, xb, ldxb, m, tile_begin, tile_end, out);
}

int64_t amx_row_block_tiles(int64_t ldxb) {
  constexpr int64_t kRowBlockBytes = 160 << 10;
  return std::max<int64_t>(2, (kRowBlockBytes / (ldxb * 2) / kTileRows) & ~int64_t{1});
}

void gemm_panels_amx_bf16(const GemmArgs& a, int64_t panel_begin, int64_t panel_end) {
  amx_configure_tiles();
  const int64_t width = a.gate != nullptr ? a.w->n / 2 : a.w->n;
  const bool stream = a.yb == nullptr && stream_result(a.m, width, a.accumulate);
  const AmxOutput out{a.y, a.ldy, a.bias, a.w->n, a.accumulate, stream, a.gate, a.yb, a.ldyb};
  const int64_t panel_elems = a.w->k_padded * kPanel;  // bf16 values per panel
  const uint16_t* data = a.w->data.as<uint16_t>();
  // Rows outer, in blocks of x of ~160 KiB that stay in L2 while the chunk's panels pass over
  // them (a prefill's x, 1.8 MB for 1600 rows of 576, does not: 16 x 100 tokens 0.56 -> 0.52 s).
  const int64_t row_tiles = a.tile_end >= 0 ? a.tile_end : (a.m + kTileRows - 1) / kTileRows;
  const int64_t rb = amx_row_block_tiles(a.ldxb);
  for (int64_t t0 = a.tile_begin; t0 < row_tiles; t0 += rb) {
    const int64_t t1 = std::min(row_tiles, t0 + rb);
    if (a.gate != nullptr) {  // gate panel p with its up panel
      const int64_t up = a.w->n / 2 / kPanel;
      for (int64_t p = panel_begin; p < panel_end; ++p) {
        const AmxPanels w{{data + p * panel_elems, data + (p + up) * panel_elems}, p, a.w->k_padded};
        amx_bf16_panels(w, a.xb, a.ldxb, a.m, t0, t1, out);
      }
    } else {
      for (int64_t p = panel_begin; p < panel_end; p += 2) {
        const bool pair = p + 1 < panel_end;
        const AmxPanels w{{data + p * panel_elems, pair ? data + (p + 1) * panel_elems : nullptr}, p, a.w->k_padded};
        amx_bf16_panels(w, a.xb, a.ldxb, a.m, t0, t1, out);
      }
    }
  }
  if (stream) _mm_sfence();  // the streamed rows are visible before the pool says the chunk is done
  amx_release_tiles();
}

}  // namespace detail

}  // namespace cserve::cpu
