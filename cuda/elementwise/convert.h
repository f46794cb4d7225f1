// Row-wise dtype conversion and bias add, for GEMM operands and outputs:
//   invokeConvertRows: dst[r][c] = src[r][c] converted (rows x cols, row strides in elements);
//   invokeAddBias: y[r][c] += bias[c] (f32).
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

namespace cserve::cuda {

void invokeConvertRows(void* dst, int dst_dtype, int64_t ld_dst, const void* src, int src_dtype, int64_t ld_src,
                       int64_t rows, int64_t cols, cudaStream_t stream);
void invokeAddBias(float* y, int64_t ldy, const float* bias, int64_t rows, int64_t cols, cudaStream_t stream);
// x[i] *= factor for i < n (f32).
void invokeScale(float* x, int64_t n, float factor, cudaStream_t stream);

}  // namespace cserve::cuda
