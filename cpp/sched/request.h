// A request's state as the scheduler and runner see it. Owned by the Scheduler.
#pragma once
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cserve/request_output.h"
#include "cserve/sampling_params.h"
#include "kv/block_pool.h"
#include "sched/speculation_governor.h"

namespace cserve {

class GrammarState;  // grammar/grammar_state.h

enum class RequestStatus : uint8_t { Waiting, Running, Preempted, Finished };

struct Request {
  std::string id;           // unique internal id, from the scheduler's counter (never client text)
  std::string external_id;  // the id the caller gave
  int index = 0;            // which of the n completions
  std::vector<int32_t> prompt_token_ids;
  std::vector<int32_t> output_token_ids;
  std::vector<int32_t> all_token_ids;  // prompt then output
  // Speculative decoding: tokens proposed to follow all_token_ids, verified by the next step
  // (never part of all_token_ids until accepted).
  std::vector<int32_t> draft_token_ids;
  // How its drafts fared (verified, or compared with the tokens that followed when a step left
  // them unverified): what the speculation governor expects of its next ones.
  DraftAcceptance draft_acceptance;
  // Drafts a step left unverified, still being compared with the output from output position
  // unverified_draft_at on (empty: none).
  std::vector<int32_t> unverified_draft;
  size_t unverified_draft_at = 0;
  SamplingParams params;
  int priority = 0;
  uint64_t arrival = 0;  // monotonically increasing admission order
  std::string cache_salt;
  RequestStatus status = RequestStatus::Waiting;

  int64_t num_computed_tokens = 0;
  int64_t num_cached_tokens = -1;  // prefix-cache hit at first scheduling; -1 until then
  int num_preemptions = 0;
  double first_scheduled_time = 0;  // steady-clock seconds; 0 until first scheduled
  std::vector<BlockHash> block_hashes;  // one per full block of all_token_ids

  std::shared_ptr<GrammarState> grammar;  // created by the runner when params.grammar is set
  std::mt19937_64 rng;  // per-request, so seeded output does not depend on the batch
  std::vector<PositionLogprobs> prompt_logprobs;  // accumulated over prefill chunks
  bool prompt_logprobs_sent = false;
  // Tokens in `all_token_ids` are known; those past num_computed_tokens still need a forward pass.
  int64_t num_tokens() const { return static_cast<int64_t>(all_token_ids.size()); }
  int64_t num_prompt_tokens() const { return static_cast<int64_t>(prompt_token_ids.size()); }
  FinishReason finish_reason = FinishReason::None;
  std::string error;  // why, when finish_reason is Error
  int32_t stop_token_id = -1;
  int64_t num_sent_tokens = 0;   // output tokens already reported
  bool wants_prompt_logprobs() const { return params.prompt_logprobs.has_value(); }

  void append_output(int32_t token) {
    output_token_ids.push_back(token);
    all_token_ids.push_back(token);
  }
};

}  // namespace cserve
