// Attention of each new token over its sequence's cached K/V (already holding the new
// tokens: invokeWriteKv ran first), for mixed prefill/decode batches. Token t belongs to
// sequence token_seq[t] and sits at position positions[t]; it attends to cached positions
// [max(0, p - sliding_window + 1) .. p] (sliding_window 0: no window). GQA: head h reads
// kv head h / (num_heads / num_kv_heads).
//
// This first kernel is one thread block per (token, head): the query in shared memory,
// scores for a chunk of keys in shared memory, a running (max, sum) rescale between chunks
// (online softmax), each thread owning output dims. Correct for any context; the tiled
// prefill and split-context (flash-decoding) kernels replace it where they measure faster.
//
// q: [tokens][num_heads][head_dim] with token stride ldq; out: [tokens][num_heads*head_dim].
// All index arrays live on the device.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace cserve::cuda {

struct PagedAttentionArgs {
  void* out = nullptr;
  const void* q = nullptr;
  int64_t ldq = 0;
  int64_t num_tokens = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  const void* k_cache = nullptr;
  const void* v_cache = nullptr;
  int64_t block_size = 16;
  const int32_t* block_tables = nullptr;  // [num_seqs][max_blocks_per_seq]
  int64_t max_blocks_per_seq = 0;
  const int32_t* token_seq = nullptr;     // [num_tokens]
  const int32_t* positions = nullptr;     // [num_tokens]
  float scale = 1.0f;
  int64_t sliding_window = 0;
  int act_dtype = 0, cache_dtype = 0;
};

void invokePagedAttention(const PagedAttentionArgs& a, cudaStream_t stream);

}  // namespace cserve::cuda
