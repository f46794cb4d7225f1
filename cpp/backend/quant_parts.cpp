#include "backend/quant_parts.h"

#include "cserve/error.h"

namespace cserve {

std::vector<int32_t> shared_k_order(const std::vector<QuantPart>& parts) {
  const int64_t k = parts[0].cols;
  auto order_of = [&](const QuantPart& p) {
    std::vector<int32_t> o(static_cast<size_t>(k));
    for (int64_t j = 0; j < k; ++j) o[j] = p.k_order ? p.k_order[j] : static_cast<int32_t>(j);
    return o;
  };
  bool any = false;
  for (const QuantPart& p : parts) any = any || p.k_order != nullptr;
  if (!any) return {};
  std::vector<int32_t> order = order_of(parts[0]);
  for (const QuantPart& p : parts)
    if (order_of(p) != order)
      throw NotSupported("quantized parts fused into one matrix (q|k|v or gate|up) have different activation "
                         "orders (GPTQ act-order g_idx); cserve needs one order per fused matrix");
  for (int32_t c : order)
    if (c < 0 || c >= k) throw InvalidArgument("quantized weight: k order out of range");
  return order;
}

QuantPartsShape quant_parts_shape(const std::vector<QuantPart>& parts) {
  if (parts.empty()) throw InvalidArgument("quantized weight: no parts");
  QuantPartsShape s;
  s.k = parts[0].cols;
  for (const QuantPart& p : parts) {
    if (p.cols != s.k) throw InvalidArgument("quantized weight: parts differ in k");
    if (qblock_bits(p.type) == 8) s.bits = 8;
    if (!qblock_scales_are_f16(p.type)) s.half_scales = false;
    s.n += p.rows;
    s.any_bias = s.any_bias || p.bias != nullptr;
  }
  if (s.k % kQBlock != 0) throw InvalidArgument("quantized weight: k must be a multiple of 32");
  s.k_order = shared_k_order(parts);
  return s;
}

}  // namespace cserve
