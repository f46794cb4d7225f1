// config.json -> ModelConfig, for configs as transformers 4.x and 5.x write them.
#include "loader/model_config.h"

#include <algorithm>
#include <cmath>

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
// transformers 5 merges them (rope_scaling wins when both are present).
class RopeReader {
 public:
  RopeReader(const ConfigReader& r, const Json& root) : r_(r) {
    for (const char* key : {"rope_scaling", "rope_parameters"}) {
      const Json* v = r.get(root, key);
      if (v == nullptr) continue;
      if (!v->is_object()) r.invalid(key, "must be an object");
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
  RopeReader rope(r, root);
  std::string field;
  if (const Json* v = rope.find("rope_theta", &field)) {
    c.rope_theta = r.number(v, field);
  } else {
    c.rope_theta = r.number_or("rope_theta", 10000.0);
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
  int64_t window = 0;
  if (const Json* v = r.get("sliding_window")) {
    window = r.integer(v, "sliding_window");
    if (window <= 0) r.invalid("sliding_window", "must be a positive integer or null");
  }
  if (c.model_type == "mistral" || c.model_type == "phi3") {
    // Mistral (and Phi-3) applies its window to every layer (layer_types are ignored, as in transformers).
    std::fill(c.layer_sliding_window.begin(), c.layer_sliding_window.end(), window);
    return;
  }
  bool is_qwen = c.model_type == "qwen2" || c.model_type == "qwen3";
  bool is_smollm3 = c.model_type == "smollm3";
  if ((is_qwen || is_smollm3) && !r.boolean_or("use_sliding_window", false)) return;
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
  if (is_smollm3) {
    // transformers' layer_types when absent: the window on the NoPE layers.
    for (size_t i = 0; i < n; ++i)
      if (!c.layer_rope[i]) c.layer_sliding_window[i] = window;
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

}  // namespace

ModelConfig parse_model_config(const std::string& json_text, const std::string& source) {
  Json root = Json::parse(json_text, source);
  if (!root.is_object()) throw InvalidArgument(source + ": config must be a JSON object");
  ConfigReader r(root, source);
  ModelConfig c;
  resolve_architecture(r, c);

  c.vocab_size = r.positive_int("vocab_size", kMaxVocabSize);
  c.hidden_size = r.positive_int("hidden_size", kMaxModelWidth);
  c.intermediate_size = r.positive_int("intermediate_size", kMaxModelWidth);
  c.num_hidden_layers = r.positive_int("num_hidden_layers", kMaxNumLayers);
  c.num_attention_heads = r.positive_int("num_attention_heads", kMaxModelWidth);
  c.num_key_value_heads = r.positive_int_or("num_key_value_heads", kMaxModelWidth, c.num_attention_heads);
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    r.invalid("num_key_value_heads", "(" + std::to_string(c.num_key_value_heads) +
                                         ") must divide num_attention_heads (" +
                                         std::to_string(c.num_attention_heads) + ")");
  }
  if (r.get("head_dim") != nullptr) {
    c.head_dim = r.positive_int("head_dim", kMaxModelWidth);
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      r.invalid("hidden_size", "must be divisible by num_attention_heads when head_dim is absent");
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  c.rms_norm_eps = r.number_or("rms_norm_eps", c.model_type == "olmo2" || c.model_type == "phi3" ? 1e-5 : 1e-6);  // transformers' defaults
  if (!(c.rms_norm_eps > 0)) r.invalid("rms_norm_eps", "must be positive");
  c.max_position_embeddings = r.positive_int_or("max_position_embeddings", kMaxPositions, 2048);
  read_rope(r, root, c);

  c.tie_word_embeddings = r.boolean_or("tie_word_embeddings", c.model_type == "smollm3");
  c.attention_bias = c.model_type == "qwen2" || (c.model_type != "phi3" && r.boolean_or("attention_bias", false));
  c.o_proj_bias = c.model_type != "qwen2" && c.attention_bias;
  const bool has_mlp_bias = c.model_type == "llama" || c.model_type == "granite" || c.model_type == "smollm3";
  c.mlp_bias = has_mlp_bias && r.boolean_or("mlp_bias", false);
  c.qk_norm = c.model_type == "qwen3";
  c.post_norms = c.qk_norm_full = c.model_type == "olmo2";
  c.fused_proj = c.model_type == "phi3";
  if (c.model_type == "granite") read_granite(r, c);
  if (c.model_type == "smollm3") read_no_rope_layers(r, c);
  read_sliding_window(r, c);

  c.torch_dtype = read_dtype(r);
  c.eos_token_ids = r.int_list(r.get("eos_token_id"), "eos_token_id");
  if (const Json* v = r.get("bos_token_id")) c.bos_token_id = r.integer(v, "bos_token_id");
  c.hidden_act = r.string_or("hidden_act", "silu");
  if (c.hidden_act == "swish") c.hidden_act = "silu";  // the same function in transformers
  if (c.hidden_act != "silu") {
    throw NotSupported(source + ": hidden_act " + c.hidden_act + " is not supported (supported: silu)");
  }
  check_model_config(c, source);
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
      (!c.layer_rope.empty() && static_cast<int64_t>(c.layer_rope.size()) != c.num_hidden_layers))
    invalid("num_hidden_layers", "does not match the per-layer attention settings");
  const std::pair<const char*, double> multipliers[] = {{"embedding_multiplier", c.embedding_multiplier},
                                                        {"residual_multiplier", c.residual_multiplier},
                                                        {"logits_scaling", c.logits_scaling}};
  for (const auto& [field, x] : multipliers)
    if (!(x > 0 && std::isfinite(x))) invalid(field, "must be finite and positive");
  if (!(c.attention_multiplier >= 0 && std::isfinite(c.attention_multiplier)))
    invalid("attention_multiplier", "must be finite and positive");
}

ModelConfig load_model_config(const std::string& model_dir) {
  std::string path = model_dir + "/config.json";
  return parse_model_config(read_text_file(path), path);
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
