// Quantized linear weights of the CUDA backend, kept as 4- or 8-bit codes with per-block (32)
// scales and offsets in cuda/quant's layout (quant/quant_layout.h), whatever the source (GGUF
// types, AWQ / GPTQ / compressed-tensors / fp8 rows): every part goes through core/quant.h's
// to_qblocks, as on the CPU. 4-bit when every part's type maps to codes below 16, f16 scales
// when every part's are exact in f16.
#pragma once
#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "core/buffer.h"
#include "quant/quant_layout.h"

namespace cserve {

// The packed arrays on the host, before their upload.
struct HostQuantWeight {
  cuda::QuantLayout layout;
  std::vector<uint8_t> codes, scales;
  std::vector<float> bias;        // empty or n values
  std::vector<int32_t> k_order;   // empty or k values
};
HostQuantWeight pack_host_quant_weight(const std::vector<QuantPart>& parts);

class CudaQuantLinear : public LinearWeight {
 public:
  CudaQuantLinear(const cuda::QuantLayout& layout, Buffer codes, Buffer scales, Buffer bias, Buffer k_order)
      : layout_(layout), codes_(std::move(codes)), scales_(std::move(scales)), bias_(std::move(bias)),
        k_order_(std::move(k_order)) {}
  int64_t n() const override { return layout_.n; }
  int64_t k() const override { return layout_.k; }
  size_t bytes() const override { return codes_.size() + scales_.size() + bias_.size() + k_order_.size(); }
  cuda::QuantWeightView view() const {
    cuda::QuantWeightView v;
    v.layout = layout_;
    v.codes = codes_.as<uint8_t>();
    v.scales = scales_.data();
    v.bias = bias_.size() ? bias_.as<float>() : nullptr;
    v.k_order = k_order_.size() ? k_order_.as<int32_t>() : nullptr;
    return v;
  }

 private:
  cuda::QuantLayout layout_;
  Buffer codes_, scales_, bias_, k_order_;
};

}  // namespace cserve
