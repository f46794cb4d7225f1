// Quantized weights on the GPU: W[n][k] as blocks of 32 values w = d * u + m (core/quant.h's
// QB4 / QB8 blocks, which every quantized source is converted to), in one layout for every
// source:
//   codes  [n][k * bits / 8]  row-major, value j of a row at byte j (8-bit) or in byte j / 2,
//                             low nibble for even j (4-bit), so 16 bytes hold one 4-bit block
//                             (8 values per 32-bit word) and a warp's 16-byte loads cover 32
//                             consecutive blocks of a row;
//   scales [n][k / 32][2]     (d, m) pairs, f16 (half_scales) or f32, one 4- or 8-byte load
//                             per block.
#pragma once
#include <cstddef>
#include <cstdint>

// The layout's sizes are read by kernels and by host code (which g++ may compile).
#ifdef __CUDACC__
#define CSERVE_HOST_DEVICE __host__ __device__
#else
#define CSERVE_HOST_DEVICE
#endif

namespace cserve::cuda {

constexpr int64_t kQuantBlock = 32;

struct QuantLayout {
  int bits = 4;              // 4 or 8
  bool half_scales = false;  // (d, m) as f16: when every source block's are exact in f16
  int64_t n = 0, k = 0;      // k: a multiple of 32

  CSERVE_HOST_DEVICE int64_t blocks() const { return k / kQuantBlock; }
  CSERVE_HOST_DEVICE size_t row_code_bytes() const { return static_cast<size_t>(k * bits / 8); }
  CSERVE_HOST_DEVICE size_t scale_pair_bytes() const { return half_scales ? 4 : 8; }
  CSERVE_HOST_DEVICE size_t code_bytes() const { return static_cast<size_t>(n) * row_code_bytes(); }
  CSERVE_HOST_DEVICE size_t scale_bytes() const { return static_cast<size_t>(n * blocks()) * scale_pair_bytes(); }
};

// Writes one row of W into the layout: `u` holds k codes (below 16 when bits == 4), `d` and
// `m` one value per block. codes_row / scales_row point at the row's place in each array.
void pack_quant_row(const QuantLayout& layout, const uint8_t* u, const float* d, const float* m, uint8_t* codes_row,
                    void* scales_row);

// A packed weight in device memory, as the kernels take it.
struct QuantWeightView {
  QuantLayout layout;
  const uint8_t* codes = nullptr;
  const void* scales = nullptr;
  const float* bias = nullptr;     // n values, or null
  const int32_t* k_order = nullptr;  // k entries (GPTQ act-order: column j is input k_order[j]), or null
};

}  // namespace cserve::cuda
