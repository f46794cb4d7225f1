// Mixture of experts: each token's expert outputs combined with its routing weights,
// out[i][:] (= or +=) sum_j weights[i * k + j] * src[rows[i * k + j]][:] (f32 rows of `cols`).
// rows and weights live on the device.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace cserve::cuda {

void invokeCombineRows(float* out, const float* src, const int32_t* rows, const float* weights, int64_t n, int64_t k,
                       int64_t cols, bool accumulate, cudaStream_t stream);

}  // namespace cserve::cuda
