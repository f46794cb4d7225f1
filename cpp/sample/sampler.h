// Turns one row of logits into the next token of a request, with vLLM's
// SamplingParams: logits processors (allowed ids, logit bias, min_tokens),
// penalties, then greedy or temperature / min_p / top_k / top_p sampling from
// the request's own generator. Logprobs are those of the raw logits.
#pragma once
#include <cstdint>
#include <vector>

#include "cserve/request_output.h"
#include "sched/request.h"

namespace cserve {

class Sampler {
 public:
  Sampler(int64_t vocab_size, std::vector<int64_t> eos_token_ids)
      : vocab_(vocab_size), eos_(std::move(eos_token_ids)) {}

  // Samples from logits[vocab] (modified in place) for request r. allowed: the grammar's token
  // mask (bit t % 32 of word t / 32 set where token t may come next), applied before anything
  // else; null: every token may.
  int32_t sample(float* logits, Request& r, const uint32_t* allowed = nullptr) const;

  // Log-softmax of `logits`: the logprob and 1-based rank of `token`, then the top n.
  void logprobs(const float* logits, int32_t token, int n, PositionLogprobs& out) const;

 private:
  void apply_processors(float* logits, const Request& r) const;
  void apply_penalties(float* logits, const Request& r) const;
  int64_t vocab_;
  std::vector<int64_t> eos_;
};

}  // namespace cserve
