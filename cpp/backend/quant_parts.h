// What every backend derives alike from the parts of a quantized linear weight (QuantPart).
#pragma once
#include <cstdint>
#include <vector>

#include "backend/backend.h"

namespace cserve {

// What the parts make together: n rows of k values (k a multiple of 32), 4-bit codes when every
// part's type maps below 16, f16 scales when every part's are exact in f16.
struct QuantPartsShape {
  int64_t n = 0, k = 0;
  int bits = 4;
  bool half_scales = true;
  bool any_bias = false;
  std::vector<int32_t> k_order;  // shared_k_order
};
// Throws InvalidArgument for no parts, parts of different k, or k not a multiple of 32.
QuantPartsShape quant_parts_shape(const std::vector<QuantPart>& parts);

// The parts' common k order (empty: the natural one). Throws NotSupported when parts fused
// into one matrix have different orders (one activation order per GEMM), InvalidArgument when
// an entry is out of range.
std::vector<int32_t> shared_k_order(const std::vector<QuantPart>& parts);

}  // namespace cserve
