#include "cserve/sampling_params.h"

#include <cmath>
#include <string>

#include "cserve/error.h"

namespace cserve {

namespace {
void require(bool ok, const std::string& message) {
  if (!ok) throw InvalidArgument(message);
}
}  // namespace

void SamplingParams::validate(int64_t vocab_size, int max_logprobs) const {
  require(n >= 1, "n must be at least 1, got " + std::to_string(n));
  require(std::isfinite(temperature) && temperature >= 0, "temperature must be non-negative, got " + std::to_string(temperature));
  require(top_p > 0 && top_p <= 1, "top_p must be in (0, 1], got " + std::to_string(top_p));
  require(top_k == -1 || top_k >= 0, "top_k must be -1 (disable), or at least 1, got " + std::to_string(top_k));
  require(min_p >= 0 && min_p <= 1, "min_p must be in [0, 1], got " + std::to_string(min_p));
  require(presence_penalty >= -2 && presence_penalty <= 2, "presence_penalty must be in [-2, 2], got " + std::to_string(presence_penalty));
  require(frequency_penalty >= -2 && frequency_penalty <= 2, "frequency_penalty must be in [-2, 2], got " + std::to_string(frequency_penalty));
  require(std::isfinite(repetition_penalty) && repetition_penalty > 0,
          "repetition_penalty must be greater than zero, got " + std::to_string(repetition_penalty));
  require(max_tokens >= 1, "max_tokens must be at least 1, got " + std::to_string(max_tokens));
  require(min_tokens >= 0, "min_tokens must be greater than or equal to 0, got " + std::to_string(min_tokens));
  require(min_tokens <= max_tokens, "min_tokens must be less than or equal to max_tokens=" + std::to_string(max_tokens) +
                                        ", got " + std::to_string(min_tokens));
  auto check_lp = [&](const std::optional<int>& v, const char* name) {
    if (!v) return;
    require(*v >= 0 || *v == -1, std::string(name) + " must be non-negative, got " + std::to_string(*v));
    if (max_logprobs >= 0) {
      int want = *v == -1 ? static_cast<int>(vocab_size) : *v;
      require(want <= max_logprobs, std::string("Requested ") + name + " of " + std::to_string(want) +
                                        ", which is greater than max allowed: " + std::to_string(max_logprobs));
    }
  };
  check_lp(logprobs, "sample logprobs");
  check_lp(prompt_logprobs, "prompt logprobs");
  auto in_vocab = [&](int32_t t) { return t >= 0 && t < vocab_size; };
  for (int32_t t : stop_token_ids) require(in_vocab(t), "stop_token_ids contains out-of-vocab token id " + std::to_string(t));
  for (const auto& [t, b] : logit_bias) {
    require(in_vocab(t), "logit_bias contains out-of-vocab token id " + std::to_string(t));
    require(std::isfinite(b), "logit_bias for token " + std::to_string(t) + " is not finite");
  }
  for (int32_t t : allowed_token_ids) require(in_vocab(t), "allowed_token_ids contains out-of-vocab token id " + std::to_string(t));
  for (int32_t t : grammar_start_after)
    require(in_vocab(t), "grammar_start_after contains out-of-vocab token id " + std::to_string(t));
}

}  // namespace cserve
