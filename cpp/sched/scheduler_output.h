// Plain structs between the scheduler and the model runner (vLLM V1's
// SchedulerOutput / ModelRunnerOutput).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "cserve/request_output.h"
#include "sched/request.h"

namespace cserve {

struct ScheduledRequest {
  Request* request = nullptr;          // owned by the scheduler
  int64_t start = 0;                   // first token computed this step (= num_computed_tokens)
  int64_t num_new_tokens = 0;          // tokens computed this step
  bool sample = false;                 // this step reaches the last known token: sample the next one
  const std::vector<int32_t>* block_ids = nullptr;  // the request's block table
  // Speculative decoding: the draft tokens this step verifies; they are the last
  // draft_token_ids.size() of its num_new_tokens, after the request's last known token.
  std::vector<int32_t> draft_token_ids;
};

struct SchedulerOutput {
  std::vector<ScheduledRequest> scheduled;
  int64_t num_scheduled_tokens = 0;
  // KV blocks to copy (src, dst) before the forward pass (n > 1 forks).
  std::vector<std::pair<int32_t, int32_t>> block_copies;
  // Whether the runner proposes drafts after this step: not while more requests run than
  // disable_by_batch_size, when the next step would verify none; with a draft model and the
  // automatic rule, only where the rule expects the next step to verify some (its proposals are
  // forwards of its own, not worth running for nothing).
  bool propose_drafts = true;
  // Requests finished or preempted since the last step (Request::id): state a proposer keeps
  // of them is void.
  std::vector<std::string> finished_req_ids;
  bool empty() const { return scheduled.empty(); }
};

// One entry per ScheduledRequest, in the same order.
struct RunnerOutput {
  // The tokens to append: the accepted draft tokens, then one the target model sampled itself
  // (empty where nothing was sampled).
  std::vector<std::vector<int32_t>> sampled_token_ids;
  std::vector<std::vector<PositionLogprobs>> logprobs;   // one per sampled token where the request asked
  std::vector<std::vector<int32_t>> draft_token_ids;     // proposals for each request's next step
  std::vector<std::vector<PositionLogprobs>> prompt_logprobs;  // positions finished this step
  std::vector<uint8_t> grammar_ended;  // 1 where the sampled token ended the request's grammar
  std::vector<std::string> errors;     // non-empty where the request failed (its grammar rejected the token)
};

}  // namespace cserve
