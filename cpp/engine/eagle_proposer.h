// Speculative decoding with an EAGLE head (vLLM's "eagle" and "eagle3" methods): after each
// target step the head runs over the positions the target computed for good, the token of
// position t + 1 with the target's hidden state of position t (EAGLE's shift), then drafts k
// tokens greedily, each step reading its own previous output as the hidden state.
#pragma once
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "cserve/engine_config.h"
#include "engine/proposer_kv_cache.h"
#include "model/eagle_head.h"
#include "model/llama_model.h"
#include "sched/scheduler_output.h"

namespace cserve {

class EagleProposer {
 public:
  EagleProposer(Backend& backend, std::unique_ptr<EagleHead> head, int num_speculative_tokens, int block_size,
                DType kv_dtype);
  // What the target keeps of each forward for the head (LlamaModel::capture_hidden_states).
  void capture_on(LlamaModel& target) const;
  void resize_kv_cache(int64_t num_blocks, int64_t max_num_seqs) { cache_.resize(num_blocks, max_num_seqs); }
  static int64_t num_scratch_blocks(int num_speculative_tokens, int block_size, int64_t max_num_seqs) {
    return ProposerKVCache::num_scratch_blocks(num_speculative_tokens, block_size, max_num_seqs);
  }
  int64_t bytes_per_block() const { return cache_.bytes_per_block(); }
  void copy_blocks(const std::vector<std::pair<int32_t, int32_t>>& copies) { cache_.copy_blocks(copies); }
  size_t kv_cache_bytes() const { return cache_.bytes(); }
  size_t weight_bytes() const { return head_->weight_bytes(); }
  const EagleHead& head() const { return *head_; }
  // After the target's step over `batch` (hidden: its captured states, one row per token of the
  // batch, graph padding after them): the head's keys and values of every position computed for
  // good, then result.draft_token_ids of each request that sampled and may speculate.
  void step(const SchedulerOutput& out, const ForwardBatch& batch, const Tensor& hidden, RunnerOutput& result);
  // The head over the target's warm-up batch (its activation buffers reach their peak).
  void warm_up(const ForwardBatch& batch, const Tensor& hidden);

 private:
  Backend& backend_;
  std::unique_ptr<EagleHead> head_;
  int num_speculative_tokens_;
  int block_size_;
  ProposerKVCache cache_;
  Buffer gathered_;
};

// config.speculative_model as an EAGLE head of config.speculative_method for `target`, computing
// in `dtype`. Refuses (NotSupported) parallel ranks and targets outside the Llama family.
std::unique_ptr<EagleHead> load_eagle_proposer_head(const EngineConfig& config, const LlamaModel& target,
                                                    Backend& backend, DType dtype);

}  // namespace cserve
