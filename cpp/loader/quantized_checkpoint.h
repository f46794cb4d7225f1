// Linear weights of quantized Hugging Face checkpoints (AWQ, GPTQ, compressed-tensors, fp8, and
// online fp8 of float weights) converted, one weight at a time, into cserve's own QB4 / QB8 rows
// (core/quant.h): blocks of 32 values w = d * u + m that every backend packs as quantized parts.
//
// An int group of g values (g a multiple of 32) with scale s and zero z is exactly g / 32 such
// blocks with d = s and m = -s * z; fp8 values are requantized per block of 32 to 8-bit codes.
// GPTQ act-order (g_idx) groups are made contiguous by a k order the part carries.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "core/quant.h"
#include "loader/quantization_config.h"
#include "loader/safetensors.h"

namespace cserve {

// Rows [row_begin, row_begin + row_count) and columns [col_begin, col_begin + col_count) of a weight
// of n rows (output features, of the whole tensor) and k columns (input features).
struct WeightShare {
  int64_t n = 0, k = 0;
  int64_t row_begin = 0, row_count = 0;
  int64_t col_begin = 0, col_count = 0;
};

// A share converted: `rows` rows of `cols` values of type QB4 / QB8, row r at data + r * row_stride;
// k_order null or cols entries (column j multiplies input feature k_order[j]). The model layer
// hands it to the backend as a QuantPart.
struct QuantizedRows {
  GgmlType type = GgmlType::QB4;
  const uint8_t* data = nullptr;
  int64_t rows = 0, cols = 0;
  size_t row_stride = 0;
  const int32_t* k_order = nullptr;
};

// Memory the rows point into: kept until they are packed.
struct QuantScratch {
  std::vector<Buffer> rows;
  std::vector<std::vector<int32_t>> orders;
  void clear() {
    rows.clear();
    orders.clear();
  }
};

// The share of the linear module `module` (e.g. "model.layers.0.mlp.up_proj") in QB4 / QB8 rows; nullopt when the module stays unquantized (an ignored module, or an embedding /
// LM head without quantized tensors). Throws NotFound for a missing tensor, InvalidArgument for
// tensors of the wrong shape, NotSupported for a share the format's groups cannot be split into
// (naming the module and why).
std::optional<QuantizedRows> read_quantized_linear(const SafetensorsCheckpoint& ckpt, const QuantizationConfig& config,
                                               const std::string& module, const WeightShare& share,
                                                   QuantScratch& scratch);

}  // namespace cserve
