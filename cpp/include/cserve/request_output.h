// What the engine reports about a request after each step: a delta of new tokens.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace cserve {

// Log-probabilities at one position: the chosen token first, then the top-N
// (ids sorted by descending logprob). Ranks are 1-based over the vocabulary.
struct PositionLogprobs {
  std::vector<int32_t> token_ids;
  std::vector<float> logprobs;
  std::vector<int64_t> ranks;
};

// Error: the engine failed while computing the request (the step threw); `error` says why.
enum class FinishReason : uint8_t { None, Stop, Length, Abort, Error };
const char* finish_reason_name(FinishReason r);  // "stop", "length", "abort", "error" or ""

struct RequestOutput {
  std::string request_id;  // the id given to add_request
  int index = 0;           // which of the n completions
  std::vector<int32_t> new_token_ids;
  std::vector<PositionLogprobs> new_logprobs;      // one per new token when logprobs was set
  std::vector<PositionLogprobs> prompt_logprobs;   // positions 1..len-1, sent once
  bool has_prompt_logprobs = false;
  FinishReason finish_reason = FinishReason::None;
  int32_t stop_token_id = -1;     // the stop_token_ids entry (or EOS) that ended it
  int64_t num_prompt_tokens = 0;
  int64_t num_cached_tokens = 0;  // prompt tokens served from the prefix cache
  double scheduled_time = 0;      // steady-clock seconds when first scheduled; 0 until then
  double time = 0;                // steady-clock seconds when the engine produced this output
  std::string error;              // why, when finish_reason is Error
  bool finished() const { return finish_reason != FinishReason::None; }
};

}  // namespace cserve
