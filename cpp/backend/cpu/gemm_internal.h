// Private to the CPU backend: the per-ISA GEMM panel kernels behind gemm().
// Each computes output panels [panel_begin, panel_end) (16 columns each) for all
// m rows; gemm() splits the panels over threads.
#pragma once
#include <cstdint>

#include "backend/cpu/kernels.h"

namespace cserve::cpu::detail {

// out[i] = act(g[i]) * u[i] for i < n, elementwise (out may be g): a row op of row_ops.h.
using GateFn = void (*)(const float* g, const float* u, float* out, int64_t n);

struct GemmArgs {
  const PackedMatrix* w = nullptr;
  const float* x = nullptr;  // [m][k], row stride ldx
  int64_t m = 0, ldx = 0;
  float* y = nullptr;  // [m][n], row stride ldy
  int64_t ldy = 0;
  bool accumulate = false;
  const float* bias = nullptr;  // n values or nullptr
  // bf16 copy of x, rows of w->k_padded values (zero padded), row stride ldxb; for the AMX
  // kernel tile by tile instead: [row tiles][ldxb / 32][16 rows][32] (amx_tile_of).
  // Only set for the AVX512_BF16 path with bf16 weights.
  const uint16_t* xb = nullptr;
  int64_t ldxb = 0;
  // gemm_gated (the AMX and vdpbf16ps kernels only): the panels are the gate's, each paired with
  // the up panel n / 2 columns on, and y [m][n / 2] gets gate(g + bias, u + bias) instead of both.
  GateFn gate = nullptr;
  // Gated only, instead of y: the result rounded to bf16 as the x of a GEMM whose k is n / 2 (the
  // MLP's down projection) reads it: tiles laid out as xb's (steps of ldyb / 32) for AMX, rows of
  // ldyb values for vdpbf16ps.
  uint16_t* yb = nullptr;
  int64_t ldyb = 0;
  // The AMX kernel: row tiles [tile_begin, tile_end) of the result (all when tile_end < 0).
  int64_t tile_begin = 0, tile_end = -1;
  // The thread walks its groups of panels downward (ThreadPool::parallel_walk): the kernels'
  // prefetches past the end of k go to the group below instead of the one above.
  bool descending = false;
};

constexpr int64_t kPanel = 16;

// Where a tile's software prefetch `ahead` steps into each of its panels lands, in elements from
// the panel's start (panels of `steps` steps of `step` elements, `stride` elements apart): past
// the end of k, the same steps of the next group the thread walks to (ThreadPool::parallel_walk),
// `up` panels on, or `down` panels back (the whole group below) for a thread walking down.
inline int64_t prefetch_offset(const GemmArgs& a, int64_t up, int64_t down, int64_t ahead, int64_t steps,
                               int64_t step, int64_t stride) {
  if (ahead < steps) return ahead * step;
  return (a.descending ? -down : up) * stride + (ahead - steps) * step;
}

// Panels [begin, end) two at a time, two(p) for [p, p + 2) and one(p) for a lone panel, in the
// thread's direction: upward with the lone panel last, or downward with it first (it is the top
// of a range only where the range ends the matrix).
template <class Two, class One>
void walk_pairs(const GemmArgs& a, int64_t begin, int64_t end, Two two, One one) {
  if (a.descending) {
    int64_t top = end;
    if ((end - begin) % 2 != 0) one(--top);
    for (; top - 2 >= begin; top -= 2) two(top - 2);
    return;
  }
  int64_t p = begin;
  for (; p + 2 <= end; p += 2) two(p);
  if (p < end) one(p);
}

void gemm_panels_scalar(const GemmArgs& a, int64_t panel_begin, int64_t panel_end);
void gemm_panels_avx2(const GemmArgs& a, int64_t panel_begin, int64_t panel_end);
// f32/f16 weights, and bf16 weights by the shift-convert path.
void gemm_panels_avx512(const GemmArgs& a, int64_t panel_begin, int64_t panel_end);
// bf16 weights with vdpbf16ps; needs a.xb (and takes a.gate). Other dtypes go to gemm_panels_avx512.
void gemm_panels_avx512bf16(const GemmArgs& a, int64_t panel_begin, int64_t panel_end);
// AMX bf16 building blocks (gemm_amx.cpp).
// One or two panels of bf16 weights in the pair layout [k_padded/2][16][2] (k_padded a multiple
// of 32), the first of them panel number `first` of the output.
struct AmxPanels {
  const uint16_t* panel[2];  // panel[1] may be null
  int64_t first;
  int64_t k_padded;
};
struct AmxOutput {
  float* y;
  int64_t ldy;
  const float* bias;  // n values or null
  int64_t n;
  bool accumulate;
  bool stream;  // whole 64-byte rows of y stored past the caches (y is larger than they are)
  GateFn gate;   // as GemmArgs::gate: panel[0] the gate's, panel[1] its up panel, y n / 2 wide
  uint16_t* yb;  // as GemmArgs::yb
  int64_t ldyb;
};
// AMX's 64-byte tile configuration (palette 1): bytes per row and rows of each tile register.
struct alignas(64) AmxTileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
// The calling thread's tile registers: configured before amx_bf16_panels, released after.
void amx_configure_tiles();
void amx_release_tiles();
// Where the A tile of x's rows [16 t, 16 t + 16) and k [32 s, 32 s + 32) starts in tile-major xb
// (64-byte rows, contiguous: whole 1 KiB tiles stream in order where a strided load touches 16
// scattered lines).
inline int64_t amx_tile_of(int64_t ldxb, int64_t t, int64_t s) { return (t * (ldxb / 32) + s) * 512; }
// Rows of 16-row tiles [tile_begin, tile_end) of out (= or +=) xb (bf16, tile-major with k
// steps of ldxb / 32, rows allocated up to a multiple of 16) times the panels, plus bias (or
// gated: AmxOutput).
void amx_bf16_panels(const AmxPanels& w, const uint16_t* xb, int64_t ldxb, int64_t m, int64_t tile_begin,
                     int64_t tile_end, const AmxOutput& out);
// bf16 weights with AMX tiles (k_padded a multiple of 32); needs a.xb with rows up to the next
// multiple of 16 allocated.
void gemm_panels_amx_bf16(const GemmArgs& a, int64_t panel_begin, int64_t panel_end);
// The row tiles of x the AMX kernel takes together (~160 KiB of bf16 x, an even count): x's
// block stays in L2 while a range of panels passes over it.
int64_t amx_row_block_tiles(int64_t ldxb);
// Rounds rows of x to bf16 (nearest even) into out[m][k_padded] (ld_out), zero padding k..k_padded.
void convert_rows_bf16_avx512bf16(const float* x, int64_t m, int64_t ldx, int64_t k,
                                  int64_t k_padded, uint16_t* out, int64_t ld_out);
// The same for rows [r0, r1) of x into tile-major tiles (amx_tile_of) of k steps k_padded / 32.
void convert_rows_bf16_tiles_avx512bf16(const float* x, int64_t r0, int64_t r1, int64_t ldx, int64_t k,
                                        int64_t k_padded, uint16_t* tiles);

}  // namespace cserve::cpu::detail
