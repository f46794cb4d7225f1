// Turns a SchedulerOutput into a forward pass and sampled tokens: builds the flat
// batch and its attention metadata, runs the model, samples, and computes logprobs.
// Owns the model and the KV cache memory.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "engine/grammar_masks.h"
#include "engine/draft_model.h"
#include "engine/eagle_proposer.h"
#include "engine/ngram_proposer.h"
#include "engine/rank_link.h"
#include "model/llama_model.h"
#include "sample/sampler.h"
#include "sched/scheduler_output.h"

namespace cserve {

class ModelRunner {
 public:
  ModelRunner(Backend& backend, std::unique_ptr<LlamaModel> model, int64_t num_blocks, int block_size,
              DType kv_dtype, std::vector<int64_t> eos_token_ids);

  RunnerOutput execute(const SchedulerOutput& out);
  // Speculative decoding by prompt lookup: after each step, every request that may speculate
  // gets the proposer's draft tokens for its next one (RunnerOutput::draft_token_ids).
  void set_ngram_proposer(const NgramProposer& proposer) { proposer_ = proposer; }
  // Speculative decoding with a draft model instead (set it before the first request): it
  // proposes the drafts of each step that asks for them (SchedulerOutput::propose_drafts),
  // catching up first over the positions it has not computed, max_batch_tokens per forward.
  void set_draft_proposer(std::unique_ptr<DraftProposer> draft, int64_t max_num_seqs, int64_t max_batch_tokens);
  // Speculative decoding with an EAGLE head: the model keeps the hidden states it reads from now
  // on (set it before the first request and before graphs are captured); it follows every step.
  void set_eagle_proposer(std::unique_ptr<EagleProposer> eagle, int64_t max_num_seqs);
  const LlamaModel& model() const { return *model_; }
  size_t kv_cache_bytes() const {
    return kv_memory_.size() + (draft_ ? draft_->kv_cache_bytes() : 0) + (eagle_ ? eagle_->kv_cache_bytes() : 0);
  }
  // One dummy forward over `num_tokens` tokens (logits for the last `logits_rows` of them) so
  // first requests meet warm caches and pools, and scratch buffers reach their peak size
  // (where the backend samples, its sampler's too: those rows are sampled there).
  void warm_up(int64_t num_tokens, int64_t logits_rows = 1);
  // Replaces the KV cache with one of num_blocks blocks (contents are lost).
  void resize_kv_cache(int64_t num_blocks);
  // Graphs (CUDA graphs) for decode-only steps of up to max(sizes) requests, each padded to
  // the nearest size. Call before resize_kv_cache: the cache then keeps one spare block that
  // the padding tokens write to.
  void enable_graphs(std::vector<int> sizes, int64_t max_model_len);
  // Captures every size, largest first; on failure graphs stay off, `why` says why, returns 0.
  int capture_graphs(std::string& why);
  // Tensor parallelism, rank 0: every model operation is first sent to the other ranks through
  // `link` (which then allocate the same KV cache as this one). Not owned.
  void set_rank_link(RankLink* link);
  // Tensor parallelism, ranks 1..N-1: the KV block copies and the forward pass rank 0 sent.
  void run_forward(const ForwardBatch& batch, const std::vector<std::pair<int32_t, int32_t>>& block_copies);

 private:
  void build_batch(const SchedulerOutput& out);
  // The forward pass over batch_ and the sampling of its rows (on the backend or the host).
  void forward_and_sample(const SchedulerOutput& out, RunnerOutput& result);
  // Each constrained request's grammar takes its sampled token (result.grammar_ended, errors).
  void advance_grammars(const SchedulerOutput& out, RunnerOutput& result);
  // result.draft_token_ids of the requests that sampled this step and may speculate.
  void propose_drafts(const SchedulerOutput& out, RunnerOutput& result) const;
  void propose_with_draft_model(const SchedulerOutput& out, RunnerOutput& result);
  // Whether every logits row of this step can be sampled by the backend (no prompt logprobs,
  // no more top logprobs than it returns).
  bool backend_can_sample(const SchedulerOutput& out) const;
  void sample_on_backend(const SchedulerOutput& out, const Tensor& logits, RunnerOutput& result);
  // The backend's sampler over `rows` rows of the model's device logits, results dropped.
  void warm_up_sampling(int64_t rows);
  // The logits processors and penalties of the sampling rows, for the backend's sampler;
  // false when no row has any.
  bool build_processing(const SchedulerOutput& out, DeviceProcessing& proc);
  // The CPU sampler over logits_ (host, one row per row_owner_ entry).
  void sample_on_host(const SchedulerOutput& out, RunnerOutput& result);
  // The captured size a decode-only step of this many requests is padded to; 0: run eagerly.
  int64_t graph_size_for(const SchedulerOutput& out) const;
  // graph_batch_ = batch_ padded to `size` single-token sequences, block tables graph_width_ wide.
  void build_graph_batch(int64_t size);
  // The model over graph_batch_ with the graphs' own activation buffers, logits left on the device.
  void graph_forward();

  Backend& backend_;
  std::unique_ptr<LlamaModel> model_;
  int block_size_;
  DType kv_dtype_;
  std::vector<int64_t> eos_token_ids_;
  Buffer kv_memory_;
  std::vector<KVCacheLayer> kv_layers_;
  Sampler sampler_;
  GrammarMasks grammar_masks_;
  ForwardBatch batch_;
  // Per logits row: which scheduled request, the prompt position it scores (-1: a sampling row)
  // and, for a sampling row, how many of the request's draft tokens come before it.
  struct LogitsRow {
    int32_t seq = 0;
    int64_t prompt_pos = -1;
    int32_t num_drafts_before = 0;
  };
  std::vector<LogitsRow> row_owner_;
  NgramProposer proposer_;
  std::unique_ptr<DraftProposer> draft_;
  int64_t draft_max_num_seqs_ = 0;
  std::unique_ptr<EagleProposer> eagle_;
  std::vector<float> logits_;
  std::vector<int> graph_sizes_;  // ascending
  int64_t graph_width_ = 0;
  int32_t pad_block_ = -1;
  bool graphs_on_ = false;
  ForwardBatch graph_batch_;
  RankLink* link_ = nullptr;
};

}  // namespace cserve
