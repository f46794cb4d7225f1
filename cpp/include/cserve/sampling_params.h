// Per-request sampling parameters, with the fields and defaults of vLLM's SamplingParams.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

namespace cserve {

class CompiledGrammar;  // cserve/grammar.h

struct SamplingParams {
  int n = 1;
  double temperature = 1.0;  // 0 (or below 1e-5) means greedy
  double top_p = 1.0;
  int top_k = 0;  // 0 or -1: all tokens
  double min_p = 0.0;
  double presence_penalty = 0.0;
  double frequency_penalty = 0.0;
  double repetition_penalty = 1.0;
  std::optional<int64_t> seed;
  int64_t max_tokens = 16;
  int64_t min_tokens = 0;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  std::optional<int> logprobs;         // top-N of each sampled token (0: only the sampled one)
  std::optional<int> prompt_logprobs;  // top-N at each prompt position
  std::vector<std::pair<int32_t, float>> logit_bias;
  std::vector<int32_t> allowed_token_ids;  // empty: all
  // Structured outputs: only tokens this grammar allows are sampled, and the request ends when
  // the grammar does (null: unconstrained). It applies once the output holds
  // grammar_start_after (the end of the reasoning; empty: from the first token).
  std::shared_ptr<CompiledGrammar> grammar;
  std::vector<int32_t> grammar_start_after;

  bool greedy() const { return temperature < 1e-5; }
  // Throws InvalidArgument naming the field; vocab_size bounds token ids,
  // max_logprobs caps logprobs / prompt_logprobs (-1: no cap).
  void validate(int64_t vocab_size, int max_logprobs) const;
};

}  // namespace cserve
