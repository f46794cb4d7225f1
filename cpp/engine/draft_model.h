// Speculative decoding with a draft model (vLLM's "draft_model" method): a second, smaller model
// of the target's vocabulary, on the target's backend, that proposes the next tokens greedily.
#pragma once
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "cserve/engine_config.h"
#include "loader/safetensors.h"
#include "model/llama_model.h"

namespace cserve {

struct DraftModel {
  std::unique_ptr<SafetensorsCheckpoint> checkpoint;  // must outlive the model: weights may point into it
  std::unique_ptr<LlamaModel> model;
  int num_speculative_tokens = 0;  // k: forwards of the draft per proposal
};

// One request to propose for: every token it holds (the ones sampled this step included) and the
// target's block table, which indexes the draft's KV cache too.
struct DraftRequest {
  const std::vector<int32_t>* tokens = nullptr;
  const std::vector<int32_t>* block_ids = nullptr;
};

// The draft model and its own KV cache, laid out as the target's (the same block count and size,
// so the target's block tables and slots address it). The draft runs over every batch the target
// runs, so its cache holds exactly what the target's holds, draft tokens rolled back with the
// target's. A proposal writes past the request's computed tokens into blocks of its own (beyond
// the target's): the next step's batch recomputes those positions.
class DraftProposer {
 public:
  DraftProposer(Backend& backend, DraftModel draft, int block_size, DType kv_dtype);
  // A cache of the target's num_blocks (its graph pad block included) plus scratch blocks for
  // the proposals of up to max_num_seqs requests.
  void resize_kv_cache(int64_t num_blocks, int64_t max_num_seqs);
  void copy_blocks(const std::vector<std::pair<int32_t, int32_t>>& copies);
  // The draft's keys and values of the target's batch (no logits are kept).
  void follow(const ForwardBatch& batch);
  // k greedy draft tokens per request, one batched draft forward per token.
  std::vector<std::vector<int32_t>> propose(const std::vector<DraftRequest>& requests);
  size_t kv_cache_bytes() const { return kv_memory_.size(); }

 private:
  Backend& backend_;
  DraftModel draft_;
  int block_size_;
  DType kv_dtype_;
  Buffer kv_memory_;
  std::vector<KVCacheLayer> kv_layers_;
  int64_t scratch_first_ = 0;   // the first scratch block
  int64_t scratch_per_seq_ = 0;
  int64_t max_num_seqs_ = 0;
  std::vector<float> logits_;
};

// config.speculative_model loaded in `dtype` on `backend`. Refuses (NotSupported) a GGUF draft and
// parallel ranks; InvalidArgument where its vocabulary size is not `target_vocab_size`.
DraftModel load_draft_model(const EngineConfig& config, Backend& backend, DType dtype, int64_t target_vocab_size);

}  // namespace cserve
