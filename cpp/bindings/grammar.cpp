// Bindings of cserve/grammar.h: the grammar compiler of structured outputs.
#include <nanobind/nanobind.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "cserve/grammar.h"
#include "cserve/sampling_params.h"
#include <algorithm>

#include "grammar/compiled_grammar.h"
#include "grammar/grammar_state.h"

namespace nb = nanobind;
using namespace nb::literals;

void bind_grammar(nb::module_& m) {
  nb::class_<cserve::CompiledGrammar>(m, "CompiledGrammar")
      .def_prop_ro("memory_bytes", [](const cserve::CompiledGrammar& g) { return cserve::grammar_memory_bytes(g); })
      .def_prop_ro("vocab_size", [](const cserve::CompiledGrammar& g) { return cserve::grammar_vocab_size(g); })
      .def(
          "allows_a_first_token",
          [](const cserve::CompiledGrammar& g) {
            cserve::GrammarState state(g, {});
            const int64_t vocab = cserve::grammar_vocab_size(g);
            std::vector<uint32_t> words(static_cast<size_t>(cserve::GrammarState::mask_words(vocab)), 0);
            state.fill_mask(words.data(), vocab);
            return std::any_of(words.begin(), words.end(), [](uint32_t w) { return w != 0; });
          },
          nb::call_guard<nb::gil_scoped_release>(),
          "Whether any token of the vocabulary (a stop token included) may start the output: a grammar "
          "whose text this vocabulary cannot spell allows none.");

  // Compiling can take long: every entry point releases the GIL.
  using release = nb::call_guard<nb::gil_scoped_release>;
  nb::class_<cserve::GrammarCompiler>(m, "GrammarCompiler")
      .def(
          "__init__",
          [](cserve::GrammarCompiler* self, std::vector<std::string> encoded_vocab, std::string tokenizer_json,
             int64_t vocab_size, std::vector<int32_t> stop_token_ids, std::string guidance_library) {
            cserve::GrammarVocab v{std::move(encoded_vocab), std::move(tokenizer_json), vocab_size,
                                   std::move(stop_token_ids), std::move(guidance_library)};
            nb::gil_scoped_release unlocked;
            new (self) cserve::GrammarCompiler(v);
          },
          "encoded_vocab"_a, "tokenizer_json"_a, "vocab_size"_a, "stop_token_ids"_a, "guidance_library"_a = "")
      .def(
          "json_schema",
          [](cserve::GrammarCompiler& c, const std::string& schema, bool any_whitespace) {
            return c.json_schema(schema, cserve::JsonGrammarOptions{any_whitespace});
          },
          "schema"_a, "any_whitespace"_a = true, release())
      .def("regex", &cserve::GrammarCompiler::regex, "pattern"_a, release())
      .def("ebnf", &cserve::GrammarCompiler::ebnf, "grammar"_a, release())
      .def("lark", &cserve::GrammarCompiler::lark, "grammar"_a, release())
      .def("structural_tag", &cserve::GrammarCompiler::structural_tag, "tag_json"_a, release())
      .def("choice", &cserve::GrammarCompiler::choice, "options"_a, release())
      .def("guidance", &cserve::GrammarCompiler::guidance, "kind"_a, "source"_a, release())
      .def_prop_ro("has_guidance", &cserve::GrammarCompiler::has_guidance)
      .def("serialize", &cserve::GrammarCompiler::serialize, "grammar"_a, release())
      .def("deserialize", &cserve::GrammarCompiler::deserialize, "text"_a, release())
      .def_prop_ro("vocab_size", &cserve::GrammarCompiler::vocab_size);
}
