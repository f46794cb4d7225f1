// RMSNorm, optionally fused with the residual add (vLLM's fused_add_rms_norm):
//   with residual: h = x + residual; residual = h; out = h / rms(h) * w
//   without:       out = x / rms(x) * w
// Rows of `dim` values with row stride ld (elements) for x, residual and out.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace cserve::cuda {

void invokeRmsNorm(void* out, const void* x, void* residual, const float* weight, int64_t rows, int64_t dim,
                   int64_t ld, float eps, int dtype, cudaStream_t stream);

// Per-head norms (q/k norms) in one launch: token t's `heads` rows of `dim` are contiguous at
// t * ld; out may be x. Any dim works (no shared memory holds the row).
void invokeRmsNormHeads(void* out, const void* x, void* residual, const float* weight, int64_t tokens, int64_t heads,
                        int64_t dim, int64_t ld, float eps, int dtype, cudaStream_t stream);

// A norm on a sublayer's output before its residual add (OLMo 2):
//   residual = residual + x / rms(x) * w
void invokeRmsNormAdd(void* residual, const void* x, const float* weight, int64_t rows, int64_t dim, int64_t ld,
                      float eps, int dtype, cudaStream_t stream);

}  // namespace cserve::cuda
