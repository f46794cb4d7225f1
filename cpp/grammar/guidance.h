// llguidance, the "guidance" structured-outputs backend (vLLM's fallback where xgrammar cannot
// compile a constraint), through its C API. The library is loaded at run time from the
// llguidance wheel, which exports that API: no build-time dependency, and the ABI declared in
// guidance.cpp is the one of the pinned version (pyproject.toml).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace cserve {

struct GuidanceLibrary;

// One llguidance matcher: where a request is in its grammar. Not thread-safe; one user at a time.
class GuidanceMatcher {
 public:
  ~GuidanceMatcher();
  std::unique_ptr<GuidanceMatcher> clone() const;
  // Allowed tokens as bits (bit t % 32 of word t / 32); false when the matcher failed.
  bool fill_mask(uint32_t* words, int64_t vocab_size);
  bool accept(int32_t token);  // false when the grammar rejects it
  bool stopped() const;        // the grammar ended (its stop token was accepted)

 private:
  friend class Guidance;
  GuidanceMatcher(std::shared_ptr<const GuidanceLibrary> lib, void* matcher) : lib_(std::move(lib)), m_(matcher) {}
  std::shared_ptr<const GuidanceLibrary> lib_;  // kept alive: the matcher lives in it
  void* m_;
  std::vector<uint32_t> scratch_;  // when llguidance's mask is wider than the model's vocabulary
};

// The library and one tokenizer in it.
class Guidance {
 public:
  // Throws NotSupported when the library cannot be loaded, InvalidArgument when llguidance
  // refuses the tokenizer.
  Guidance(const std::string& library_path, const std::string& tokenizer_json, int64_t vocab_size,
           const std::vector<int32_t>& stop_token_ids);
  ~Guidance();
  // A fresh matcher for `kind` (json, regex, lark) over `source`; InvalidArgument with
  // llguidance's reason when it cannot be built.
  std::unique_ptr<GuidanceMatcher> compile(const std::string& kind, const std::string& source) const;

 private:
  std::shared_ptr<const GuidanceLibrary> lib_;
  void* tokenizer_ = nullptr;
};

}  // namespace cserve
