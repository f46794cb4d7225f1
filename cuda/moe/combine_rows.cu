#include <algorithm>

#include "common.cuh"
#include "moe/combine_rows.h"

namespace cserve::cuda {

namespace {

// One block per output row (grid.x up to 65535 rows a launch), threads over its columns.
__global__ void __launch_bounds__(256) combine_rows_kernel(float* out, const float* src, const int32_t* rows,
                                                            const float* weights, int64_t k, int64_t cols,
                                                            bool accumulate) {
  const int64_t i = blockIdx.x;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float acc = accumulate ? out[i * cols + c] : 0.0f;
    for (int64_t j = 0; j < k; ++j) acc += weights[i * k + j] * src[static_cast<int64_t>(rows[i * k + j]) * cols + c];
    out[i * cols + c] = acc;
  }
}

}  // namespace

void invokeCombineRows(float* out, const float* src, const int32_t* rows, const float* weights, int64_t n, int64_t k,
                       int64_t cols, bool accumulate, cudaStream_t stream) {
  for (int64_t i0 = 0; i0 < n; i0 += 65535) {
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(65535, n - i0));
    combine_rows_kernel<<<blocks, 256, 0, stream>>>(out + i0 * cols, src, rows + i0 * k, weights + i0 * k, k, cols,
                                                    accumulate);
  }
  check(cudaGetLastError(), "combine_rows");
}

}  // namespace cserve::cuda
