// Speculative decoding by prompt lookup (vLLM's "ngram" method): the longest n-gram at the end
// of a sequence that occurred earlier in it predicts that what followed it then follows again.
#pragma once
#include <cstdint>
#include <vector>

namespace cserve {

struct NgramProposer {
  int num_speculative_tokens = 0;  // k: the most tokens proposed
  int min_n = 1;                   // prompt_lookup_min
  int max_n = 1;                   // prompt_lookup_max

  // Finds the longest suffix of `tokens` (min_n..max_n tokens) that also occurs earlier, taking
  // its earliest occurrence among the longest, and returns up to k tokens that followed it
  // there (fewer where the sequence ends first); empty when no suffix of min_n tokens recurs.
  std::vector<int32_t> propose(const std::vector<int32_t>& tokens) const;
};

}  // namespace cserve
