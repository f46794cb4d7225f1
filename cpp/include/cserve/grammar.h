// Structured outputs: grammars compiled for one tokenizer. A request whose SamplingParams
// carry a CompiledGrammar only ever samples tokens the grammar allows (a token bitmask applied
// by the sampler before any sampling mode), and may end only where the grammar can end.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace cserve {

// The tokenizer as the grammar engine reads it.
struct GrammarVocab {
  std::vector<std::string> encoded_vocab;  // id -> token as spelled in tokenizer.json ("" for unused ids)
  std::string tokenizer_json;              // tokenizer.json: its decoder tells byte-level, byte-fallback or raw
  int64_t vocab_size = 0;                  // the model's logits width (the mask's length)
  std::vector<int32_t> stop_token_ids;     // the tokens that end a finished grammar (EOS)
  // llguidance's library (the llguidance wheel's _lib.abi3.so), for the guidance backend;
  // empty: xgrammar only.
  std::string guidance_library;
};

struct JsonGrammarOptions {
  bool any_whitespace = true;  // false: no free whitespace between JSON tokens (compact output)
};

// Immutable once compiled; shared by every request that uses it.
class CompiledGrammar;

class GrammarCompiler {
 public:
  explicit GrammarCompiler(const GrammarVocab& vocab);
  ~GrammarCompiler();
  GrammarCompiler(const GrammarCompiler&) = delete;
  GrammarCompiler& operator=(const GrammarCompiler&) = delete;

  // Each throws InvalidArgument with the grammar engine's reason for input it cannot compile.
  std::shared_ptr<CompiledGrammar> json_schema(const std::string& schema, const JsonGrammarOptions& options);
  std::shared_ptr<CompiledGrammar> regex(const std::string& pattern);
  std::shared_ptr<CompiledGrammar> ebnf(const std::string& grammar);  // GBNF / xgrammar EBNF, rule "root"
  std::shared_ptr<CompiledGrammar> lark(const std::string& grammar);
  std::shared_ptr<CompiledGrammar> structural_tag(const std::string& tag_json);
  std::shared_ptr<CompiledGrammar> choice(const std::vector<std::string>& options);
  // The guidance backend (llguidance): kind is json, regex or lark. NotSupported without
  // GrammarVocab::guidance_library.
  std::shared_ptr<CompiledGrammar> guidance(const std::string& kind, const std::string& source);
  bool has_guidance() const;

  // A compiled xgrammar grammar as text and back (for this compiler's vocabulary), so grammars
  // can be compiled in another process.
  std::string serialize(const CompiledGrammar& grammar) const;
  std::shared_ptr<CompiledGrammar> deserialize(const std::string& text) const;
  int64_t vocab_size() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Bytes a compiled grammar holds (for cache accounting), and the vocabulary it was compiled for.
int64_t grammar_memory_bytes(const CompiledGrammar& grammar);
int64_t grammar_vocab_size(const CompiledGrammar& grammar);

}  // namespace cserve
