// out[i][:] = table[ids[i]][:] (ids on the device), converted to the activation dtype.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace cserve::cuda {

void invokeEmbedding(void* out, const void* table, const int32_t* ids, int64_t num_ids, int64_t dim,
                     int out_dtype, int table_dtype, cudaStream_t stream);

}  // namespace cserve::cuda
