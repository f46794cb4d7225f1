#include "grammar/guidance.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstring>

#include "cserve/error.h"

namespace cserve {

namespace {

// The parts of llguidance's C API (llguidance.h, version 1.8) that cserve calls. Layouts must
// match that version exactly.
struct LlgParserLimits {
  size_t max_items_in_row;
  uint64_t initial_lexer_fuel;
  uint64_t step_lexer_fuel;
  size_t step_max_items;
  size_t max_lexer_states;
  size_t max_grammar_size;
  bool precompute_large_lexemes;
  bool verbose_errors;
};
struct LlgConstraintInit {
  const void* tokenizer;
  uint32_t log_buffer_level;
  uint32_t log_stderr_level;
  bool ff_tokens_ok;
  bool backtrack_ok;
  LlgParserLimits limits;
};
using LlgTokenizeFn = size_t (*)(const void*, const uint8_t*, size_t, uint32_t*, size_t);
struct LlgTokenizerInitV2 {
  size_t struct_size;
  uint32_t vocab_size;
  uint32_t tok_eos;
  const uint32_t* token_lens;
  const uint8_t* token_bytes;
  const char* tokenizer_json;
  bool tokenize_assumes_string;
  LlgTokenizeFn tokenize_fn;
  bool use_approximate_greedy_tokenize_fn;
  const void* tokenize_user_data;
  const char* const* slices;
  const uint32_t* tok_eos_extra;
  uint32_t tok_eos_extra_count;
};

}  // namespace

struct GuidanceLibrary {
  void* handle = nullptr;
  void* (*new_tokenizer_v2)(const LlgTokenizerInitV2*, char*, size_t) = nullptr;
  void (*free_tokenizer)(void*) = nullptr;
  void (*constraint_init_set_defaults)(LlgConstraintInit*, const void*) = nullptr;
  void* (*new_matcher)(const LlgConstraintInit*, const char*, const char*) = nullptr;
  void* (*clone_matcher)(const void*) = nullptr;
  void (*free_matcher)(void*) = nullptr;
  const char* (*matcher_get_error)(void*) = nullptr;
  bool (*matcher_is_error)(const void*) = nullptr;
  int32_t (*matcher_compute_mask_into)(void*, uint32_t*, size_t) = nullptr;
  size_t (*matcher_get_mask_byte_size)(const void*) = nullptr;
  int32_t (*matcher_consume_token)(void*, uint32_t) = nullptr;
  bool (*matcher_is_stopped)(const void*) = nullptr;

  ~GuidanceLibrary() {
    if (handle) dlclose(handle);
  }
};

namespace {

template <typename Fn>
void bind(GuidanceLibrary& lib, Fn& fn, const char* name, const std::string& path) {
  fn = reinterpret_cast<Fn>(dlsym(lib.handle, name));
  if (!fn) throw NotSupported("llguidance (" + path + ") lacks " + name + ": install the version cserve pins");
}

std::shared_ptr<const GuidanceLibrary> open_library(const std::string& path) {
  auto lib = std::make_shared<GuidanceLibrary>();
  // Lazy and local: the file is also a Python extension, whose Python symbols are never called.
  lib->handle = dlopen(path.c_str(), RTLD_LAZY | RTLD_LOCAL);
  if (!lib->handle) throw NotSupported(std::string("llguidance could not be loaded: ") + dlerror());
  bind(*lib, lib->new_tokenizer_v2, "llg_new_tokenizer_v2", path);
  bind(*lib, lib->free_tokenizer, "llg_free_tokenizer", path);
  bind(*lib, lib->constraint_init_set_defaults, "llg_constraint_init_set_defaults", path);
  bind(*lib, lib->new_matcher, "llg_new_matcher", path);
  bind(*lib, lib->clone_matcher, "llg_clone_matcher", path);
  bind(*lib, lib->free_matcher, "llg_free_matcher", path);
  bind(*lib, lib->matcher_get_error, "llg_matcher_get_error", path);
  bind(*lib, lib->matcher_is_error, "llg_matcher_is_error", path);
  bind(*lib, lib->matcher_compute_mask_into, "llg_matcher_compute_mask_into", path);
  bind(*lib, lib->matcher_get_mask_byte_size, "llg_matcher_get_mask_byte_size", path);
  bind(*lib, lib->matcher_consume_token, "llg_matcher_consume_token", path);
  bind(*lib, lib->matcher_is_stopped, "llg_matcher_is_stopped", path);
  return lib;
}

}  // namespace

GuidanceMatcher::~GuidanceMatcher() {
  if (m_) lib_->free_matcher(m_);
}

std::unique_ptr<GuidanceMatcher> GuidanceMatcher::clone() const {
  return std::unique_ptr<GuidanceMatcher>(new GuidanceMatcher(lib_, lib_->clone_matcher(m_)));
}

bool GuidanceMatcher::fill_mask(uint32_t* words, int64_t vocab_size) {
  const size_t want = static_cast<size_t>((vocab_size + 31) / 32) * 4;
  const size_t have = lib_->matcher_get_mask_byte_size(m_);
  if (have == want) return lib_->matcher_compute_mask_into(m_, words, want) == 0;
  // llguidance counts the tokenizer's tokens, which may outnumber the model's logits.
  scratch_.assign(have / 4, 0);
  if (lib_->matcher_compute_mask_into(m_, scratch_.data(), have) != 0) return false;
  std::fill(words, words + want / 4, 0u);
  std::copy_n(scratch_.begin(), std::min(want, have) / 4, words);
  return true;
}

bool GuidanceMatcher::accept(int32_t token) {
  return lib_->matcher_consume_token(m_, static_cast<uint32_t>(token)) == 0 && !lib_->matcher_is_error(m_);
}

bool GuidanceMatcher::stopped() const { return lib_->matcher_is_stopped(m_); }

Guidance::Guidance(const std::string& library_path, const std::string& tokenizer_json, int64_t vocab_size,
                   const std::vector<int32_t>& stop_token_ids)
    : lib_(open_library(library_path)) {
  if (stop_token_ids.empty()) throw InvalidArgument("llguidance needs a stop token");
  std::vector<uint32_t> extra(stop_token_ids.begin() + 1, stop_token_ids.end());
  LlgTokenizerInitV2 init{};
  init.struct_size = sizeof(init);
  init.vocab_size = static_cast<uint32_t>(vocab_size);
  init.tok_eos = static_cast<uint32_t>(stop_token_ids[0]);
  init.tokenizer_json = tokenizer_json.c_str();
  init.use_approximate_greedy_tokenize_fn = true;  // tokenizing only serves its lexer's special strings
  init.tok_eos_extra = extra.empty() ? nullptr : extra.data();
  init.tok_eos_extra_count = static_cast<uint32_t>(extra.size());
  char error[1024] = {0};
  tokenizer_ = lib_->new_tokenizer_v2(&init, error, sizeof error);
  if (!tokenizer_) throw InvalidArgument(std::string("llguidance refused the tokenizer: ") + error);
}

Guidance::~Guidance() {
  if (tokenizer_) lib_->free_tokenizer(tokenizer_);
}

std::unique_ptr<GuidanceMatcher> Guidance::compile(const std::string& kind, const std::string& source) const {
  LlgConstraintInit init{};
  lib_->constraint_init_set_defaults(&init, tokenizer_);
  init.log_stderr_level = 0;
  std::unique_ptr<GuidanceMatcher> m(new GuidanceMatcher(lib_, lib_->new_matcher(&init, kind.c_str(), source.c_str())));
  if (lib_->matcher_is_error(m->m_)) {
    const char* why = lib_->matcher_get_error(m->m_);
    throw InvalidArgument(why ? why : "llguidance could not build the constraint");
  }
  return m;
}

}  // namespace cserve
