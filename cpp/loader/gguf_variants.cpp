// Phi-3, Granite, OLMo 2 and SmolLM3 GGUF files: the settings each family adds to the Llama
// shape, read from the keys and tensors llama.cpp's converter writes, or (where llama.cpp
// hard-codes a value rather than storing it) set as llama.cpp sets it.
#include <cmath>
#include <vector>

#include "cserve/error.h"
#include "loader/gguf_model.h"

namespace cserve {

namespace {

// A 1-D float tensor of exactly n values (the converter keeps vectors in F32).
std::vector<double> float_vector(const GgufFile& f, const std::string& name, int64_t n) {
  const GgufTensor& t = f.tensor(name);
  if (t.type != GgmlType::F32 && t.type != GgmlType::F16 && t.type != GgmlType::BF16)
    throw NotSupported(f.path() + ": tensor " + name + " has type " + ggml_type_name(t.type) +
                       " (supported for it: F32, F16, BF16)");
  if (t.shape.size() != 1 || t.shape[0] != n)
    throw InvalidArgument(f.path() + ": tensor " + name + " must hold " + std::to_string(n) +
                          " values (one per rotary frequency)");
  std::vector<float> values(static_cast<size_t>(n));
  dequantize_row(t.type, t.data, values.data(), n);
  for (float v : values)
    if (!(v > 0 && std::isfinite(v)))
      throw InvalidArgument(f.path() + ": tensor " + name + " must hold positive numbers");
  return {values.begin(), values.end()};
}

// Phi-3 / 3.5 / 4: fused attn_qkv and ffn_up (gate|up), the window on every layer as the
// checkpoint's config applies it (llama.cpp itself currently runs Phi-3 without it; the
// converter writes 0 for none), and longrope when the file holds the factor tensors: the
// scale of cos / sin is the converter's attn_factor.
void read_phi3(const GgufFile& f, ModelConfig& c) {
  if (!f.has_tensor("blk.0.attn_qkv.weight"))
    throw NotSupported(f.path() + ": phi3 files with separate attn_q / attn_k / attn_v are not supported "
                       "(cserve reads Phi-3's fused blk.N.attn_qkv)");
  if (f.has_tensor("blk.0.ffn_gate_inp.weight"))
    throw NotSupported(f.path() + ": phi3 with experts (ffn_gate_inp) is not supported");
  c.fused_proj = true;
  const int64_t window = f.get_int("phi3.attention.sliding_window", 0);
  if (window < 0) throw InvalidArgument(f.path() + ": phi3.attention.sliding_window must not be negative");
  c.layer_sliding_window.assign(static_cast<size_t>(c.num_hidden_layers), window);
  const bool has_long = f.has_tensor("rope_factors_long.weight"), has_short = f.has_tensor("rope_factors_short.weight");
  if (!has_long && !has_short) return;
  if (has_long != has_short)
    throw InvalidArgument(f.path() + ": longrope needs both rope_factors_long and rope_factors_short");
  RopeScaling& s = c.rope_scaling;
  s.type = "longrope";
  const int64_t rotary = static_cast<int64_t>(static_cast<double>(c.head_dim) * c.partial_rotary_factor);
  s.short_factor = float_vector(f, "rope_factors_short.weight", rotary / 2);
  s.long_factor = float_vector(f, "rope_factors_long.weight", rotary / 2);
  s.original_max_position_embeddings = f.get_int("phi3.rope.scaling.original_context_length", 0);
  if (s.original_max_position_embeddings <= 0 || s.original_max_position_embeddings > kMaxPositions)
    throw InvalidArgument(f.path() + ": longrope needs phi3.rope.scaling.original_context_length (a positive integer)");
  s.factor = static_cast<double>(c.max_position_embeddings) / static_cast<double>(s.original_max_position_embeddings);
  s.attention_factor = f.get_float("phi3.rope.scaling.attn_factor", 0.0);  // 0: derived from factor
  if (!(s.attention_factor >= 0 && std::isfinite(s.attention_factor)))
    throw InvalidArgument(f.path() + ": phi3.rope.scaling.attn_factor must be a finite positive number");
}

// Granite's multipliers under llama.cpp's names; a missing or 0 value is no scaling, as in
// llama.cpp (attention.scale 0: 1/sqrt(head_dim)).
void read_granite(const GgufFile& f, ModelConfig& c) {
  auto scale = [&](const char* key) {
    const double x = f.get_float(std::string("granite.") + key, 0.0);
    return x == 0.0 ? 1.0 : x;
  };
  c.embedding_multiplier = scale("embedding_scale");
  c.residual_multiplier = scale("residual_scale");
  c.logits_scaling = scale("logit_scale");
  c.attention_multiplier = f.get_float("granite.attention.scale", 0.0);
}

// OLMo 2: no input norms, post_attention_norm / post_ffw_norm after the blocks, q/k norms over
// the whole projection. The converter writes a window only for OLMo 3 (same architecture name).
void read_olmo2(const GgufFile& f, ModelConfig& c) {
  if (f.find("olmo2.attention.sliding_window"))
    throw NotSupported(f.path() + ": olmo2 files with attention.sliding_window (OLMo 3) are not supported");
  c.post_norms = c.qk_norm_full = true;
  c.pre_norms = c.qk_norm = false;
}

// SmolLM3: llama.cpp hard-codes a NoPE layer every 4th one (the file stores no pattern) and
// runs every layer with full attention (use_sliding_window is not in the file).
void read_smollm3(ModelConfig& c) {
  constexpr int64_t kNoRopeInterval = 4;
  c.layer_rope.assign(static_cast<size_t>(c.num_hidden_layers), 1);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    c.layer_rope[static_cast<size_t>(l)] = (l + 1) % kNoRopeInterval != 0;
}

}  // namespace

void read_gguf_variant(const GgufFile& f, const std::string& arch, ModelConfig& c) {
  if (arch == "phi3") read_phi3(f, c);
  if (arch == "granite") read_granite(f, c);
  if (arch == "olmo2") read_olmo2(f, c);
  if (arch == "smollm3") read_smollm3(c);
}

}  // namespace cserve
