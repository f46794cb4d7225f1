// The definition behind the public, opaque cserve::CompiledGrammar: an xgrammar grammar, or an
// llguidance matcher in its initial state that each request clones.
#pragma once
#include <xgrammar/xgrammar.h>

#include <memory>
#include <optional>

#include "cserve/grammar.h"
#include "grammar/guidance.h"

namespace cserve {

class CompiledGrammar {
 public:
  CompiledGrammar(xgrammar::CompiledGrammar g, int64_t vocab) : xgrammar(std::move(g)), vocab_size(vocab) {}
  CompiledGrammar(std::unique_ptr<GuidanceMatcher> g, int64_t vocab) : guidance(std::move(g)), vocab_size(vocab) {}
  const std::optional<xgrammar::CompiledGrammar> xgrammar;
  const std::shared_ptr<const GuidanceMatcher> guidance;
  const int64_t vocab_size;
};

}  // namespace cserve
