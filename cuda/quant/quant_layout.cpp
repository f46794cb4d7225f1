#include "quant/quant_layout.h"

#include <cuda_fp16.h>

#include <cstring>

namespace cserve::cuda {

void pack_quant_row(const QuantLayout& layout, const uint8_t* u, const float* d, const float* m, uint8_t* codes_row,
                    void* scales_row) {
  if (layout.bits == 8) {
    std::memcpy(codes_row, u, static_cast<size_t>(layout.k));
  } else {
    for (int64_t j = 0; j < layout.k; j += 2) codes_row[j / 2] = static_cast<uint8_t>((u[j] & 0xF) | (u[j + 1] << 4));
  }
  for (int64_t b = 0; b < layout.blocks(); ++b) {
    if (layout.half_scales) {
      __half* pair = static_cast<__half*>(scales_row) + 2 * b;
      pair[0] = __float2half_rn(d[b]);
      pair[1] = __float2half_rn(m[b]);
    } else {
      float* pair = static_cast<float*>(scales_row) + 2 * b;
      pair[0] = d[b];
      pair[1] = m[b];
    }
  }
}

}  // namespace cserve::cuda
