// config.json of a Llama-family decoder (Llama, Mistral, Qwen2, Qwen3, Granite, OLMo 2, SmolLM3,
// Phi-3, Gemma 1/2/3, the mixtures of experts Mixtral, Qwen2-MoE, Qwen3-MoE and gpt-oss, and
// checkpoints of the same shape) read into one plain struct.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "loader/quantization_config.h"

namespace cserve {

struct RopeScaling {
  // "default", "linear", "dynamic", "llama3", "yarn", "longrope" (Phi-3's "su" is read as longrope)
  std::string type = "default";
  double factor = 1.0;
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;  // 0: use max_position_embeddings
  // yarn
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double attention_factor = 0.0;  // 0: derived as transformers derives it
  double mscale = 0.0;            // 0: unset
  double mscale_all_dim = 0.0;    // 0: unset
  bool truncate = true;           // yarn: floor/ceil the correction range
  // longrope: per rotary frequency (rotary_dim / 2 each), the short factors while a sequence holds
  // at most original_max_position_embeddings tokens, the long ones beyond. factor is the given
  // one or max_position_embeddings / original; attention_factor (0) as yarn's.
  std::vector<double> short_factor, long_factor;
};

struct ModelConfig {
  std::string architecture;  // e.g. "LlamaForCausalLM"
  // A multimodal checkpoint whose language model cserve serves (Gemma3ForConditionalGeneration:
  // text_config, the decoder's weights under language_model.); the vision tower is not loaded.
  bool text_of_multimodal = false;
  std::string model_type;    // e.g. "llama"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // defaults to num_attention_heads
  int64_t head_dim = 0;             // explicit, or hidden_size / num_attention_heads
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;      // top level or rope_parameters.rope_theta
  double partial_rotary_factor = 1.0;
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  bool attention_bias = false;      // q/k/v bias (Qwen2 always has it)
  bool o_proj_bias = false;         // Llama/Qwen3 attention_bias also covers o_proj; Qwen2 does not
  bool mlp_bias = false;            // Llama's mlp_bias: gate/up/down biases
  bool qk_norm = false;             // Qwen3: RMSNorm on each q and k head
  // OLMo 2: no input norms; RMSNorms on the attention and MLP outputs before their residual adds
  // (post_attention_layernorm, post_feedforward_layernorm); q_norm / k_norm over the whole q / k
  // projection (q_dim, kv_dim wide) rather than per head.
  bool post_norms = false;
  bool qk_norm_full = false;
  // Whether each attention and MLP block normalizes its input (all but OLMo 2). With post_norms
  // as well (Gemma 2 / 3: input_layernorm, post_attention_layernorm, pre_feedforward_layernorm,
  // post_feedforward_layernorm), a norm on both sides of each block.
  bool pre_norms = true;
  // Gemma: every RMSNorm scales by (norm_weight_offset + w); 0 elsewhere. The embeddings are
  // multiplied by embedding_scale (sqrt(hidden_size), held in the compute dtype); 1 elsewhere.
  double norm_weight_offset = 0.0;
  double embedding_scale = 1.0;
  // Gemma 2: score = cap * tanh(score / cap) on attention scores (after the scale) and on the
  // final logits; 0: none.
  double attn_logit_softcapping = 0.0;
  double final_logit_softcapping = 0.0;
  // Gemma 3: the base of the default RoPE its sliding-window layers use (rope_theta and
  // rope_scaling are the full-attention layers'); 0: one RoPE for every layer. layer_local_rope:
  // 1 on those layers (kept when --disable-sliding-window makes them attend fully).
  double local_rope_theta = 0.0;
  std::vector<uint8_t> layer_local_rope;
  // Granite: the embeddings times embedding_multiplier, each attention / MLP output times
  // residual_multiplier before its residual add, attention_multiplier as the attention scale
  // (0: 1/sqrt(head_dim)), the logits divided by logits_scaling. 1 (0) elsewhere. Gemma's
  // query_pre_attn_scalar^-0.5 is its attention_multiplier.
  double embedding_multiplier = 1.0;
  double residual_multiplier = 1.0;
  double attention_multiplier = 0.0;
  double logits_scaling = 1.0;
  // Phi-3: q/k/v in one qkv_proj, gate/up in one gate_up_proj (rows in that order).
  bool fused_proj = false;
  // Mixture of experts (Mixtral, Qwen2-MoE, Qwen3-MoE): on the layers where layer_moe is 1, the
  // MLP is num_experts experts of moe_intermediate_size, num_experts_per_tok of them per token,
  // picked by a softmax router (the chosen weights renormalized to sum 1 when norm_topk_prob);
  // Qwen2-MoE adds a shared expert of shared_expert_intermediate_size scaled by
  // sigmoid(shared_expert_gate x). Other layers have the dense MLP of intermediate_size.
  int64_t num_experts = 0;  // 0: a dense model
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  int64_t shared_expert_intermediate_size = 0;  // 0: no shared expert
  bool norm_topk_prob = false;
  std::vector<uint8_t> layer_moe;  // empty: no layer
  // gpt-oss: the experts' activation is SwiGLU with the gate clamped above at swiglu_limit, the
  // up projection to [-limit, limit] plus 1, and sigmoid(swiglu_alpha * gate); 0: plain SwiGLU.
  double swiglu_alpha = 0.0, swiglu_limit = 0.0;
  // gpt-oss: a learned logit per attention head joins each softmax's denominator.
  bool attention_sinks = false;
  // Per layer, whether RoPE applies (SmolLM3's NoPE layers are 0); empty: every layer.
  std::vector<uint8_t> layer_rope;
  // Sliding window per layer: 0 means full attention for that layer.
  std::vector<int64_t> layer_sliding_window;
  // --disable-sliding-window: the largest window the layers had (they now attend fully); as in
  // vLLM it caps the context length. 0 otherwise.
  int64_t disabled_sliding_window = 0;
  std::string torch_dtype;          // "bfloat16", "float16", "float32" or ""
  std::vector<int64_t> eos_token_ids;  // from config.json; generation_config.json adds
  int64_t bos_token_id = -1;
  std::string hidden_act = "silu";  // "silu", or "gelu_pytorch_tanh" (Gemma)
  QuantizationConfig quantization;  // quantization_config; method "" when the weights are float
};

// Bounds on a model's dimensions: far above any real model, low enough that a corrupt or
// hostile config is an error at load and every size the loader and the engine derive from
// them (vocab x hidden, heads x head_dim x layers, ...) fits in 64 bits.
constexpr int64_t kMaxVocabSize = INT32_MAX;         // token ids are int32
constexpr int64_t kMaxModelWidth = int64_t{1} << 20;  // hidden, intermediate, heads x head_dim
constexpr int64_t kMaxNumLayers = int64_t{1} << 16;
constexpr int64_t kMaxPositions = INT32_MAX;          // positions are int32
constexpr double kMaxRopeFactor = 1 << 20;

// Cross-field checks every ModelConfig passes, whatever it was read from (config.json or
// GGUF metadata): head_dim even and the heads' width bounded, at least two rotary
// dimensions, finite positive norm epsilon and rope base, positions and rope factor bounded.
// Throws InvalidArgument naming `source` and the field.
void check_model_config(const ModelConfig& config, const std::string& source);

// Reads <dir>/config.json (or `dir` itself when it names a .json file), with the JSON object
// `overrides` merged into it first (Json::merge;
// "": none). Throws NotFound, InvalidArgument (bad field, naming it), NotSupported (unknown
// architecture or rope type, naming it).
ModelConfig load_model_config(const std::string& model_dir, const std::string& overrides = "");
ModelConfig parse_model_config(const std::string& json_text, const std::string& source);

// EOS ids from <dir>/generation_config.json (int or list); empty when absent.
std::vector<int64_t> load_generation_eos(const std::string& model_dir);

}  // namespace cserve
