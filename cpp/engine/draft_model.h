// Speculative decoding with a draft model (vLLM's "draft_model" method): a second, smaller model
// of the target's vocabulary, on the target's backend, that proposes the next tokens greedily.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "cserve/engine_config.h"
#include "engine/proposer_kv_cache.h"
#include "loader/gguf.h"
#include "loader/safetensors.h"
#include "model/llama_model.h"

namespace cserve {

struct DraftModel {
  // The draft's file(s), one of the two: they must outlive the model (weights may point into them).
  std::unique_ptr<SafetensorsCheckpoint> checkpoint;
  std::unique_ptr<GgufFile> gguf;
  std::unique_ptr<LlamaModel> model;
  int num_speculative_tokens = 0;  // k: forwards of the draft per proposal
  int64_t weight_bytes = 0;        // what its weights take on the backend
};

// One request to propose for: its id and preemption count (what its cache entry is checked
// against), every token it holds (the ones sampled this step included) and the target's block
// table, which indexes the draft's KV cache too.
struct DraftRequest {
  const std::string* id = nullptr;
  int num_preemptions = 0;
  const std::vector<int32_t>* tokens = nullptr;
  const std::vector<int32_t>* block_ids = nullptr;
};

// The draft model and its own KV cache, laid out as the target's (the same block count and size,
// so the target's block tables and slots address it). The draft is lazy: it runs only when asked
// to propose. Per request it remembers how many of the request's first positions hold its keys
// and values (a prefix of the committed tokens) and the blocks they were written through; a
// proposal first catches up over the positions after that prefix (one batched forward over every
// proposing request's missing positions, chunked to a token budget; the last chunk's rows give
// the first draft tokens), then runs k - 1 one-token forwards. Proposals past the request's
// committed tokens write into blocks of its own (beyond the target's), never into the prefix.
class DraftProposer {
 public:
  DraftProposer(Backend& backend, DraftModel draft, int block_size, DType kv_dtype);
  // A cache of the target's num_blocks (its graph pad block included) plus scratch blocks for
  // the proposals of up to max_num_seqs requests.
  void resize_kv_cache(int64_t num_blocks, int64_t max_num_seqs);
  // The scratch blocks resize_kv_cache adds to the target's block count.
  static int64_t num_scratch_blocks(int num_speculative_tokens, int block_size, int64_t max_num_seqs);
  // Bytes of one block of the draft's cache (every layer's keys and values).
  int64_t bytes_per_block() const;
  void copy_blocks(const std::vector<std::pair<int32_t, int32_t>>& copies);
  // The most tokens one catch-up forward computes (the profiling run's batch).
  void set_max_batch_tokens(int64_t tokens) { max_batch_tokens_ = std::max<int64_t>(1, tokens); }
  // The profiling run: the draft over `batch` with logits for its last `logits_rows` tokens
  // (the catch-up forward's peak); its cache entries are dropped (the batch writes anywhere).
  void warm_up(const ForwardBatch& batch, int64_t logits_rows);
  // Requests finished or preempted: what the draft knew of them is void.
  void forget(const std::vector<std::string>& ids);
  // k greedy draft tokens per request: the catch-up forward(s), then k - 1 one-token forwards.
  std::vector<std::vector<int32_t>> propose(const std::vector<DraftRequest>& requests);
  size_t kv_cache_bytes() const { return cache_.bytes(); }

 private:
  Backend& backend_;
  DraftModel draft_;
  int block_size_;
  DType kv_dtype_;
  ProposerKVCache cache_;  // the target's layout plus scratch blocks (shared with the EAGLE proposer)
  std::vector<float> logits_;
  int64_t max_batch_tokens_ = 8192;
  // Per request: its first `num_positions` positions hold the draft's keys and values, written
  // through `block_ids` (the first blocks of its table then) while it had `num_preemptions`.
  struct Valid {
    int64_t num_positions = 0;
    int num_preemptions = 0;
    std::vector<int32_t> block_ids;
  };
  std::unordered_map<std::string, Valid> valid_;
  // The longest prefix of the request's positions that still holds the draft's keys and values.
  int64_t valid_prefix(const DraftRequest& r) const;
};

// config.speculative_model (a config.json directory or a .gguf file) on `backend`, computing in
// the target's `dtype` (as vLLM's draft) with its weights in their own formats: the checkpoint's
// quantization_config or the GGUF file's types, checked against config.speculative_quantization
// as --quantization is against the target ("fp8" quantizes a float draft at load). Refuses
// (NotSupported) parallel ranks; InvalidArgument where its vocabulary size is not
// `target_vocab_size`.
DraftModel load_draft_model(const EngineConfig& config, Backend& backend, DType dtype, int64_t target_vocab_size);

}  // namespace cserve
