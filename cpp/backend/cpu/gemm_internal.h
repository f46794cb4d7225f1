// Private to the CPU backend: the per-ISA GEMM panel kernels behind gemm().
// Each computes output panels [panel_begin, panel_end) (16 columns each) for all
// m rows; gemm() splits the panels over threads.
#pragma once
#include <cstdint>

#include "backend/cpu/kernels.h"

namespace cserve::cpu::detail {

struct GemmArgs {
  const PackedMatrix* w = nullptr;
  const float* x = nullptr;  // [m][k], row stride ldx
  int64_t m = 0, ldx = 0;
  float* y = nullptr;  // [m][n], row stride ldy
  int64_t ldy = 0;
  bool accumulate = false;
  const float* bias = nullptr;  // n values or nullptr
  // bf16 copy of x, rows of w->k_padded values (zero padded), row stride ldxb.
  // Only set for the AVX512_BF16 path with bf16 weights.
  const uint16_t* xb = nullptr;
  int64_t ldxb = 0;
};

constexpr int64_t kPanel = 16;

void gemm_panels_scalar(const GemmArgs& a, int64_t panel_begin, int64_t panel_end);
void gemm_panels_avx2(const GemmArgs& a, int64_t panel_begin, int64_t panel_end);
// f32/f16 weights, and bf16 weights by the shift-convert path.
void gemm_panels_avx512(const GemmArgs& a, int64_t panel_begin, int64_t panel_end);
// bf16 weights with vdpbf16ps; needs a.xb. Other dtypes go to gemm_panels_avx512.
void gemm_panels_avx512bf16(const GemmArgs& a, int64_t panel_begin, int64_t panel_end);
// Rounds rows of x to bf16 (nearest even) into out[m][k_padded] (ld_out), zero padding k..k_padded.
void convert_rows_bf16_avx512bf16(const float* x, int64_t m, int64_t ldx, int64_t k,
                                  int64_t k_padded, uint16_t* out, int64_t ld_out);

}  // namespace cserve::cpu::detail
