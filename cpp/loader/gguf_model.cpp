#include "loader/gguf_model.h"

#include <algorithm>
#include <regex>

#include "cserve/error.h"

namespace cserve {

namespace {

struct Arch {
  const char* gguf;
  const char* architecture;
  const char* model_type;
};
// GGUF general.architecture values cserve runs, and their transformers names.
constexpr Arch kArchs[] = {
    {"llama", "LlamaForCausalLM", "llama"},
    {"mistral", "MistralForCausalLM", "mistral"},
    {"qwen2", "Qwen2ForCausalLM", "qwen2"},
    {"qwen3", "Qwen3ForCausalLM", "qwen3"},
};

// A positive integer no larger than max, or `fallback` when the key is absent (-1: required).
int64_t bounded_int(const GgufFile& f, const std::string& key, int64_t max, int64_t fallback = -1) {
  const int64_t v = f.get_int(key, fallback);
  if (v <= 0 || v > max)
    throw InvalidArgument(f.path() + ": metadata " + key + " is missing or not a positive integer up to " +
                          std::to_string(max) + " (got " + std::to_string(v) + ")");
  return v;
}

}  // namespace

ModelConfig gguf_model_config(const GgufFile& f) {
  const std::string arch = f.get_string("general.architecture");
  const Arch* known = nullptr;
  for (const Arch& a : kArchs)
    if (arch == a.gguf) known = &a;
  if (!known)
    throw NotSupported(f.path() + ": GGUF architecture '" + arch +
                       "' is not supported (supported: llama, mistral, qwen2, qwen3)");
  ModelConfig c;
  c.architecture = known->architecture;
  c.model_type = known->model_type;
  const std::string p = arch + ".";
  c.hidden_size = bounded_int(f, p + "embedding_length", kMaxModelWidth);
  c.intermediate_size = bounded_int(f, p + "feed_forward_length", kMaxModelWidth);
  c.num_hidden_layers = bounded_int(f, p + "block_count", kMaxNumLayers);
  c.num_attention_heads = bounded_int(f, p + "attention.head_count", kMaxModelWidth);
  c.num_key_value_heads = bounded_int(f, p + "attention.head_count_kv", kMaxModelWidth, c.num_attention_heads);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    throw InvalidArgument(f.path() + ": attention.head_count_kv must divide attention.head_count");
  c.head_dim = bounded_int(f, p + "attention.key_length", kMaxModelWidth,
                           std::max<int64_t>(c.hidden_size / c.num_attention_heads, 1));
  c.rms_norm_eps = f.get_float(p + "attention.layer_norm_rms_epsilon", 1e-6);
  c.rope_theta = f.get_float(p + "rope.freq_base", 10000.0);
  const int64_t rope_dims = bounded_int(f, p + "rope.dimension_count", c.head_dim, c.head_dim);
  c.partial_rotary_factor = static_cast<double>(rope_dims) / static_cast<double>(c.head_dim);
  c.max_position_embeddings = bounded_int(f, p + "context_length", kMaxPositions, 2048);
  const std::string scaling = f.get_string(p + "rope.scaling.type", "none");
  if (scaling == "linear" || scaling == "yarn") {
    c.rope_scaling.type = scaling;
    c.rope_scaling.factor = f.get_float(p + "rope.scaling.factor", 1.0);
    c.rope_scaling.original_max_position_embeddings = f.get_int(p + "rope.scaling.original_context_length", 0);
  } else if (scaling != "none") {
    throw NotSupported(f.path() + ": rope scaling '" + scaling + "' is not supported");
  }
  c.tie_word_embeddings = !f.has_tensor("output.weight");
  c.attention_bias = f.has_tensor("blk.0.attn_q.bias");
  c.o_proj_bias = f.has_tensor("blk.0.attn_output.bias");
  c.qk_norm = f.has_tensor("blk.0.attn_q_norm.weight");
  c.layer_sliding_window.assign(static_cast<size_t>(c.num_hidden_layers), 0);
  const GgufTensor& embd = f.tensor("token_embd.weight");
  if (embd.shape.size() != 2 || embd.shape[1] != c.hidden_size)
    throw InvalidArgument(f.path() + ": tensor token_embd.weight does not match embedding_length");
  if (embd.shape[0] > kMaxVocabSize)
    throw InvalidArgument(f.path() + ": tensor token_embd.weight has " + std::to_string(embd.shape[0]) +
                          " rows, more than the largest vocabulary (" + std::to_string(kMaxVocabSize) + ")");
  c.vocab_size = embd.shape[0];
  if (f.find("tokenizer.ggml.eos_token_id")) c.eos_token_ids = {f.get_int("tokenizer.ggml.eos_token_id", -1)};
  c.bos_token_id = f.get_int("tokenizer.ggml.bos_token_id", -1);
  c.torch_dtype = "bfloat16";  // what --dtype auto computes in (the weights stay quantized)
  check_model_config(c, f.path());
  return c;
}

std::string gguf_tensor_name(const std::string& hf) {
  static const std::pair<const char*, const char*> kTop[] = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
  };
  for (const auto& [from, to] : kTop)
    if (hf == from) return to;
  static const std::regex layer(R"(model\.layers\.(\d+)\.(.+))");
  static const std::pair<const char*, const char*> kLayer[] = {
      {"input_layernorm", "attn_norm"},       {"post_attention_layernorm", "ffn_norm"},
      {"self_attn.q_proj", "attn_q"},         {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"},         {"self_attn.o_proj", "attn_output"},
      {"self_attn.q_norm", "attn_q_norm"},    {"self_attn.k_norm", "attn_k_norm"},
      {"mlp.gate_proj", "ffn_gate"},          {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"},
  };
  std::smatch m;
  if (!std::regex_match(hf, m, layer)) return "";
  const std::string rest = m[2];
  for (const auto& [from, to] : kLayer) {
    const std::string f = from;
    if (rest.compare(0, f.size(), f) == 0 && rest.size() > f.size() && rest[f.size()] == '.')
      return "blk." + std::string(m[1]) + "." + to + rest.substr(f.size());
  }
  return "";
}

int64_t gguf_permuted_heads(const GgufFile& f, const ModelConfig& c, const std::string& hf) {
  const std::string arch = f.get_string("general.architecture");
  if (arch != "llama" && arch != "mistral") return 0;
  if (hf.find("self_attn.q_proj.") != std::string::npos) return c.num_attention_heads;
  if (hf.find("self_attn.k_proj.") != std::string::npos) return c.num_key_value_heads;
  return 0;
}

}  // namespace cserve
