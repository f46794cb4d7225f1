#include "common.cuh"
#include "embedding/embedding.h"

namespace cserve::cuda {

namespace {

template <class O, class W>
__global__ void embedding_kernel(O* out, const W* table, const int32_t* ids, int64_t dim) {
  const int64_t i = blockIdx.x;
  const W* row = table + static_cast<int64_t>(ids[i]) * dim;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) out[i * dim + j] = from_f32<O>(to_f32(row[j]));
}

}  // namespace

void invokeEmbedding(void* out, const void* table, const int32_t* ids, int64_t num_ids, int64_t dim,
                     int out_dtype, int table_dtype, cudaStream_t stream) {
  if (num_ids == 0) return;
  CSERVE_DISPATCH_DTYPE(out_dtype, O, CSERVE_DISPATCH_DTYPE(table_dtype, W,
      embedding_kernel<O, W><<<static_cast<unsigned>(num_ids), 256, 0, stream>>>(
          static_cast<O*>(out), static_cast<const W*>(table), ids, dim)));
  check(cudaGetLastError(), "embedding");
}

}  // namespace cserve::cuda
