#include "loader/gguf_model.h"

#include <algorithm>
#include <cmath>

#include "cserve/error.h"

namespace cserve {

namespace {

struct Arch {
  const char* gguf;
  const char* architecture;
  const char* model_type;
};
// GGUF general.architecture values cserve runs, and their transformers names.
// llama.cpp writes Mixtral as "llama" with experts: see gguf_model_config.
constexpr Arch kArchs[] = {
    {"llama", "LlamaForCausalLM", "llama"},
    {"mistral", "MistralForCausalLM", "mistral"},
    {"qwen2", "Qwen2ForCausalLM", "qwen2"},
    {"qwen3", "Qwen3ForCausalLM", "qwen3"},
    {"gemma", "GemmaForCausalLM", "gemma"},
    {"gemma2", "Gemma2ForCausalLM", "gemma2"},
    {"gemma3", "Gemma3ForCausalLM", "gemma3_text"},
    {"qwen2moe", "Qwen2MoeForCausalLM", "qwen2_moe"},
    {"qwen3moe", "Qwen3MoeForCausalLM", "qwen3_moe"},
    {"gpt-oss", "GptOssForCausalLM", "gpt_oss"},
    {"phi3", "Phi3ForCausalLM", "phi3"},
    {"granite", "GraniteForCausalLM", "granite"},
    {"olmo2", "Olmo2ForCausalLM", "olmo2"},
    {"smollm3", "SmolLM3ForCausalLM", "smollm3"},
};
constexpr const char* kSupported =
    "llama (and Mixtral), mistral, qwen2, qwen3, gemma, gemma2, gemma3, qwen2moe, qwen3moe, gpt-oss, phi3, granite, "
    "olmo2, smollm3";

// A positive integer no larger than max, or `fallback` when the key is absent (-1: required).
int64_t bounded_int(const GgufFile& f, const std::string& key, int64_t max, int64_t fallback = -1) {
  const int64_t v = f.get_int(key, fallback);
  if (v <= 0 || v > max)
    throw InvalidArgument(f.path() + ": metadata " + key + " is missing or not a positive integer up to " +
                          std::to_string(max) + " (got " + std::to_string(v) + ")");
  return v;
}

// The dimension `dim` of tensor `name` (row-major), or -1 when the file lacks it.
int64_t tensor_dim(const GgufFile& f, const std::string& name, size_t dim) {
  if (!f.has_tensor(name)) return -1;
  const GgufTensor& t = f.tensor(name);
  return dim < t.shape.size() ? t.shape[dim] : -1;
}

// Gemma 1 / 2 / 3 as llama.cpp reads them. Its converter stores every norm weight as 1 + w, so
// no offset is added at load. llama.cpp ignores query_pre_attn_scalar: the scale is
// 1/sqrt(head_dim), except for the 27B models (recognized by their layer count), whose
// 1/sqrt(hidden / heads) it hard-codes; Gemma 2 alternates sliding and global layers, Gemma 3
// has five sliding layers to one global one, its sliding layers on a RoPE of base 10000.
void read_gemma(const GgufFile& f, const std::string& arch, ModelConfig& c) {
  const std::string p = arch + ".";
  c.norm_weight_offset = 0.0;
  c.embedding_multiplier = std::sqrt(static_cast<double>(c.hidden_size));
  c.hidden_act = "gelu_pytorch_tanh";
  if (arch == "gemma") return;
  c.post_norms = true;
  const bool gemma2 = arch == "gemma2";
  const bool is_27b = c.num_hidden_layers == (gemma2 ? 46 : 62);
  c.attention_multiplier = 1.0 / std::sqrt(is_27b ? static_cast<double>(c.hidden_size / c.num_attention_heads)
                                                  : static_cast<double>(c.head_dim));
  c.attn_logit_softcapping = gemma2 ? f.get_float(p + "attn_logit_softcapping", 50.0) : 0.0;
  c.final_logit_softcapping = f.get_float(p + "final_logit_softcapping", gemma2 ? 30.0 : 0.0);
  if (!(c.attn_logit_softcapping >= 0 && c.final_logit_softcapping >= 0))
    throw InvalidArgument(f.path() + ": the soft-capping values must not be negative");
  const int64_t window = f.get_int(p + "attention.sliding_window", gemma2 ? 4096 : 0);
  if (window < 0) throw InvalidArgument(f.path() + ": " + p + "attention.sliding_window must not be negative");
  if (window == 0) return;
  const int64_t period = gemma2 ? 2 : 6;  // the last layer of each period attends globally
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    if (l % period < period - 1) c.layer_sliding_window[static_cast<size_t>(l)] = window;
  if (gemma2) return;
  c.local_rope_theta = 10000.0;
  for (int64_t w : c.layer_sliding_window) c.layer_local_rope.push_back(w > 0);
}

// gpt-oss as llama.cpp runs it: the experts' SwiGLU clamped at 7 with alpha 1.702 (constants
// there, not in the file), attention sinks, every other layer sliding, the first one included.
void read_gpt_oss(const GgufFile& f, ModelConfig& c) {
  c.swiglu_alpha = 1.702;
  c.swiglu_limit = 7.0;
  c.attention_sinks = true;
  const int64_t window = bounded_int(f, "gpt-oss.attention.sliding_window", kMaxPositions);
  for (int64_t l = 0; l < c.num_hidden_layers; l += 2) c.layer_sliding_window[static_cast<size_t>(l)] = window;
}

// Mixtures of experts: the experts' count and width, the layers that have a router, and top-k
// routing as llama.cpp runs each architecture (the chosen weights renormalized for Mixtral and
// Qwen3-MoE, not for Qwen2-MoE, unless expert_weights_norm says otherwise).
void read_moe(const GgufFile& f, const std::string& arch, ModelConfig& c) {
  const std::string p = arch + ".";
  constexpr int64_t kMaxExperts = 1 << 16;
  c.num_experts = bounded_int(f, p + "expert_count", kMaxExperts);
  c.num_experts_per_tok = bounded_int(f, p + "expert_used_count", c.num_experts);
  c.layer_moe.assign(static_cast<size_t>(c.num_hidden_layers), 0);
  int64_t first = -1;
  for (int64_t l = c.num_hidden_layers - 1; l >= 0; --l) {  // layers without a router have a dense MLP
    if (!f.has_tensor("blk." + std::to_string(l) + ".ffn_gate_inp.weight")) continue;
    c.layer_moe[static_cast<size_t>(l)] = 1;
    first = l;
  }
  if (first < 0) throw InvalidArgument(f.path() + ": " + p + "expert_count is set but no layer has a router (ffn_gate_inp)");
  const std::string blk = "blk." + std::to_string(first) + ".";
  c.moe_intermediate_size = bounded_int(f, p + "expert_feed_forward_length", kMaxModelWidth,
                                        tensor_dim(f, blk + "ffn_gate_exps.weight", 1));
  if (arch == "qwen2moe")
    c.shared_expert_intermediate_size = bounded_int(f, p + "expert_shared_feed_forward_length", kMaxModelWidth,
                                                    tensor_dim(f, blk + "ffn_gate_shexp.weight", 0));
  c.norm_topk_prob = f.get_int(p + "expert_weights_norm", arch != "qwen2moe") != 0;
  if (const double scale = f.get_float(p + "expert_weights_scale", 1.0); scale != 1.0 && scale != 0.0)
    throw NotSupported(f.path() + ": " + p + "expert_weights_scale " + std::to_string(scale) + " is not supported");
  if (const int64_t gating = f.get_int(p + "expert_gating_func", 1); gating != 1)
    throw NotSupported(f.path() + ": " + p + "expert_gating_func " + std::to_string(gating) +
                       " is not supported (supported: 1, softmax)");
}

// Tokens that end a turn stop generation as the EOS does (llama.cpp's end-of-generation set):
// the file's end-of-turn / end-of-message ids, and Gemma's <end_of_turn> and Phi-3's <|end|>
// (instruction-tuned files name only <eos> / <|endoftext|>, yet every turn ends with them).
void add_end_of_turn_ids(const GgufFile& f, ModelConfig& c) {
  auto add = [&](int64_t id) {
    if (id >= 0 && std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) == c.eos_token_ids.end())
      c.eos_token_ids.push_back(id);
  };
  for (const char* key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"})
    if (f.find(key)) add(f.get_int(key, -1));
  const char* turn_end = c.model_type.rfind("gemma", 0) == 0 ? "<end_of_turn>"
                         : c.model_type == "phi3"               ? "<|end|>"
                                                                : nullptr;
  const GgufValue* tokens = f.find("tokenizer.ggml.tokens");
  if (!turn_end || !tokens || tokens->type != GgufValue::Type::ARRAY) return;
  for (size_t i = 0; i < tokens->array.size(); ++i)
    if (tokens->array[i].s == turn_end) add(static_cast<int64_t>(i));
}

}  // namespace

ModelConfig gguf_model_config(const GgufFile& f) {
  const std::string arch = f.get_string("general.architecture");
  const Arch* known = nullptr;
  for (const Arch& a : kArchs)
    if (arch == a.gguf) known = &a;
  if (!known)
    throw NotSupported(f.path() + ": GGUF architecture '" + arch + "' is not supported (supported: " + kSupported + ")");
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
  c.mlp_bias = f.has_tensor("blk.0.ffn_up.bias");
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
  add_end_of_turn_ids(f, c);
  c.bos_token_id = f.get_int("tokenizer.ggml.bos_token_id", -1);
  if (arch.rfind("gemma", 0) == 0) read_gemma(f, arch, c);
  if (arch == "gpt-oss") read_gpt_oss(f, c);
  read_gguf_variant(f, arch, c);
  if (f.find(p + "expert_count") && f.get_int(p + "expert_count", 0) > 0) {
    if (arch == "llama") {
      c.architecture = "MixtralForCausalLM";
      c.model_type = "mixtral";
    }
    if (arch != "llama" && arch != "qwen2moe" && arch != "qwen3moe" && arch != "gpt-oss")
      throw NotSupported(f.path() + ": GGUF architecture '" + arch + "' with experts is not supported");
    read_moe(f, arch, c);
  } else if (arch == "qwen2moe" || arch == "qwen3moe" || arch == "gpt-oss") {
    throw InvalidArgument(f.path() + ": metadata " + p + "expert_count is missing");
  }
  c.torch_dtype = "bfloat16";  // what --dtype auto computes in (the weights stay quantized)
  check_model_config(c, f.path());
  return c;
}

}  // namespace cserve
