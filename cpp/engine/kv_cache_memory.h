// One model's paged KV cache: every layer's K and V blocks in one allocation of the backend.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/buffer.h"
#include "loader/model_config.h"

namespace cserve {

// Bytes of one block of `block_size` tokens: every layer's keys and values (c's KV heads, head_dim).
int64_t kv_cache_bytes_per_block(const ModelConfig& c, DType kv_dtype, int64_t block_size);

// Allocates `memory` for num_blocks blocks of block_size tokens per layer of `c` (its KV heads
// and head_dim) and returns the layers' views into it. In host memory every page is committed
// now (a shortfall fails here, naming `what`, rather than as an out-of-memory kill under load).
std::vector<KVCacheLayer> allocate_kv_cache(Backend& backend, const ModelConfig& c, DType kv_dtype, int64_t num_blocks,
                                            int64_t block_size, const std::string& what, Buffer& memory);

}  // namespace cserve
