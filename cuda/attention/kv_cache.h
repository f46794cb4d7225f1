// Writes each token's K and V into the paged cache at its slot (block * block_size + offset).
// k, v: [tokens][num_kv_heads][head_dim] with token stride ld (activation dtype);
// caches: [num_blocks][num_kv_heads][block_size][head_dim] (cache dtype); slots: device int64.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace cserve::cuda {

void invokeWriteKv(const void* k, const void* v, int64_t tokens, int64_t ld, const int64_t* slots, void* k_cache,
                   void* v_cache, int64_t num_kv_heads, int64_t head_dim, int64_t block_size, int act_dtype,
                   int cache_dtype, cudaStream_t stream);

}  // namespace cserve::cuda
