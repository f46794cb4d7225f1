#include <picojson.h>

#include <cstdio>
#include <string>

#include "cserve/error.h"
#include "grammar/compiled_grammar.h"

namespace cserve {

namespace {

// xgrammar reports failures as std::runtime_error whose text may start with "[time] file:line: ";
// the client gets the reason only.
std::string reason(const std::exception& e) {
  std::string s = e.what();
  const size_t bracket = s.find("] ");
  if (!s.empty() && s[0] == '[' && bracket != std::string::npos) s = s.substr(bracket + 2);
  const size_t source = s.find(".cc:");
  if (source != std::string::npos) {
    const size_t after = s.find(": ", source);
    if (after != std::string::npos) s = s.substr(after + 2);
  }
  return s;
}

template <typename Fn>
std::shared_ptr<CompiledGrammar> compile(const char* what, Fn&& fn) {
  try {
    xgrammar::CompiledGrammar g = fn();
    const int64_t vocab = g.GetTokenizerInfo().GetVocabSize();
    return std::make_shared<CompiledGrammar>(std::move(g), vocab);
  } catch (const std::exception& e) {
    throw InvalidArgument(std::string("Invalid ") + what + ": " + reason(e));
  }
}

// A string literal of xgrammar's EBNF: quotes, backslashes and control bytes escaped; other
// bytes (UTF-8 included) as they are.
std::string ebnf_literal(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

}  // namespace

// The vocabulary type and prefix-space rule, read from tokenizer.json's decoder as xgrammar's
// own from_huggingface does (raw, no prefix space, without one).
struct VocabMetadata {
  xgrammar::VocabType type = xgrammar::VocabType::RAW;
  bool add_prefix_space = false;
};

static VocabMetadata vocab_metadata(const std::string& tokenizer_json) {
  VocabMetadata m;
  if (tokenizer_json.empty()) return m;
  picojson::value v;
  const std::string err = picojson::parse(v, xgrammar::TokenizerInfo::DetectMetadataFromHF(tokenizer_json));
  if (!err.empty() || !v.is<picojson::object>()) return m;
  const auto& obj = v.get<picojson::object>();
  if (auto it = obj.find("vocab_type"); it != obj.end() && it->second.is<int64_t>())
    m.type = static_cast<xgrammar::VocabType>(it->second.get<int64_t>());
  if (auto it = obj.find("add_prefix_space"); it != obj.end() && it->second.is<bool>())
    m.add_prefix_space = it->second.get<bool>();
  return m;
}

struct GrammarCompiler::Impl {
  Impl(const GrammarVocab& v, const VocabMetadata& m)
      : info(v.encoded_vocab, m.type, static_cast<int>(v.vocab_size), v.stop_token_ids, m.add_prefix_space),
        // One thread, no cache: callers compile on their own worker and cache by request key.
        compiler(info, 1, false) {
    if (v.guidance_library.empty()) {
      guidance_missing = "the guidance backend needs llguidance (pip install llguidance)";
      return;
    }
    try {
      guidance = std::make_unique<Guidance>(v.guidance_library, v.tokenizer_json, v.vocab_size, v.stop_token_ids);
    } catch (const Error& e) {  // llguidance cannot read every tokenizer; xgrammar still serves
      guidance_missing = std::string("the guidance backend is unavailable: ") + e.what();
    }
  }

  xgrammar::TokenizerInfo info;
  xgrammar::GrammarCompiler compiler;
  std::unique_ptr<Guidance> guidance;
  std::string guidance_missing;  // why guidance is null
};

GrammarCompiler::GrammarCompiler(const GrammarVocab& vocab) {
  if (vocab.vocab_size <= 0) throw InvalidArgument("GrammarVocab.vocab_size must be positive");
  if (vocab.stop_token_ids.empty()) throw InvalidArgument("GrammarVocab.stop_token_ids cannot be empty");
  try {
    impl_ = std::make_unique<Impl>(vocab, vocab_metadata(vocab.tokenizer_json));
  } catch (const std::exception& e) {
    throw InvalidArgument("The tokenizer cannot be read for structured outputs: " + reason(e));
  }
}

GrammarCompiler::~GrammarCompiler() = default;

std::shared_ptr<CompiledGrammar> GrammarCompiler::json_schema(const std::string& schema,
                                                              const JsonGrammarOptions& options) {
  return compile("JSON schema", [&] { return impl_->compiler.CompileJSONSchema(schema, options.any_whitespace); });
}

std::shared_ptr<CompiledGrammar> GrammarCompiler::regex(const std::string& pattern) {
  return compile("regex", [&] { return impl_->compiler.CompileRegex(pattern); });
}

std::shared_ptr<CompiledGrammar> GrammarCompiler::ebnf(const std::string& grammar) {
  return compile("grammar", [&] { return impl_->compiler.CompileGrammar(grammar, "root"); });
}

std::shared_ptr<CompiledGrammar> GrammarCompiler::lark(const std::string& grammar) {
  return compile("grammar", [&] { return impl_->compiler.CompileLark(grammar); });
}

std::shared_ptr<CompiledGrammar> GrammarCompiler::structural_tag(const std::string& tag_json) {
  return compile("structural tag", [&] { return impl_->compiler.CompileStructuralTag(tag_json); });
}

std::shared_ptr<CompiledGrammar> GrammarCompiler::choice(const std::vector<std::string>& options) {
  if (options.empty()) throw InvalidArgument("Invalid choice: the list of choices is empty");
  std::string rule = "root ::= ";
  for (size_t i = 0; i < options.size(); ++i) rule += (i ? " | " : "") + ebnf_literal(options[i]);
  return compile("choice", [&] { return impl_->compiler.CompileGrammar(rule, "root"); });
}

std::shared_ptr<CompiledGrammar> GrammarCompiler::guidance(const std::string& kind, const std::string& source) {
  if (!impl_->guidance) throw NotSupported(impl_->guidance_missing);
  if (kind != "json" && kind != "regex" && kind != "lark")
    throw InvalidArgument("the guidance backend takes json, regex or lark, not " + kind);
  return std::make_shared<CompiledGrammar>(impl_->guidance->compile(kind, source), vocab_size());
}

bool GrammarCompiler::has_guidance() const { return impl_->guidance != nullptr; }

std::string GrammarCompiler::serialize(const CompiledGrammar& grammar) const {
  if (!grammar.xgrammar) throw InvalidArgument("only xgrammar grammars can be serialized");
  return grammar.xgrammar->SerializeJSON();
}

std::shared_ptr<CompiledGrammar> GrammarCompiler::deserialize(const std::string& text) const {
  auto result = xgrammar::CompiledGrammar::DeserializeJSON(text, impl_->info);
  if (auto* g = std::get_if<xgrammar::CompiledGrammar>(&result))
    return std::make_shared<CompiledGrammar>(*g, vocab_size());
  throw InvalidArgument("a serialized grammar could not be read back");
}

int64_t GrammarCompiler::vocab_size() const { return impl_->info.GetVocabSize(); }

int64_t grammar_vocab_size(const CompiledGrammar& grammar) { return grammar.vocab_size; }

int64_t grammar_memory_bytes(const CompiledGrammar& grammar) {
  // An llguidance matcher builds its lexer lazily; count a nominal size for the cache.
  return grammar.xgrammar ? static_cast<int64_t>(grammar.xgrammar->MemorySizeBytes()) : int64_t{64} << 10;
}

}  // namespace cserve
