// Tensor parallelism's vocabulary-parallel embedding: each rank looks up its own rows, zeroes
// the tokens that belong to other ranks, and the all-reduce sums the shards.
//   invokeZeroRowsOutside: x[t][:cols] = 0 unless begin <= ids[t] < end (x f32, row stride ld;
//   ids on the device).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace cserve::cuda {

void invokeZeroRowsOutside(float* x, int64_t ld, int64_t rows, int64_t cols, const int32_t* ids, int64_t begin,
                           int64_t end, cudaStream_t stream);

}  // namespace cserve::cuda
