#include <algorithm>

#include "common.cuh"
#include "embedding/vocab_shard.h"

namespace cserve::cuda {

namespace {

// One block per row; rows whose token is this rank's are left alone.
__global__ void zero_rows_outside(float* x, int64_t ld, int64_t cols, const int32_t* ids, int64_t begin, int64_t end) {
  const int64_t row = blockIdx.x;
  const int64_t id = ids[row];
  if (id >= begin && id < end) return;
  float* r = x + row * ld;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) r[c] = 0.0f;
}

}  // namespace

void invokeZeroRowsOutside(float* x, int64_t ld, int64_t rows, int64_t cols, const int32_t* ids, int64_t begin,
                           int64_t end, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const int threads = static_cast<int>(std::min<int64_t>(256, (cols + 31) / 32 * 32));
  zero_rows_outside<<<static_cast<unsigned>(rows), threads, 0, stream>>>(x, ld, cols, ids, begin, end);
  check(cudaGetLastError(), "zero_rows_outside");
}

}  // namespace cserve::cuda
