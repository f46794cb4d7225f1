// Per-step metadata for attention over the paged KV cache. Built by the model
// runner from SchedulerOutput; passed explicitly, never global.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace cserve {

struct AttentionMetadata {
  int32_t num_seqs = 0;
  int32_t num_tokens = 0;
  int32_t block_size = 16;
  // query_start[i]..query_start[i+1]: the new tokens of sequence i in the flat batch.
  std::vector<int32_t> query_start;
  // Tokens of sequence i in the cache after this step (cached + new).
  std::vector<int32_t> seq_lens;
  // Row i holds sequence i's block ids; rows are max_blocks_per_seq long, padded with 0.
  std::vector<int32_t> block_tables;
  int32_t max_blocks_per_seq = 0;
  // Per token: block_id * block_size + offset where its K and V are written.
  std::vector<int64_t> slot_mapping;
  // Per token: its position in its sequence.
  std::vector<int32_t> positions;
};

// One layer's paged KV cache: k and v of [num_blocks][num_kv_heads][block_size][head_dim],
// dtype f32, f16 or bf16.
struct KVCacheLayer {
  Tensor k, v;
};

}  // namespace cserve
