#include "engine/grammar_masks.h"

#include "grammar/grammar_state.h"

namespace cserve {

void GrammarMasks::begin(const std::vector<Request*>& rows) {
  discard();
  slot_.assign(rows.size(), -1);
  // Shared with the worker, so a request that ends while its mask is filled (a failed step)
  // leaves the state alive until the fill returns.
  std::vector<std::shared_ptr<GrammarState>> states;
  for (size_t i = 0; i < rows.size(); ++i) {
    Request* r = rows[i];
    if (!r || !r->params.grammar) continue;
    if (!r->grammar) r->grammar = std::make_shared<GrammarState>(*r->params.grammar, r->params.grammar_start_after);
    if (!r->grammar->active()) continue;
    slot_[i] = static_cast<int32_t>(states.size());
    states.push_back(r->grammar);
  }
  if (states.empty()) return;
  bits_.assign(states.size() * static_cast<size_t>(words()), ~0u);
  job_ = std::async(std::launch::async, [this, states] {
    for (size_t s = 0; s < states.size(); ++s) states[s]->fill_mask(bits_.data() + s * words(), vocab_);
  });
}

void GrammarMasks::discard() {
  if (!job_.valid()) return;
  try {
    job_.get();
  } catch (...) {
  }
}

void GrammarMasks::wait() {
  if (job_.valid()) job_.get();  // rethrows a fill's failure into the step, which fails its requests
}

const uint32_t* GrammarMasks::mask(size_t row) {
  if (row >= slot_.size() || slot_[row] < 0) return nullptr;
  wait();
  return bits_.data() + static_cast<size_t>(slot_[row]) * words();
}

std::string GrammarMasks::advance(Request& r, int32_t token, uint8_t& ended) {
  if (!r.grammar) return "";
  if (!r.grammar->advance(r.output_token_ids, token))
    return "structured outputs: the grammar cannot continue with token " + std::to_string(token) +
           " (min_tokens or allowed_token_ids may forbid every token the grammar allows)";
  ended = r.grammar->terminated() ? 1 : 0;
  return "";
}

}  // namespace cserve
