// Kernels on quantized weights (quant/quant_layout.h); activations f32, math f32.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "quant/quant_layout.h"

namespace cserve::cuda {

// y[i][:] (= or +=) x[i][:] W^T + bias for i < m, f32 x (row stride ldx, 16-byte aligned rows:
// ldx % 4 == 0) already in the weight's column order. One warp per output column reads each
// weight byte once per 8 activation rows, dequantizes in registers and accumulates in f32:
// the decode path, bound by the weight bytes.
void invokeQuantGemv(float* y, int64_t ldy, const float* x, int64_t ldx, int64_t m, const QuantWeightView& w,
                     bool accumulate, cudaStream_t stream);

// out[r][:] = rows [row0, row0 + rows) of W dequantized to bf16 ([rows][k], in the weight's
// column order): one tile of W for a cuBLASLt GEMM.
void invokeQuantDequantizeRows(void* out_bf16, const QuantWeightView& w, int64_t row0, int64_t rows,
                               cudaStream_t stream);

// out[i][:] = row ids[i] of W dequantized to f32, in the natural column order (tied embeddings).
void invokeQuantGatherRows(float* out, const QuantWeightView& w, const int32_t* ids, int64_t num_ids,
                           cudaStream_t stream);

// out[i][j] = x[i][order ? order[j] : j] as f32 or bf16 (out_dtype: DTypeId), out's row stride k:
// activations into an act-order weight's column order, or into an aligned copy.
void invokeGatherColumns(void* out, int out_dtype, const float* x, int64_t ldx, int64_t m, int64_t k,
                         const int32_t* order, cudaStream_t stream);

}  // namespace cserve::cuda
