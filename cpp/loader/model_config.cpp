// config.json -> ModelConfig, for configs as transformers 4.x and 5.x write them.
#include "loader/model_config.h"

#include <algorithm>
#include <cmath>
#include <list>

#include "core/dtype.h"
#include "cserve/error.h"
#include "util/json.h"
#include "util/logging.h"

namespace cserve {

namespace {

struct Family {
  const char* architecture;
  const char* model_type;
};

constexpr Family kFamilies[] = {
    {"LlamaForCausalLM", "llama"},
    {"MistralForCausalLM", "mistral"},
    {"Qwen2ForCausalLM", "qwen2"},
    {"Qwen3ForCausalLM", "qwen3"},
    {"GraniteForCausalLM", "granite"},
    {"Olmo2ForCausalLM", "olmo2"},
    {"SmolLM3ForCausalLM", "smollm3"},
    {"Phi3ForCausalLM", "phi3"},
    {"GemmaForCausalLM", "gemma"},
    {"Gemma2ForCausalLM", "gemma2"},
    {"Gemma3ForCausalLM", "gemma3_text"},
    {"MixtralForCausalLM", "mixtral"},
    {"Qwen2MoeForCausalLM", "qwen2_moe"},
    {"Qwen3MoeForCausalLM", "qwen3_moe"},
    {"GptOssForCausalLM", "gpt_oss"},
};

std::string supported_list() {
  std::string s;
  for (const Family& f : kFamilies) {
    if (!s.empty()) s += ", ";
    s += f.architecture;
  }
  return s;
}

// Field readers that name the source and the field in every error.
class ConfigReader {
 public:
  ConfigReader(const Json& root, const std::string& source) : root_(root), source_(source) {}

  const std::string& source() const { return source_; }
  const Json& root() const { return root_; }

  [[noreturn]] void invalid(const std::string& field, const std::string& why) const {
    throw InvalidArgument(source_ + ": field '" + field + "' " + why);
  }

  // Present and not null.
  const Json* get(const Json& obj, const std::string& key) const {
    const Json* v = obj.find(key);
    return (v == nullptr || v->is_null()) ? nullptr : v;
  }
  const Json* get(const std::string& key) const { return get(root_, key); }

  int64_t integer(const Json* v, const std::string& field) const {
    if (!v->is_number()) invalid(field, "must be an integer");
    try {
      return v->as_int();
    } catch (const InvalidArgument&) {
      invalid(field, "must be an integer");
    }
  }

  // A positive integer no larger than max (a dimension: a corrupt one must not size an allocation).
  int64_t positive_int(const std::string& field, int64_t max) const {
    const Json* v = get(field);
    if (v == nullptr) invalid(field, "is missing");
    int64_t x = integer(v, field);
    if (x <= 0 || x > max)
      invalid(field, "must be a positive integer up to " + std::to_string(max) + ", got " + std::to_string(x));
    return x;
  }

  int64_t positive_int_or(const std::string& field, int64_t max, int64_t fallback) const {
    return get(field) == nullptr ? fallback : positive_int(field, max);
  }

  double number(const Json* v, const std::string& field) const {
    if (!v->is_number() || !std::isfinite(v->as_number())) invalid(field, "must be a finite number");
    return v->as_number();
  }

  double number_or(const std::string& field, double fallback) const {
    const Json* v = get(field);
    return v == nullptr ? fallback : number(v, field);
  }

  bool boolean_or(const std::string& field, bool fallback) const {
    const Json* v = get(field);
    if (v == nullptr) return fallback;
    if (!v->is_bool()) invalid(field, "must be true or false");
    return v->as_bool();
  }

  std::string string_or(const std::string& field, const std::string& fallback) const {
    const Json* v = get(field);
    if (v == nullptr) return fallback;
    if (!v->is_string()) invalid(field, "must be a string");
    return v->as_string();
  }

  // An int, a list of ints, or null.
  std::vector<int64_t> int_list(const Json* v, const std::string& field) const {
    std::vector<int64_t> out;
    if (v == nullptr) return out;
    if (v->is_array()) {
      for (const Json& x : v->as_array()) out.push_back(integer(&x, field));
    } else {
      out.push_back(integer(v, field));
    }
    return out;
  }

 private:
  const Json& root_;
  std::string source_;
};

// Looks rope keys up in "rope_scaling" first, then "rope_parameters", as
// transformers 5 merges them (rope_scaling wins when both are present). With a layer type
// (Gemma 3), rope_parameters may hold one object per layer type: that type's is read.
class RopeReader {
 public:
  RopeReader(const ConfigReader& r, const Json& root, const char* layer_type = nullptr) : r_(r) {
    for (const char* key : {"rope_scaling", "rope_parameters"}) {
      const Json* v = r.get(root, key);
      if (v == nullptr) continue;
      if (!v->is_object()) r.invalid(key, "must be an object");
      if (layer_type != nullptr && std::string(key) == "rope_parameters") {
        if (const Json* per_type = r.get(*v, layer_type)) {
          names_.push_back(std::string(key) + "." + layer_type);
          if (!per_type->is_object()) r.invalid(names_.back(), "must be an object");
          v = per_type;
          key = names_.back().c_str();
        }
      }
      sources_.push_back({key, v});
    }
  }

  // The value and the field name to report, or nullptr.
  const Json* find(const std::string& key, std::string* field) const {
    for (const auto& s : sources_) {
      if (const Json* v = r_.get(*s.second, key)) {
        *field = std::string(s.first) + "." + key;
        return v;
      }
    }
    return nullptr;
  }

  bool has_number(const std::string& key) const {
    std::string field;
    return find(key, &field) != nullptr;
  }

  double number_or(const std::string& key, double fallback) const {
    std::string field;
    const Json* v = find(key, &field);
    return v == nullptr ? fallback : r_.number(v, field);
  }

  std::string type() const {
    for (const auto& s : sources_) {
      for (const char* key : {"rope_type", "type"}) {
        if (const Json* v = r_.get(*s.second, key)) {
          if (!v->is_string()) r_.invalid(std::string(s.first) + "." + key, "must be a string");
          return v->as_string();
        }
      }
    }
    return "default";
  }

 private:
  const ConfigReader& r_;
  std::list<std::string> names_;  // field names of per-layer-type objects (stable addresses)
  std::vector<std::pair<const char*, const Json*>> sources_;
};

void resolve_architecture(const ConfigReader& r, ModelConfig& c) {
  std::string model_type = r.string_or("model_type", "");
  const Json* archs = r.get("architectures");
  std::string arch;
  if (archs != nullptr) {
    if (!archs->is_array()) r.invalid("architectures", "must be a list of strings");
    if (!archs->as_array().empty()) {
      const Json& first = archs->as_array()[0];
      if (!first.is_string()) r.invalid("architectures", "must be a list of strings");
      arch = first.as_string();
    }
  }
  const Family* by_arch = nullptr;
  const Family* by_type = nullptr;
  for (const Family& f : kFamilies) {
    if (arch == f.architecture) by_arch = &f;
    if (model_type == f.model_type) by_type = &f;
  }
  if (!arch.empty() && by_arch == nullptr) {
    throw NotSupported(r.source() + ": architecture " + arch + " is not supported (supported: " +
                       supported_list() + ")");
  }
  if (by_arch == nullptr && by_type == nullptr) {
    std::string what = model_type.empty() ? "<none>" : "for model_type " + model_type;
    throw NotSupported(r.source() + ": architecture " + what + " is not supported (supported: " +
                       supported_list() + ")");
  }
  c.architecture = by_arch != nullptr ? by_arch->architecture : by_type->architecture;
  // Behaviour follows model_type as transformers does; the architecture fills in when it is absent.
  c.model_type = by_type != nullptr ? by_type->model_type : by_arch->model_type;
}

// longrope (transformers' _compute_longrope_parameters): short_factor and long_factor, one per
// rotary frequency; original_max_position_embeddings at the top level wins over the rope dict's
// (Phi-3 keeps it there; Phi3Config's default 4096), else max_position_embeddings; factor when
// absent max_position_embeddings / original.
void read_longrope(const ConfigReader& r, const RopeReader& rope, ModelConfig& c) {
  RopeScaling& s = c.rope_scaling;
  if (const Json* v = r.get("original_max_position_embeddings")) {
    s.original_max_position_embeddings = r.integer(v, "original_max_position_embeddings");
    if (s.original_max_position_embeddings <= 0) r.invalid("original_max_position_embeddings", "must be a positive integer");
  } else if (s.original_max_position_embeddings == 0) {
    s.original_max_position_embeddings = c.model_type == "phi3" ? 4096 : c.max_position_embeddings;
  }
  int64_t rotary = static_cast<int64_t>(static_cast<double>(c.head_dim) * c.partial_rotary_factor);
  rotary -= rotary % 2;
  for (auto [key, out] : {std::pair{"short_factor", &s.short_factor}, std::pair{"long_factor", &s.long_factor}}) {
    std::string field;
    const Json* v = rope.find(key, &field);
    if (v == nullptr) r.invalid(std::string("rope_scaling.") + key, "is required for longrope");
    if (!v->is_array() || static_cast<int64_t>(v->as_array().size()) != rotary / 2)
      r.invalid(field, "must be a list of " + std::to_string(rotary / 2) + " numbers (one per rotary frequency)");
    out->clear();
    for (const Json& x : v->as_array()) {
      out->push_back(r.number(&x, field));
      if (!(out->back() > 0)) r.invalid(field, "must hold positive numbers");
    }
  }
  s.factor = rope.has_number("factor") ? rope.number_or("factor", 1.0)
                                       : static_cast<double>(c.max_position_embeddings) /
                                             static_cast<double>(s.original_max_position_embeddings);
}

void read_rope(const ConfigReader& r, const Json& root, ModelConfig& c) {
  // Gemma 3: rope_theta and the scaling are its full-attention layers' (default base 1e6).
  const bool gemma3 = c.model_type == "gemma3_text";
  RopeReader rope(r, root, gemma3 ? "full_attention" : nullptr);
  std::string field;
  if (const Json* v = rope.find("rope_theta", &field)) {
    c.rope_theta = r.number(v, field);
  } else {
    c.rope_theta = r.number_or("rope_theta", gemma3 ? 1e6 : 10000.0);
  }
  if (!(c.rope_theta > 0)) r.invalid("rope_theta", "must be positive");
  if (const Json* v = rope.find("partial_rotary_factor", &field)) {
    c.partial_rotary_factor = r.number(v, field);
  } else {
    c.partial_rotary_factor = r.number_or("partial_rotary_factor", 1.0);
  }
  if (!(c.partial_rotary_factor > 0 && c.partial_rotary_factor <= 1.0)) {
    r.invalid("partial_rotary_factor", "must be in (0, 1]");
  }

  RopeScaling& s = c.rope_scaling;
  s.type = rope.type();
  // transformers' Phi3Config reads "su" (and "yarn") as longrope.
  if (s.type == "su" || (c.model_type == "phi3" && s.type == "yarn")) s.type = "longrope";
  if (s.type != "default" && s.type != "linear" && s.type != "dynamic" && s.type != "llama3" &&
      s.type != "yarn" && s.type != "longrope") {
    throw NotSupported(r.source() + ": rope scaling type " + s.type +
                       " is not supported (supported: default, linear, dynamic, llama3, yarn, longrope)");
  }
  s.original_max_position_embeddings = 0;
  if (const Json* v = rope.find("original_max_position_embeddings", &field)) {
    s.original_max_position_embeddings = r.integer(v, field);
    if (s.original_max_position_embeddings <= 0) r.invalid(field, "must be a positive integer");
  }
  if (s.type == "longrope") read_longrope(r, rope, c);
  if (s.type == "yarn" && !rope.has_number("factor") && s.original_max_position_embeddings > 0) {
    // transformers derives the yarn factor from the context extension when it is not given.
    s.factor = static_cast<double>(c.max_position_embeddings) / s.original_max_position_embeddings;
  } else if (s.type != "longrope") {
    s.factor = rope.number_or("factor", 1.0);
  }
  if (s.type != "default" && !(s.factor > 0)) r.invalid("rope_scaling.factor", "must be positive");
  s.low_freq_factor = rope.number_or("low_freq_factor", 1.0);
  s.high_freq_factor = rope.number_or("high_freq_factor", 4.0);
  s.beta_fast = rope.number_or("beta_fast", 32.0);
  s.beta_slow = rope.number_or("beta_slow", 1.0);
  s.attention_factor = rope.number_or("attention_factor", 0.0);
  s.mscale = rope.number_or("mscale", 0.0);
  s.mscale_all_dim = rope.number_or("mscale_all_dim", 0.0);
  if (const Json* v = rope.find("truncate", &field)) {
    if (!v->is_bool()) r.invalid(field, "must be true or false");
    s.truncate = v->as_bool();
  }
  if (s.type == "llama3" && !(s.high_freq_factor > s.low_freq_factor)) {
    r.invalid("rope_scaling.high_freq_factor", "must be greater than low_freq_factor");
  }
}

void read_sliding_window(const ConfigReader& r, ModelConfig& c) {
  size_t n = static_cast<size_t>(c.num_hidden_layers);
  c.layer_sliding_window.assign(n, 0);
  // The Qwen families ignore the window (Qwen2-MoE writes 0) unless use_sliding_window.
  const bool gated = c.model_type == "qwen2" || c.model_type == "qwen3" || c.model_type == "qwen2_moe" ||
                     c.model_type == "qwen3_moe" || c.model_type == "smollm3";
  if (gated && !r.boolean_or("use_sliding_window", false)) return;
  int64_t window = 0;
  if (const Json* v = r.get("sliding_window")) {
    window = r.integer(v, "sliding_window");
    if (window <= 0) r.invalid("sliding_window", "must be a positive integer or null");
  }
  if (c.model_type == "mistral" || c.model_type == "phi3" || c.model_type == "mixtral" || c.model_type == "qwen3_moe") {
    // Mistral, Mixtral, Phi-3 and Qwen3-MoE apply the window to every layer (layer_types are
    // ignored, as in transformers).
    std::fill(c.layer_sliding_window.begin(), c.layer_sliding_window.end(), window);
    return;
  }
  const bool is_qwen = c.model_type == "qwen2" || c.model_type == "qwen3";
  bool is_smollm3 = c.model_type == "smollm3";
  const bool alternating = c.model_type == "gemma2" || c.model_type == "gemma3_text" || c.model_type == "gpt_oss";
  if (c.model_type == "gemma") return;
  if (alternating && r.root().find("sliding_window") == nullptr)
    window = c.model_type == "gpt_oss" ? 128 : 4096;  // transformers' defaults
  if (window == 0) return;
  if (const Json* types = r.get("layer_types")) {
    if (!types->is_array() || types->as_array().size() != n) {
      r.invalid("layer_types", "must be a list of " + std::to_string(n) + " strings");
    }
    for (size_t i = 0; i < n; ++i) {
      const Json& t = types->as_array()[i];
      if (!t.is_string()) r.invalid("layer_types", "must be a list of strings");
      if (t.as_string() == "sliding_attention") {
        c.layer_sliding_window[i] = window;
      } else if (t.as_string() != "full_attention") {
        throw NotSupported(r.source() + ": layer type " + t.as_string() +
                           " is not supported (supported: full_attention, sliding_attention)");
      }
    }
    return;
  }
  if (alternating) {
    // transformers' layer_types when absent: every sliding_window_pattern-th layer (1-based) is
    // global, the others slide (Gemma 2, gpt-oss: every other one).
    const int64_t pattern = c.model_type == "gemma3_text" ? r.positive_int_or("sliding_window_pattern", kMaxNumLayers, 6) : 2;
    for (size_t i = 0; i < n; ++i)
      if ((static_cast<int64_t>(i) + 1) % pattern != 0) c.layer_sliding_window[i] = window;
    return;
  }
  if (is_smollm3) {
    // transformers' layer_types when absent: the window on the NoPE layers.
    for (size_t i = 0; i < n; ++i)
      if (!c.layer_rope[i]) c.layer_sliding_window[i] = window;
    return;
  }
  if (c.model_type == "qwen2_moe") {  // transformers: every other layer below max_window_layers
    const int64_t max_window_layers = r.positive_int_or("max_window_layers", kMaxNumLayers, 28);
    for (size_t i = 0; i < n; ++i)
      if ((i + 1) % 2 != 0 && static_cast<int64_t>(i) < max_window_layers) c.layer_sliding_window[i] = window;
    return;
  }
  if (is_qwen) {
    int64_t max_window_layers = r.get("max_window_layers") == nullptr
                                    ? 28  // transformers' default for Qwen2 and Qwen3
                                    : r.integer(r.get("max_window_layers"), "max_window_layers");
    for (size_t i = 0; i < n; ++i) {
      if (static_cast<int64_t>(i) >= max_window_layers) c.layer_sliding_window[i] = window;
    }
  }
}

// SmolLM3: no_rope_layers (1: the layer uses RoPE, 0: a NoPE layer), else every
// no_rope_layer_interval-th layer (1-based) without RoPE, as transformers derives it.
void read_no_rope_layers(const ConfigReader& r, ModelConfig& c) {
  const size_t n = static_cast<size_t>(c.num_hidden_layers);
  c.layer_rope.assign(n, 1);
  if (const Json* v = r.get("no_rope_layers")) {
    if (!v->is_array() || v->as_array().size() < n)
      r.invalid("no_rope_layers", "must be a list of at least " + std::to_string(n) + " integers (0 or 1)");
    for (size_t i = 0; i < n; ++i) {
      const int64_t x = r.integer(&v->as_array()[i], "no_rope_layers");
      if (x != 0 && x != 1) r.invalid("no_rope_layers", "must hold only 0 and 1");
      c.layer_rope[i] = static_cast<uint8_t>(x);
    }
    return;
  }
  const int64_t interval = r.positive_int_or("no_rope_layer_interval", kMaxNumLayers, 4);
  for (size_t i = 0; i < n; ++i) c.layer_rope[i] = (static_cast<int64_t>(i) + 1) % interval != 0;
}

// Granite's multipliers: positive numbers (transformers' defaults 1).
void read_granite(const ConfigReader& r, ModelConfig& c) {
  auto positive = [&](const char* field) {
    const double x = r.number_or(field, 1.0);
    if (!(x > 0)) r.invalid(field, "must be positive");
    return x;
  };
  c.embedding_multiplier = positive("embedding_multiplier");
  c.residual_multiplier = positive("residual_multiplier");
  c.attention_multiplier = positive("attention_multiplier");
  c.logits_scaling = positive("logits_scaling");
}

// Gemma 1 / 2 / 3: (1 + w) norms, the embedding scaled by sqrt(hidden_size), GELU (tanh), and
// from Gemma 2 on norms after each block too, query_pre_attn_scalar, the soft-capping (Gemma 2)
// and the sliding layers' own RoPE base (Gemma 3).
void read_gemma(const ConfigReader& r, const Json& root, ModelConfig& c) {
  c.norm_weight_offset = 1.0;
  c.embedding_scale = std::sqrt(static_cast<double>(c.hidden_size));
  if (c.model_type == "gemma") return;
  c.post_norms = true;
  const double scalar = r.number_or("query_pre_attn_scalar", 256.0);
  if (!(scalar > 0)) r.invalid("query_pre_attn_scalar", "must be positive");
  c.attention_multiplier = 1.0 / std::sqrt(scalar);
  const bool gemma2 = c.model_type == "gemma2";
  auto cap = [&](const char* field, double fallback) {  // absent: the family's default; null: none
    const double x = root.find(field) == nullptr ? fallback : r.number_or(field, 0.0);
    if (!(x >= 0)) r.invalid(field, "must be positive or null");
    return x;
  };
  c.attn_logit_softcapping = cap("attn_logit_softcapping", gemma2 ? 50.0 : 0.0);
  c.final_logit_softcapping = cap("final_logit_softcapping", gemma2 ? 30.0 : 0.0);
  if (r.boolean_or("use_bidirectional_attention", false))
    throw NotSupported(r.source() + ": use_bidirectional_attention is not supported (an embedding model)");
  if (gemma2) return;
  c.qk_norm = true;
  c.local_rope_theta = r.number_or("rope_local_base_freq", 10000.0);
  if (const Json* params = r.get("rope_parameters")) {
    if (const Json* local = params->is_object() ? r.get(*params, "sliding_attention") : nullptr) {
      if (!local->is_object()) r.invalid("rope_parameters.sliding_attention", "must be an object");
      for (const char* key : {"rope_type", "type"})
        if (const Json* t = r.get(*local, key); t != nullptr && (!t->is_string() || t->as_string() != "default"))
          throw NotSupported(r.source() + ": rope_parameters.sliding_attention." + key +
                             " must be default (the only RoPE cserve applies to Gemma 3's sliding layers)");
      if (const Json* theta = r.get(*local, "rope_theta"))
        c.local_rope_theta = r.number(theta, "rope_parameters.sliding_attention.rope_theta");
    }
  }
  if (!(c.local_rope_theta > 0)) r.invalid("rope_local_base_freq", "must be positive");
}

// Mixtral (num_local_experts, every layer, chosen weights renormalized), Qwen2-MoE and Qwen3-MoE
// (num_experts, moe_intermediate_size, norm_topk_prob, the layers decoder_sparse_step and
// mlp_only_layers leave sparse; Qwen2-MoE's shared expert), with transformers' defaults.
void read_moe(const ConfigReader& r, ModelConfig& c) {
  constexpr int64_t kMaxExperts = 1 << 16;
  const bool mixtral = c.model_type == "mixtral", qwen2 = c.model_type == "qwen2_moe";
  const bool gpt_oss = c.model_type == "gpt_oss";
  // Hub configs name it num_local_experts (Mixtral) or num_experts (Qwen); transformers 5 may
  // write either.
  const char* experts_field = r.get("num_experts") != nullptr ? "num_experts" : "num_local_experts";
  c.num_experts = r.positive_int_or(experts_field, kMaxExperts, mixtral ? 8 : qwen2 ? 60 : 128);
  c.num_experts_per_tok =
      r.positive_int_or("num_experts_per_tok", kMaxExperts, mixtral ? 2 : qwen2 || gpt_oss ? 4 : 8);
  if (c.num_experts_per_tok > c.num_experts)
    r.invalid("num_experts_per_tok", "(" + std::to_string(c.num_experts_per_tok) + ") must be at most " +
                                         experts_field + " (" + std::to_string(c.num_experts) + ")");
  const size_t n = static_cast<size_t>(c.num_hidden_layers);
  c.layer_moe.assign(n, 1);
  if (mixtral || gpt_oss) {
    // gpt-oss takes the softmax of the k largest logits: the same as renormalizing the top k.
    c.moe_intermediate_size = c.intermediate_size;
    c.norm_topk_prob = true;
    if (gpt_oss) {
      c.swiglu_alpha = r.number_or("swiglu_alpha", 1.702);
      c.swiglu_limit = r.number_or("swiglu_limit", 7.0);
      if (!(c.swiglu_alpha > 0)) r.invalid("swiglu_alpha", "must be positive");
      if (!(c.swiglu_limit > 0)) r.invalid("swiglu_limit", "must be positive");
    }
    return;
  }
  c.moe_intermediate_size = r.positive_int_or("moe_intermediate_size", kMaxModelWidth, qwen2 ? 1408 : 768);
  c.norm_topk_prob = r.boolean_or("norm_topk_prob", false);
  if (qwen2) c.shared_expert_intermediate_size = r.positive_int_or("shared_expert_intermediate_size", kMaxModelWidth, 5632);
  const int64_t step = r.positive_int_or("decoder_sparse_step", kMaxNumLayers, 1);
  for (size_t i = 0; i < n; ++i) c.layer_moe[i] = (static_cast<int64_t>(i) + 1) % step == 0;
  for (int64_t l : r.int_list(r.get("mlp_only_layers"), "mlp_only_layers")) {
    if (l < 0 || l >= c.num_hidden_layers)
      r.invalid("mlp_only_layers", "holds layer " + std::to_string(l) + " of " + std::to_string(c.num_hidden_layers));
    c.layer_moe[static_cast<size_t>(l)] = 0;
  }
}

std::string read_dtype(const ConfigReader& r) {
  std::string name = r.string_or("dtype", r.string_or("torch_dtype", ""));
  if (name.rfind("torch.", 0) == 0) name = name.substr(6);
  if (name.empty()) return name;
  try {
    return dtype_name(parse_dtype(name));
  } catch (const InvalidArgument&) {
    log_warning(r.source() + ": ignoring unsupported dtype " + name);
    return "";
  }
}

// The decoder's config: config.json itself, or a multimodal config's text_config.
ModelConfig parse_decoder_config(const Json& root, const std::string& source) {
  ConfigReader r(root, source);
  ModelConfig c;
  resolve_architecture(r, c);

  // Gemma 3's multimodal configs leave most of text_config at Gemma3TextConfig's defaults.
  const bool gemma3 = c.model_type == "gemma3_text";
  auto dimension = [&](const char* field, int64_t max, int64_t gemma3_default) {
    return gemma3 ? r.positive_int_or(field, max, gemma3_default) : r.positive_int(field, max);
  };
  c.vocab_size = dimension("vocab_size", kMaxVocabSize, 262208);
  c.hidden_size = dimension("hidden_size", kMaxModelWidth, 2304);
  c.intermediate_size = dimension("intermediate_size", kMaxModelWidth, 9216);
  c.num_hidden_layers = dimension("num_hidden_layers", kMaxNumLayers, 26);
  c.num_attention_heads = dimension("num_attention_heads", kMaxModelWidth, 8);
  c.num_key_value_heads = r.positive_int_or("num_key_value_heads", kMaxModelWidth, gemma3 ? 4 : c.num_attention_heads);
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    r.invalid("num_key_value_heads", "(" + std::to_string(c.num_key_value_heads) +
                                         ") must divide num_attention_heads (" +
                                         std::to_string(c.num_attention_heads) + ")");
  }
  if (r.get("head_dim") != nullptr || gemma3) {
    c.head_dim = r.positive_int_or("head_dim", kMaxModelWidth, 256);
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      r.invalid("hidden_size", "must be divisible by num_attention_heads when head_dim is absent");
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  c.rms_norm_eps = r.number_or("rms_norm_eps", c.model_type == "olmo2" || c.model_type == "phi3" ? 1e-5 : 1e-6);  // transformers' defaults
  if (!(c.rms_norm_eps > 0)) r.invalid("rms_norm_eps", "must be positive");
  c.max_position_embeddings = r.positive_int_or("max_position_embeddings", kMaxPositions, gemma3 ? 131072 : 2048);
  read_rope(r, root, c);

  const bool gemma = c.model_type.rfind("gemma", 0) == 0;
  c.tie_word_embeddings = r.boolean_or("tie_word_embeddings", c.model_type == "smollm3" || gemma);
  if (c.model_type == "qwen2_moe")  // q/k/v biases under their own key; o_proj has none
    c.attention_bias = r.boolean_or("qkv_bias", true);
  else
    c.attention_bias = c.model_type == "qwen2" ||
                       (c.model_type != "phi3" && r.boolean_or("attention_bias", c.model_type == "gpt_oss"));
  c.o_proj_bias = c.model_type != "qwen2" && c.model_type != "qwen2_moe" && c.attention_bias;
  const bool has_mlp_bias = c.model_type == "llama" || c.model_type == "granite" || c.model_type == "smollm3";
  c.mlp_bias = has_mlp_bias && r.boolean_or("mlp_bias", false);
  c.qk_norm = c.model_type == "qwen3" || c.model_type == "qwen3_moe";
  c.post_norms = c.qk_norm_full = c.model_type == "olmo2";
  c.pre_norms = c.model_type != "olmo2";
  c.fused_proj = c.model_type == "phi3";
  if (c.model_type == "granite") read_granite(r, c);
  if (gemma) read_gemma(r, root, c);
  if (c.model_type == "mixtral" || c.model_type == "qwen2_moe" || c.model_type == "qwen3_moe" ||
      c.model_type == "gpt_oss")
    read_moe(r, c);
  c.attention_sinks = c.model_type == "gpt_oss";
  if (c.model_type == "smollm3") read_no_rope_layers(r, c);
  read_sliding_window(r, c);
  if (c.local_rope_theta > 0)
    for (int64_t w : c.layer_sliding_window) c.layer_local_rope.push_back(w > 0);

  c.torch_dtype = read_dtype(r);
  c.quantization = parse_quantization_config(root.find("quantization_config"), source);
  if (c.quantization.method == "mxfp4" && c.model_type != "gpt_oss")  // vLLM's mxfp4 is gpt-oss's experts too
    throw NotSupported(source + ": quantization method 'mxfp4' is supported for gpt-oss (GptOssForCausalLM) only, not " +
                       c.model_type);
  c.eos_token_ids = r.int_list(r.get("eos_token_id"), "eos_token_id");
  if (const Json* v = r.get("bos_token_id")) c.bos_token_id = r.integer(v, "bos_token_id");
  // Gemma 2 / 3 name it hidden_activation; Gemma's legacy "gelu" means the tanh approximation,
  // as transformers reads it.
  const char* act_field = gemma && c.model_type != "gemma" ? "hidden_activation" : "hidden_act";
  c.hidden_act = r.string_or(act_field, gemma ? "gelu_pytorch_tanh" : "silu");
  if (c.hidden_act == "swish") c.hidden_act = "silu";  // the same function in transformers
  if (c.hidden_act == "gelu_new" || (c.model_type == "gemma" && c.hidden_act == "gelu")) c.hidden_act = "gelu_pytorch_tanh";
  if (c.hidden_act != "silu" && c.hidden_act != "gelu_pytorch_tanh") {
    throw NotSupported(source + ": " + act_field + " " + c.hidden_act +
                       " is not supported (supported: silu, gelu_pytorch_tanh)");
  }
  check_model_config(c, source);
  return c;
}

}  // namespace

// config.json's root object: a decoder's config, or a multimodal one holding it.
static ModelConfig parse_config_root(const Json& root, const std::string& source) {
  if (!root.is_object()) throw InvalidArgument(source + ": config must be a JSON object");
  const Json* archs = root.find("architectures");
  const bool gemma3_mm = archs != nullptr && archs->is_array() && !archs->as_array().empty() &&
                         archs->as_array()[0].is_string() &&
                         archs->as_array()[0].as_string() == "Gemma3ForConditionalGeneration";
  if (!gemma3_mm) return parse_decoder_config(root, source);
  // Gemma 3's image-text checkpoints: cserve serves their language model (text prompts).
  const Json* text = root.find("text_config");
  if (text == nullptr || !text->is_object())
    throw InvalidArgument(source + ": field 'text_config' must be an object (Gemma3ForConditionalGeneration)");
  if (text->find("model_type") == nullptr || !text->find("model_type")->is_string() ||
      text->find("model_type")->as_string() != "gemma3_text")
    throw NotSupported(source + ": text_config.model_type must be gemma3_text");
  ModelConfig c = parse_decoder_config(*text, source + " (text_config)");
  ConfigReader r(root, source);
  c.architecture = "Gemma3ForConditionalGeneration";
  c.text_of_multimodal = true;
  if (c.eos_token_ids.empty()) c.eos_token_ids = r.int_list(r.get("eos_token_id"), "eos_token_id");
  if (c.bos_token_id < 0 && r.get("bos_token_id")) c.bos_token_id = r.integer(r.get("bos_token_id"), "bos_token_id");
  if (c.torch_dtype.empty()) c.torch_dtype = read_dtype(r);
  return c;
}

void check_model_config(const ModelConfig& c, const std::string& source) {
  auto invalid = [&](const std::string& field, const std::string& why) {
    throw InvalidArgument(source + ": field '" + field + "' " + why);
  };
  if (c.head_dim <= 0 || c.head_dim % 2 != 0)
    invalid("head_dim", "must be positive and even, got " + std::to_string(c.head_dim));
  if (c.num_attention_heads > kMaxModelWidth / c.head_dim)
    invalid("num_attention_heads", "times head_dim (" + std::to_string(c.num_attention_heads) + " x " +
                                       std::to_string(c.head_dim) + ") must be at most " +
                                       std::to_string(kMaxModelWidth));
  if (!(c.partial_rotary_factor > 0 && c.partial_rotary_factor <= 1.0) ||
      static_cast<int64_t>(static_cast<double>(c.head_dim) * c.partial_rotary_factor) < 2)
    invalid("partial_rotary_factor", "must leave at least 2 of head_dim's " + std::to_string(c.head_dim) +
                                         " dimensions rotary and at most all of them");
  if (!(c.rms_norm_eps > 0 && std::isfinite(c.rms_norm_eps))) invalid("rms_norm_eps", "must be finite and positive");
  if (!(c.rope_theta > 0 && std::isfinite(c.rope_theta))) invalid("rope_theta", "must be finite and positive");
  if (c.max_position_embeddings <= 0 || c.max_position_embeddings > kMaxPositions)
    invalid("max_position_embeddings", "must be a positive integer up to " + std::to_string(kMaxPositions) +
                                           ", got " + std::to_string(c.max_position_embeddings));
  const RopeScaling& s = c.rope_scaling;
  if (s.original_max_position_embeddings < 0 || s.original_max_position_embeddings > kMaxPositions)
    invalid("rope_scaling.original_max_position_embeddings",
            "must be a positive integer up to " + std::to_string(kMaxPositions));
  if (s.type != "default" && !(s.factor > 0 && s.factor <= kMaxRopeFactor))
    invalid("rope_scaling.factor", "must be positive and at most " + std::to_string(static_cast<int64_t>(kMaxRopeFactor)));
  if (static_cast<int64_t>(c.layer_sliding_window.size()) != c.num_hidden_layers ||
      (!c.layer_rope.empty() && static_cast<int64_t>(c.layer_rope.size()) != c.num_hidden_layers) ||
      (!c.layer_moe.empty() && static_cast<int64_t>(c.layer_moe.size()) != c.num_hidden_layers) ||
      (c.local_rope_theta > 0 && static_cast<int64_t>(c.layer_local_rope.size()) != c.num_hidden_layers))
    invalid("num_hidden_layers", "does not match the per-layer attention settings");
  if (c.num_experts > 0 && (c.num_experts_per_tok < 1 || c.num_experts_per_tok > c.num_experts ||
                            c.moe_intermediate_size <= 0 || c.moe_intermediate_size > kMaxModelWidth))
    invalid("num_experts_per_tok", "must be between 1 and the number of experts, with a positive expert width");
  const std::pair<const char*, double> multipliers[] = {{"embedding_multiplier", c.embedding_multiplier},
                                                        {"residual_multiplier", c.residual_multiplier},
                                                        {"logits_scaling", c.logits_scaling}};
  for (const auto& [field, x] : multipliers)
    if (!(x > 0 && std::isfinite(x))) invalid(field, "must be finite and positive");
  if (!(c.attention_multiplier >= 0 && std::isfinite(c.attention_multiplier)))
    invalid("attention_multiplier", "must be finite and positive");
}

ModelConfig parse_model_config(const std::string& json_text, const std::string& source) {
  return parse_config_root(Json::parse(json_text, source), source);
}

ModelConfig load_model_config(const std::string& model_dir, const std::string& overrides) {
  // A directory holding config.json, or (--hf-config-path) the .json file itself.
  const bool file = model_dir.size() > 5 && model_dir.compare(model_dir.size() - 5, 5, ".json") == 0;
  std::string path = file ? model_dir : model_dir + "/config.json";
  Json root = Json::parse(read_text_file(path), path);
  if (overrides.empty()) return parse_config_root(root, path);
  const Json changes = Json::parse(overrides, "hf_overrides");
  if (!changes.is_object()) throw InvalidArgument("hf_overrides must be a JSON object");
  if (!root.is_object()) throw InvalidArgument(path + ": config must be a JSON object");
  return parse_config_root(Json::merge(root, changes), path + " with hf_overrides");
}

std::vector<int64_t> load_generation_eos(const std::string& model_dir) {
  std::string path = model_dir + "/generation_config.json";
  std::string text;
  try {
    text = read_text_file(path);
  } catch (const NotFound&) {
    return {};
  }
  Json root = Json::parse(text, path);
  ConfigReader r(root, path);
  return r.int_list(r.get("eos_token_id"), "eos_token_id");
}

}  // namespace cserve
