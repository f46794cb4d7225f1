// Attention of each new token over its sequence's cached K/V (already holding the new
// tokens: invokeWriteKv ran first), for mixed prefill/decode batches. Token t belongs to
// sequence token_seq[t] and sits at position positions[t]; it attends to cached positions
// [max(0, p - sliding_window + 1) .. p] (sliding_window 0: no window). GQA: head h reads
// kv head h / (num_heads / num_kv_heads).
//
// One thread block per (head, token, context split): the query in shared memory, scores for
// a chunk of keys in shared memory, a running (max, sum) rescale between chunks (online
// softmax), each thread owning output dims. Heads vary fastest, so a GQA group shares its K/V
// through L2. When there are too few (token, head) blocks to fill the GPU and contexts are
// long (flash-decoding), each token's keys are split into up to 16 parts whose partial
// softmax states go to `workspace` and are merged by a second kernel.
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
  float softcap = 0.0f;  // > 0: each scaled score s becomes softcap * tanh(s / softcap)
  const float* sinks = nullptr;  // per head: a logit in the softmax's denominator that attends to nothing
  int act_dtype = 0, cache_dtype = 0;
  // Split-context decoding: max_context bounds every token's key count (e.g. the block table
  // width times block_size, fixed for CUDA graphs); workspace holds paged_attention_workspace(a)
  // floats, or is null (no splitting).
  int64_t max_context = 0;
  float* workspace = nullptr;
  // Prefill tiles (optional): [num_tiles][3] = (first token, token count <= 16, sequence);
  // with them (and head_dim <= 128) the tiled kernel runs. The tiles and single_tokens together
  // cover every token once: the tokens of sequences with one new token (decodes in a mixed
  // batch) go to the per-token kernel, which would waste 15 of a tile's 16 query rows.
  const int32_t* tiles = nullptr;
  int64_t num_tiles = 0;
  const int32_t* single_tokens = nullptr;
  int64_t num_single_tokens = 0;
};
constexpr int kPrefillTileTokens = 16;

// Floats of workspace the split these arguments get needs (0: they are not split), and the
// most any arguments with this head_dim can need on the current device.
int64_t paged_attention_workspace(const PagedAttentionArgs& a);
int64_t paged_attention_max_workspace(int64_t head_dim);

// Runs the tiled prefill kernel (and the per-token one over a.single_tokens) when a.tiles
// apply, else the per-token kernel over every token (with splits).
void invokePagedAttention(const PagedAttentionArgs& a, cudaStream_t stream);
// The tiled kernel alone (prefill_attention.cu).
bool prefill_tiles_apply(const PagedAttentionArgs& a);
void invokePrefillAttention(const PagedAttentionArgs& a, cudaStream_t stream);

}  // namespace cserve::cuda
