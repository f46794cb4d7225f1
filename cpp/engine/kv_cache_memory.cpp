#include "engine/kv_cache_memory.h"

#include "util/memory.h"

namespace cserve {

int64_t kv_cache_bytes_per_block(const ModelConfig& c, DType kv_dtype, int64_t block_size) {
  return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * block_size *
         static_cast<int64_t>(dtype_size(kv_dtype));
}

std::vector<KVCacheLayer> allocate_kv_cache(Backend& backend, const ModelConfig& c, DType kv_dtype, int64_t num_blocks,
                                            int64_t block_size, const std::string& what, Buffer& memory) {
  memory = Buffer();  // the old cache is freed before the new one is allocated
  const int64_t per_layer = num_blocks * c.num_key_value_heads * block_size * c.head_dim;
  const size_t layer_bytes = static_cast<size_t>(per_layer) * dtype_size(kv_dtype);
  memory = backend.allocate(layer_bytes * 2 * static_cast<size_t>(c.num_hidden_layers));
  if (backend.host_memory())
    commit_host_memory(memory.data(), memory.size(), what,
                       "Set VLLM_CPU_KVCACHE_SPACE (GiB) or --kv-cache-memory-bytes to a size that fits.");
  std::vector<KVCacheLayer> layers;
  const std::vector<int64_t> shape{num_blocks, c.num_key_value_heads, block_size, c.head_dim};
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    char* base = memory.as<char>() + 2 * l * layer_bytes;
    layers.push_back(KVCacheLayer{Tensor{base, kv_dtype, shape}, Tensor{base + layer_bytes, kv_dtype, shape}});
  }
  return layers;
}

}  // namespace cserve
