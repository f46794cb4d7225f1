#include "backend/cuda/cuda_quant_linear.h"

#include "backend/quant_parts.h"
#include "util/parallel_rows.h"

namespace cserve {

HostQuantWeight pack_host_quant_weight(const std::vector<QuantPart>& parts) {
  QuantPartsShape shape = quant_parts_shape(parts);
  HostQuantWeight w;
  cuda::QuantLayout& L = w.layout;
  L.n = shape.n;
  L.k = shape.k;
  L.bits = shape.bits;
  L.half_scales = shape.half_scales;
  w.k_order = std::move(shape.k_order);
  w.codes.resize(L.code_bytes());
  w.scales.resize(L.scale_bytes());
  if (shape.any_bias) w.bias.assign(static_cast<size_t>(L.n), 0.0f);
  const size_t scale_row_bytes = static_cast<size_t>(L.blocks()) * L.scale_pair_bytes();
  int64_t row0 = 0;
  for (const QuantPart& p : parts) {
    parallel_rows(p.rows, [&](int64_t begin, int64_t end) {
      std::vector<float> scratch(static_cast<size_t>(L.k)), d(static_cast<size_t>(L.blocks())),
          m(static_cast<size_t>(L.blocks()));
      std::vector<uint8_t> u(static_cast<size_t>(L.k));
      for (int64_t r = begin; r < end; ++r) {
        const int64_t src = p.row_order ? p.row_order[r] : r;
        const int64_t dst = row0 + r;
        to_qblocks(p.type, p.data + static_cast<size_t>(src) * p.row_stride, L.k, u.data(), d.data(), m.data(),
                   scratch.data());
        cuda::pack_quant_row(L, u.data(), d.data(), m.data(), w.codes.data() + dst * L.row_code_bytes(),
                             w.scales.data() + dst * scale_row_bytes);
        if (p.bias) w.bias[dst] = p.bias[src];  // as the CPU backend reads it
      }
    });
    row0 += p.rows;
  }
  return w;
}

}  // namespace cserve
