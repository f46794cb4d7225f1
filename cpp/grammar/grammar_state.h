// One request's place in its grammar: the matcher that says which tokens may come next.
// Owned by the request (through a shared_ptr the runner creates on first use); used only by the
// engine thread, one step at a time.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "cserve/grammar.h"

namespace cserve {

class GrammarState {
 public:
  // start_after: the grammar applies only once the output holds this token sequence (the end
  // of the reasoning); empty: from the first token.
  GrammarState(const CompiledGrammar& grammar, std::vector<int32_t> start_after);
  ~GrammarState();

  static int64_t mask_words(int64_t vocab_size) { return (vocab_size + 31) / 32; }

  // Whether the grammar constrains the next token.
  bool active() const { return active_; }
  // Writes the allowed tokens as bits (bit t % 32 of word t / 32).
  bool fill_mask(uint32_t* words, int64_t vocab_size);
  // The request sampled `token` after `output` (its earlier output tokens). Returns false when
  // an active grammar cannot accept the token.
  bool advance(const std::vector<int32_t>& output, int32_t token);
  // The grammar has ended (it accepted a stop token): the request is complete.
  bool terminated() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<int32_t> start_after_;
  bool active_ = false;
};

}  // namespace cserve
