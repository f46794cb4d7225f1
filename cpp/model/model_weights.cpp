#include "model/model_weights.h"

#include <cmath>
#include <limits>

#include "cserve/error.h"
#include "loader/safetensors.h"
#include "util/mmap_file.h"

namespace cserve {

namespace {

// Supplies tensors by name: from the checkpoint, checked against the expected shape,
// or freshly made random ones for load_format dummy.
class TensorSource {
 public:
  TensorSource(const SafetensorsCheckpoint* ckpt, uint64_t seed) : ckpt_(ckpt), state_(seed) {}

  bool has(const std::string& name) const { return !ckpt_ || ckpt_->has(name); }

  Tensor get(const std::string& name, const std::vector<int64_t>& shape, float dummy_value_or_nan) {
    if (!ckpt_) return make_dummy(shape, dummy_value_or_nan);
    const SafetensorsEntry& e = ckpt_->get(name);
    fetched_.push_back(e.view);
    if (e.view.shape != shape)
      throw InvalidArgument(e.file + ": tensor " + name + " has shape " + shape_str(e.view.shape) +
                            ", expected " + shape_str(shape));
    return e.view;
  }

 private:
  static std::string shape_str(const std::vector<int64_t>& s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
  }
  Tensor make_dummy(const std::vector<int64_t>& shape, float fill) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    scratch_.emplace_back(static_cast<size_t>(n) * sizeof(float));
    float* p = scratch_.back().as<float>();
    // vLLM's dummy weights: uniform in [-1e-3, 1e-3]; norms are ones so activations stay sane.
    // splitmix64: cheap enough that an 8B dummy model loads in seconds.
    for (int64_t i = 0; i < n; ++i) {
      if (!std::isnan(fill)) {
        p[i] = fill;
        continue;
      }
      uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      z ^= z >> 31;
      p[i] = (static_cast<float>(z >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * 1e-3f;
    }
    return Tensor{p, DType::F32, shape};
  }

 public:
  // Drops the dummy tensors, and the file pages of the checkpoint tensors fetched since
  // the last call, which have been converted and packed: the mapping need not stay resident.
  void release_scratch(bool keep_file_pages = false) {
    scratch_.clear();
    if (!keep_file_pages)
      for (const Tensor& t : fetched_) drop_file_pages(t.data, t.nbytes());
    fetched_.clear();
  }

 private:
  const SafetensorsCheckpoint* ckpt_;
  uint64_t state_;
  std::vector<Buffer> scratch_;
  std::vector<Tensor> fetched_;
};

constexpr float kRandom = std::numeric_limits<float>::quiet_NaN();

// Small parameters (norms) kept as f32, rounded through the compute dtype as the model would hold them.
Buffer to_f32(const Tensor& t, DType dtype) {
  Buffer out(static_cast<size_t>(t.numel()) * sizeof(float));
  convert_to_f32(t.data, t.dtype, out.as<float>(), static_cast<size_t>(t.numel()));
  if (dtype != DType::F32) {
    Buffer tmp(static_cast<size_t>(t.numel()) * dtype_size(dtype));
    convert_from_f32(out.as<float>(), tmp.data(), dtype, static_cast<size_t>(t.numel()));
    convert_to_f32(tmp.data(), dtype, out.as<float>(), static_cast<size_t>(t.numel()));
  }
  return out;
}

}  // namespace

ModelWeights load_weights(const ModelConfig& c, const SafetensorsCheckpoint* ckpt, DType dtype, Backend& backend,
                          uint64_t seed, const LoadProgress& progress) {
  const int64_t steps = c.num_hidden_layers + 1;
  TensorSource src(ckpt, seed);
  ModelWeights w;
  const int64_t H = c.hidden_size, I = c.intermediate_size, D = c.head_dim;
  const int64_t q_dim = c.num_attention_heads * D, kv_dim = c.num_key_value_heads * D;
  const Tensor none{};

  auto linear = [&](const std::vector<std::string>& names, const std::vector<int64_t>& rows, int64_t k,
                    bool with_bias) {
    std::vector<Tensor> parts, biases;
    for (size_t i = 0; i < names.size(); ++i) {
      parts.push_back(src.get(names[i] + ".weight", {rows[i], k}, kRandom));
      if (with_bias) biases.push_back(src.get(names[i] + ".bias", {rows[i]}, 0.0f));
    }
    auto packed = backend.pack_linear(parts, biases, dtype);
    w.total_bytes += packed->bytes();
    src.release_scratch();
    return packed;
  };
  auto norm = [&](const std::string& name, int64_t n) {
    Buffer b = to_f32(src.get(name, {n}, 1.0f), dtype);
    src.release_scratch();
    return b;
  };

  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights lw;
    lw.qkv = linear({p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj"}, {q_dim, kv_dim, kv_dim},
                    H, c.attention_bias);
    lw.o = linear({p + "self_attn.o_proj"}, {H}, q_dim, c.o_proj_bias);
    lw.gate_up = linear({p + "mlp.gate_proj", p + "mlp.up_proj"}, {I, I}, H, c.mlp_bias);
    lw.down = linear({p + "mlp.down_proj"}, {H}, I, c.mlp_bias);
    lw.input_norm = norm(p + "input_layernorm.weight", H);
    lw.post_attention_norm = norm(p + "post_attention_layernorm.weight", H);
    if (c.qk_norm) {
      lw.q_norm = norm(p + "self_attn.q_norm.weight", D);
      lw.k_norm = norm(p + "self_attn.k_norm.weight", D);
    }
    w.layers.push_back(std::move(lw));
    if (progress) progress(l + 1, steps);
  }
  w.final_norm = norm("model.norm.weight", H);

  w.tied = c.tie_word_embeddings;
  if (w.tied) {
    w.lm_head = linear({"model.embed_tokens"}, {c.vocab_size}, H, false);
  } else {
    w.lm_head = linear({"lm_head"}, {c.vocab_size}, H, false);
    Tensor e = src.get("model.embed_tokens.weight", {c.vocab_size, H}, kRandom);
    if (ckpt && e.dtype == dtype) {
      w.embed_table = e;  // used straight from the mmap
    } else {
      w.embed_owned = Buffer(static_cast<size_t>(e.numel()) * dtype_size(dtype));
      Buffer f32(static_cast<size_t>(e.numel()) * sizeof(float));
      convert_to_f32(e.data, e.dtype, f32.as<float>(), static_cast<size_t>(e.numel()));
      convert_from_f32(f32.as<float>(), w.embed_owned.data(), dtype, static_cast<size_t>(e.numel()));
      w.embed_table = Tensor{w.embed_owned.data(), dtype, {c.vocab_size, H}};
    }
    w.total_bytes += e.numel() * dtype_size(dtype);
    src.release_scratch(/*keep_file_pages=*/w.embed_owned.size() == 0);
  }
  if (progress) progress(steps, steps);
  return w;
}

}  // namespace cserve
