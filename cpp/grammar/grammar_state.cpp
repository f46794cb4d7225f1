#include "grammar/grammar_state.h"

#include <algorithm>

#include "grammar/compiled_grammar.h"

namespace cserve {

struct GrammarState::Impl {
  explicit Impl(const CompiledGrammar& g) {
    if (g.xgrammar)
      xg.emplace(*g.xgrammar);
    else
      llg = g.guidance->clone();
  }
  std::optional<xgrammar::GrammarMatcher> xg;  // one of the two
  std::unique_ptr<GuidanceMatcher> llg;
};

GrammarState::GrammarState(const CompiledGrammar& grammar, std::vector<int32_t> start_after)
    : impl_(std::make_unique<Impl>(grammar)), start_after_(std::move(start_after)), active_(start_after_.empty()) {}

GrammarState::~GrammarState() = default;

bool GrammarState::fill_mask(uint32_t* words, int64_t vocab_size) {
  if (impl_->llg) return impl_->llg->fill_mask(words, vocab_size);
  int64_t shape[1] = {mask_words(vocab_size)};
  DLTensor t{};
  t.data = words;
  t.device = DLDevice{kDLCPU, 0};
  t.ndim = 1;
  t.dtype = xgrammar::GetBitmaskDLType();
  t.shape = shape;
  return impl_->xg->FillNextTokenBitmask(&t);
}

bool GrammarState::advance(const std::vector<int32_t>& output, int32_t token) {
  if (active_) return impl_->llg ? impl_->llg->accept(token) : impl_->xg->AcceptToken(token);
  // Inactive: watch for the start marker ending at this token.
  const size_t n = start_after_.size();
  if (output.size() + 1 < n || token != start_after_.back()) return true;
  active_ = std::equal(start_after_.begin(), start_after_.end() - 1, output.end() - static_cast<std::ptrdiff_t>(n - 1));
  return true;
}

bool GrammarState::terminated() const {
  return active_ && (impl_->llg ? impl_->llg->stopped() : impl_->xg->IsTerminated());
}

}  // namespace cserve
