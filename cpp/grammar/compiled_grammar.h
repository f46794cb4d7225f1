// The definition behind the public, opaque cserve::CompiledGrammar.
#pragma once
#include <xgrammar/xgrammar.h>

#include "cserve/grammar.h"

namespace cserve {

class CompiledGrammar {
 public:
  explicit CompiledGrammar(xgrammar::CompiledGrammar g) : grammar(std::move(g)) {}
  const xgrammar::CompiledGrammar grammar;
};

}  // namespace cserve
