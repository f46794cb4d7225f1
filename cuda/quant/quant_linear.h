// y = x W^T (+ bias) for a quantized W (quant/quant_layout.h) and f32 activations, as the CUDA
// backend's linear runs it: up to kQuantGemvMaxRows activation rows by the GEMV kernel on the
// codes; more rows by dequantizing W one tile of rows at a time into a bf16 scratch (at most
// kQuantTileBytes) and multiplying each tile with cuBLASLt (x rounded to bf16, as the dense
// bf16 path does). Act-order weights get their activations gathered into the weight's column
// order first. The caller owns the scratch (so CUDA graphs can size it beforehand); nothing here
// allocates or waits on the host.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "gemm/cublaslt_gemm.h"
#include "quant/quant_layout.h"

namespace cserve::cuda {

constexpr int64_t kQuantGemvMaxRows = 32;
constexpr size_t kQuantTileBytes = size_t{32} << 20;

enum class QuantGemmPath { Auto, Gemv, Tiles };

struct QuantLinearPlan {
  bool gemv = true;
  size_t x_bytes = 0;     // activations: an aligned / reordered f32 copy (GEMV) or the bf16 copy (tiles)
  size_t tile_bytes = 0;  // one dequantized bf16 tile of W (tiles only)
  int64_t tile_rows = 0;
};

// What a call with m activation rows needs (the same for every x pointer and stride).
QuantLinearPlan plan_quant_linear(const QuantLayout& w, int64_t m, QuantGemmPath path = QuantGemmPath::Auto);

// y[m][n] (= or +=) x[m][k] W^T + bias. x_scratch / tile_scratch: plan.x_bytes / plan.tile_bytes
// of device memory. `gemm` is needed by the tile path only.
void invokeQuantLinear(CublasLtGemm* gemm, const QuantWeightView& w, const QuantLinearPlan& plan, const float* x,
                       int64_t ldx, int64_t m, float* y, int64_t ldy, bool accumulate, void* x_scratch,
                       void* tile_scratch, cudaStream_t stream);

}  // namespace cserve::cuda
