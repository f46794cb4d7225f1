#include "quant/quant_linear.h"

#include <algorithm>
#include <stdexcept>

#include "common.cuh"
#include "elementwise/convert.h"
#include "quant/quant_kernels.h"

namespace cserve::cuda {

namespace {

constexpr int64_t kTileRowMultiple = 128;  // keeps each tile's slice of y 512-byte aligned for cuBLASLt

}  // namespace

QuantLinearPlan plan_quant_linear(const QuantLayout& w, int64_t m, QuantGemmPath path) {
  QuantLinearPlan plan;
  plan.gemv = path == QuantGemmPath::Gemv || (path == QuantGemmPath::Auto && m <= kQuantGemvMaxRows);
  if (plan.gemv) {
    plan.x_bytes = static_cast<size_t>(m * w.k) * sizeof(float);
    return plan;
  }
  plan.x_bytes = static_cast<size_t>(m * w.k) * 2;
  const int64_t fit = static_cast<int64_t>(kQuantTileBytes / (static_cast<size_t>(w.k) * 2));
  plan.tile_rows = std::min(w.n, std::max(kTileRowMultiple, fit / kTileRowMultiple * kTileRowMultiple));
  plan.tile_bytes = static_cast<size_t>(plan.tile_rows * w.k) * 2;
  return plan;
}

void invokeQuantLinear(CublasLtGemm* gemm, const QuantWeightView& w, const QuantLinearPlan& plan, const float* x,
                       int64_t ldx, int64_t m, float* y, int64_t ldy, bool accumulate, void* x_scratch,
                       void* tile_scratch, cudaStream_t stream) {
  const int64_t n = w.layout.n, k = w.layout.k;
  if (m <= 0 || n <= 0) return;
  if (plan.gemv) {
    const bool aligned = ldx % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
    if (w.k_order || !aligned) {
      invokeGatherColumns(x_scratch, kF32, x, ldx, m, k, w.k_order, stream);
      x = static_cast<const float*>(x_scratch);
      ldx = k;
    }
    invokeQuantGemv(y, ldy, x, ldx, m, w, accumulate, stream);
    return;
  }
  if (!gemm) throw std::invalid_argument("invokeQuantLinear: the tile path needs cuBLASLt");
  if (w.k_order) invokeGatherColumns(x_scratch, kBF16, x, ldx, m, k, w.k_order, stream);
  else invokeConvertRows(x_scratch, kBF16, k, x, kF32, ldx, m, k, stream);
  for (int64_t row0 = 0; row0 < n; row0 += plan.tile_rows) {
    const int64_t rows = std::min(plan.tile_rows, n - row0);
    invokeQuantDequantizeRows(tile_scratch, w, row0, rows, stream);
    gemm->run(y + row0, ldy, x_scratch, k, tile_scratch, m, rows, k, kBF16, accumulate, stream, kF32);
  }
  if (w.bias) invokeAddBias(y, ldy, w.bias, m, n, stream);
}

}  // namespace cserve::cuda
