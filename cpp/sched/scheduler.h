// The continuous-batching scheduler: the token-budget model of vLLM V1. Each step
// gives each request a number of new tokens, running requests first, then waiting
// ones, under max_num_batched_tokens and max_num_seqs; long prompts are chunked;
// when blocks run out the lowest-priority running request is preempted and
// later recomputed.
#pragma once
#include <cstdint>
#include <list>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "kv/kv_cache_manager.h"
#include "sched/request.h"
#include "sched/scheduler_output.h"
#include "sched/speculation_governor.h"

namespace cserve {

struct SchedulerConfig {
  int max_num_seqs = 256;
  int64_t max_num_batched_tokens = 8192;
  int64_t max_model_len = 2048;
  bool enable_chunked_prefill = true;
  int64_t long_prefill_token_threshold = 0;  // 0: no cap per request per step
  int max_num_partial_prefills = 1;
  int max_long_partial_prefills = 1;
  bool priority_policy = false;  // false: fcfs
  // Speculative decoding: vLLM's disable_by_batch_size (no drafts while more requests than this
  // run; 0: no limit) and whether drafts are verified only where they are expected to pay.
  int speculative_disable_by_batch_size = 0;
  bool speculative_auto_disable = false;
  // Whether proposing costs forwards of its own (a draft model): the automatic rule then decides
  // whether a step proposes too, for up to num_speculative_tokens drafts per request.
  bool speculative_proposals_cost = false;
  int num_speculative_tokens = 0;
};

// At most this many prompt tokens of requests that want prompt logprobs are computed per step.
constexpr int64_t kMaxPromptLogprobRowsPerStep = 512;

struct SchedulerCounters {
  int64_t prompt_tokens = 0;
  int64_t generation_tokens = 0;
  int64_t num_preemptions = 0;
  // Speculative decoding, as vLLM's SpecDecodingStats: verified drafts, their tokens, the
  // accepted ones, and per draft position how often it was accepted.
  int64_t num_drafts = 0;
  int64_t num_draft_tokens = 0;
  int64_t num_accepted_tokens = 0;
  std::vector<int64_t> num_accepted_tokens_per_pos;
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& config, KVCacheManager& kv, std::vector<int64_t> eos_token_ids,
            uint64_t seed);
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues one request per completion (n of them); the n-1 extra ones join after the
  // first one's prefill by sharing its blocks. Throws InvalidArgument on a duplicate id.
  void add_request(const std::string& id, const std::vector<int32_t>& prompt, const SamplingParams& params,
                   int priority, const std::string& cache_salt);
  // Finishes every completion of the request; returns their final outputs.
  std::vector<RequestOutput> abort(const std::string& external_id);
  // A step that threw after schedule() returned `out`: ends every request it touched with
  // FinishReason::Error (whole requests, all n completions); nothing keeps a pointer to them.
  std::vector<RequestOutput> fail(const SchedulerOutput& out, const std::string& error);
  // Ends every request with FinishReason::Error (the engine is giving up).
  std::vector<RequestOutput> fail_all(const std::string& error);

  SchedulerOutput schedule();
  // The wall time of the step that ran `out` (schedule to update), for the speculation governor.
  void record_step_seconds(const SchedulerOutput& out, double seconds);
  // Applies the runner's results; returns the outputs of this step.
  std::vector<RequestOutput> update(const SchedulerOutput& out, const RunnerOutput& result);

  bool has_unfinished() const { return !requests_.empty(); }
  bool has_request(const std::string& external_id) const { return children_.count(external_id) != 0; }
  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  int64_t num_waiting() const;
  const SchedulerCounters& counters() const { return counters_; }

 private:
  Request* pick_waiting();
  void erase_waiting(Request* r);
  void preempt(Request* victim);
  Request* choose_victim() const;
  void fork_siblings(Request& first, std::vector<std::pair<int32_t, int32_t>>& copies);
  bool check_stop(Request& r) const;
  // How many of num_drafts draft tokens of r may be verified once num_pending more tokens are
  // appended: as many as could still be output (max_tokens, max_model_len), so no verified
  // token is thrown away for length.
  int64_t num_drafts_allowed(const Request& r, int64_t num_drafts, int64_t num_pending) const;
  // Appends the runner's tokens for r in order until one stops it; returns whether one did.
  bool append_sampled(Request& r, const std::vector<int32_t>& tokens, size_t& num_appended);
  void count_draft(size_t num_draft_tokens, size_t num_accepted);
  // The speculation governor's draft tokens per running request in decode this step.
  std::unordered_map<const Request*, int64_t> plan_drafts() const;
  // Whether this step proposes drafts for its next one (SchedulerOutput::propose_drafts).
  bool worth_proposing(const SchedulerOutput& out) const;
  // After r's output grew: how its unverified draft compares with the new tokens, once known.
  void compare_unverified_draft(Request& r);
  RequestOutput make_output(Request& r);
  void finish(Request& r, FinishReason reason);
  std::vector<RequestOutput> end(const std::string& external_id, FinishReason reason, const std::string& error);
  bool is_partial_after(const Request& r, int64_t num_new) const;
  bool is_long(const Request& r) const;

  SchedulerConfig config_;
  SpeculationGovernor governor_;
  KVCacheManager& kv_;
  std::vector<int64_t> eos_;
  std::mt19937_64 seed_rng_;  // seeds requests that bring no seed
  uint64_t next_arrival_ = 0;
  uint64_t next_internal_id_ = 0;

  std::unordered_map<std::string, std::unique_ptr<Request>> requests_;      // by internal id
  std::unordered_map<std::string, std::vector<std::string>> children_;      // external id -> internal ids
  std::unordered_map<std::string, std::vector<Request*>> pending_forks_;    // first child id -> siblings
  std::list<Request*> waiting_;
  std::vector<Request*> running_;
  std::vector<std::pair<int32_t, int32_t>> pending_copies_;
  std::vector<Request*> out_of_blocks_;  // ended by schedule(): alone, they still outgrew the KV cache
  std::vector<std::string> ended_ids_;   // finished or preempted since the last schedule() (internal ids)
  SchedulerCounters counters_;
};

}  // namespace cserve
