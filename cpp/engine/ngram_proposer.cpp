#include "engine/ngram_proposer.h"

#include <algorithm>

namespace cserve {

std::vector<int32_t> NgramProposer::propose(const std::vector<int32_t>& tokens) const {
  const int64_t total = static_cast<int64_t>(tokens.size());
  if (num_speculative_tokens <= 0 || total < min_n || total < 2) return {};
  // For each earlier end position e (an occurrence ending at e, with e + 1 < total so something
  // follows it), the length of the common suffix of tokens[..e] and the whole sequence, capped
  // at max_n. The cap keeps this O(total * max_n).
  int64_t best_len = 0, best_end = -1;
  for (int64_t e = 0; e + 1 < total; ++e) {
    int64_t len = 0;
    while (len < max_n && len <= e && tokens[e - len] == tokens[total - 1 - len]) ++len;
    if (len > best_len) {  // strictly longer: ties keep the earliest occurrence
      best_len = len;
      best_end = e;
    }
  }
  if (best_len < min_n) return {};
  const int64_t start = best_end + 1;
  const int64_t count = std::min<int64_t>(num_speculative_tokens, total - start);
  return std::vector<int32_t>(tokens.begin() + start, tokens.begin() + start + count);
}

}  // namespace cserve
