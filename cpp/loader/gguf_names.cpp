// Hugging Face tensor names -> the names llama.cpp's converter gives them in a GGUF file.
#include <regex>
#include <utility>

#include "loader/gguf_model.h"

namespace cserve {

namespace {

using Names = std::pair<const char*, const char*>;

// Per layer, by module (the part after "model.layers.N." up to ".weight" / ".bias").
constexpr Names kLayer[] = {
    {"input_layernorm", "attn_norm"},       {"self_attn.q_proj", "attn_q"},
    {"self_attn.k_proj", "attn_k"},         {"self_attn.v_proj", "attn_v"},
    {"self_attn.o_proj", "attn_output"},    {"self_attn.q_norm", "attn_q_norm"},
    {"self_attn.k_norm", "attn_k_norm"},    {"mlp.gate_proj", "ffn_gate"},
    {"mlp.up_proj", "ffn_up"},              {"mlp.down_proj", "ffn_down"},
    // Phi-3's fused projections: q|k|v, and gate|up in the one tensor llama.cpp calls ffn_up
    {"self_attn.qkv_proj", "attn_qkv"},     {"mlp.gate_up_proj", "ffn_up"},
    // mixtures of experts: the router, Qwen2-MoE's shared expert and its gate
    {"mlp.gate", "ffn_gate_inp"},           {"block_sparse_moe.gate", "ffn_gate_inp"},
    {"mlp.router", "ffn_gate_inp"},  // gpt-oss
    {"mlp.shared_expert_gate", "ffn_gate_inp_shexp"},
    {"mlp.shared_expert.gate_proj", "ffn_gate_shexp"},
    {"mlp.shared_expert.up_proj", "ffn_up_shexp"},
    {"mlp.shared_expert.down_proj", "ffn_down_shexp"},
};
// The norm after attention: the MLP's input norm, or (post-norms: Gemma 2 / 3 on both sides of
// each block, OLMo 2 after them only) the attention output's, with the MLP's own beside it.
constexpr Names kMlpInputNorm[] = {{"post_attention_layernorm", "ffn_norm"}};
constexpr Names kBothSidesNorms[] = {
    {"post_attention_layernorm", "post_attention_norm"},
    {"pre_feedforward_layernorm", "ffn_norm"},
    {"post_feedforward_layernorm", "post_ffw_norm"},
};
// One expert's matrix -> the layer's 3D tensor of all experts.
constexpr Names kExpert[] = {
    {"gate_proj", "ffn_gate_exps"}, {"up_proj", "ffn_up_exps"}, {"down_proj", "ffn_down_exps"},
    {"w1", "ffn_gate_exps"},        {"w3", "ffn_up_exps"},      {"w2", "ffn_down_exps"},  // Mixtral
};

template <size_t N>
const char* lookup(const Names (&table)[N], const std::string& key) {
  for (const auto& [from, to] : table)
    if (key == from) return to;
  return nullptr;
}

}  // namespace

std::string gguf_tensor_name(const std::string& hf, const ModelConfig& config, int64_t* expert) {
  if (expert) *expert = -1;
  static const std::pair<const char*, const char*> kTop[] = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
  };
  for (const auto& [from, to] : kTop)
    if (hf == from) return to;
  static const std::regex sinks(R"(model\.layers\.(\d+)\.self_attn\.sinks)");  // gpt-oss: no .weight in HF
  static const std::regex layer(R"(model\.layers\.(\d+)\.(.+)\.(weight|bias))");
  static const std::regex expert_module(R"((?:mlp|block_sparse_moe)\.experts\.(\d+)\.(\w+))");
  std::smatch m;
  if (std::regex_match(hf, m, sinks)) return "blk." + std::string(m[1]) + ".attn_sinks.weight";
  if (!std::regex_match(hf, m, layer)) return "";
  const std::string block = "blk." + std::string(m[1]) + ".", module = m[2], kind = "." + std::string(m[3]);
  std::smatch e;
  if (std::regex_match(module, e, expert_module)) {
    const char* to = lookup(kExpert, e[2]);
    if (!to) return "";
    if (expert) *expert = std::stoll(e[1]);
    return block + to + kind;
  }
  const char* to = lookup(kLayer, module);
  if (!to && config.model_type == "gpt_oss" && module == "post_attention_layernorm") to = "post_attention_norm";
  if (!to) to = config.post_norms ? lookup(kBothSidesNorms, module) : lookup(kMlpInputNorm, module);
  return to ? block + to + kind : "";
}

int64_t gguf_permuted_heads(const GgufFile& f, const ModelConfig& c, const std::string& hf) {
  // The converter's LlamaModel and the classes built on it (Granite, SmolLM3) permute.
  const std::string arch = f.get_string("general.architecture");
  if (arch != "llama" && arch != "mistral" && arch != "granite" && arch != "smollm3") return 0;
  if (hf.find("self_attn.q_proj.") != std::string::npos) return c.num_attention_heads;
  if (hf.find("self_attn.k_proj.") != std::string::npos) return c.num_key_value_heads;
  return 0;
}

}  // namespace cserve
