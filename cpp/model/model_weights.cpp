#include "model/model_weights.h"

#include <cmath>
#include <limits>
#include <optional>

#include "cserve/error.h"
#include "loader/gguf.h"
#include "loader/gguf_model.h"
#include "loader/safetensors.h"
#include "util/mmap_file.h"

namespace cserve {

namespace {

// Supplies tensors by name: from the checkpoint, checked against the expected shape,
// or freshly made random ones for load_format dummy.
class TensorSource {
 public:
  TensorSource(const SafetensorsCheckpoint* ckpt, uint64_t seed, const GgufFile* gguf = nullptr,
               const ModelConfig* config = nullptr)
      : ckpt_(ckpt), gguf_(gguf), config_(config), state_(seed) {}

  bool has(const std::string& name) const {
    if (gguf_) return gguf_->has_tensor(gguf_tensor_name(name));
    return !ckpt_ || ckpt_->has(name);
  }

  // A GGUF tensor of a quantized type, as a QuantPart (rows un-permuted); nullopt for
  // dense tensors and for other sources.
  std::optional<QuantPart> quant_part(const std::string& name, const std::vector<int64_t>& shape) {
    if (!gguf_) return std::nullopt;
    const GgufTensor& t = gguf_tensor(name, shape);
    if (t.type == GgmlType::F32 || t.type == GgmlType::F16 || t.type == GgmlType::BF16) return std::nullopt;
    QuantPart p;
    p.type = t.type;
    p.data = t.data;
    p.rows = shape[0];
    p.cols = shape[1];
    p.row_stride = ggml_row_bytes(t.type, p.cols);
    p.row_order = row_order(name, p.rows);
    fetched(t);
    return p;
  }

  Tensor get(const std::string& name, const std::vector<int64_t>& shape, float dummy_value_or_nan) {
    if (gguf_) return get_gguf(name, shape);
    if (!ckpt_) return make_dummy(shape, dummy_value_or_nan);
    const SafetensorsEntry& e = ckpt_->get(name);
    fetched_.push_back(e.view);
    if (e.view.shape != shape)
      throw InvalidArgument(e.file + ": tensor " + name + " has shape " + shape_str(e.view.shape) +
                            ", expected " + shape_str(shape));
    return e.view;
  }

 private:
  const GgufTensor& gguf_tensor(const std::string& name, const std::vector<int64_t>& shape) {
    const std::string gname = gguf_tensor_name(name);
    if (gname.empty()) throw NotFound(gguf_->path() + ": no GGUF name for tensor " + name);
    const GgufTensor& t = gguf_->tensor(gname);
    if (t.shape != shape)
      throw InvalidArgument(gguf_->path() + ": tensor " + gname + " has shape " + shape_str(t.shape) +
                            ", expected " + shape_str(shape));
    return t;
  }

  // The source row of each output row, undoing llama.cpp's q/k permutation; null when none.
  const int32_t* row_order(const std::string& name, int64_t rows) {
    const int64_t heads = gguf_permuted_heads(*gguf_, *config_, name);
    if (heads == 0) return nullptr;
    const int64_t hd = rows / heads, half = hd / 2;
    orders_.emplace_back(static_cast<size_t>(rows));
    std::vector<int32_t>& order = orders_.back();
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t h = r / hd, t = (r % hd) / half, j = (r % hd) % half;
      order[r] = static_cast<int32_t>(h * hd + 2 * j + t);
    }
    return order.data();
  }

  // Dense GGUF tensors are used in place when their type is one cserve stores; anything
  // quantized (or permuted) becomes an f32 copy.
  Tensor get_gguf(const std::string& name, const std::vector<int64_t>& shape) {
    const GgufTensor& t = gguf_tensor(name, shape);
    const int64_t rows = shape.size() == 2 ? shape[0] : 1;
    const int64_t cols = shape.back();
    const int32_t* order = shape.size() == 2 ? row_order(name, rows) : nullptr;
    if (!order && (t.type == GgmlType::F32 || t.type == GgmlType::F16 || t.type == GgmlType::BF16)) {
      const DType dt = t.type == GgmlType::F32 ? DType::F32 : t.type == GgmlType::F16 ? DType::F16 : DType::BF16;
      fetched(t);
      return Tensor{const_cast<uint8_t*>(t.data), dt, shape};
    }
    scratch_.emplace_back(static_cast<size_t>(rows * cols) * sizeof(float));
    float* out = scratch_.back().as<float>();
    const size_t row_bytes = ggml_row_bytes(t.type, cols);
    for (int64_t r = 0; r < rows; ++r)
      dequantize_row(t.type, t.data + static_cast<size_t>(order ? order[r] : r) * row_bytes, out + r * cols, cols);
    fetched(t);
    return Tensor{out, DType::F32, shape};
  }

  // Remembers a GGUF tensor's file bytes so release_scratch drops their pages once packed.
  void fetched(const GgufTensor& t) {
    fetched_.push_back(Tensor{const_cast<uint8_t*>(t.data), DType::F32, {static_cast<int64_t>(t.nbytes / 4)}});
  }

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
    orders_.clear();
    if (!keep_file_pages)
      for (const Tensor& t : fetched_) drop_file_pages(t.data, t.nbytes());
    fetched_.clear();
  }

 private:
  const SafetensorsCheckpoint* ckpt_;
  const GgufFile* gguf_;
  const ModelConfig* config_;
  std::vector<std::vector<int32_t>> orders_;
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
                          uint64_t seed, const LoadProgress& progress, const GgufFile* gguf) {
  const int64_t steps = c.num_hidden_layers + 1;
  TensorSource src(ckpt, seed, gguf, &c);
  ModelWeights w;
  const int64_t H = c.hidden_size, I = c.intermediate_size, D = c.head_dim;
  const int64_t q_dim = c.num_attention_heads * D, kv_dim = c.num_key_value_heads * D;
  const Tensor none{};

  auto linear = [&](const std::vector<std::string>& names, const std::vector<int64_t>& rows, int64_t k,
                    bool with_bias) {
    std::vector<Tensor> parts, biases;
    std::vector<QuantPart> qparts;
    for (size_t i = 0; i < names.size(); ++i) {
      if (auto q = src.quant_part(names[i] + ".weight", {rows[i], k})) qparts.push_back(*q);
    }
    if (!qparts.empty() && qparts.size() == names.size()) {  // every part quantized: keep it so
      for (size_t i = 0; i < names.size(); ++i)
        if (with_bias) qparts[i].bias = src.get(names[i] + ".bias", {rows[i]}, 0.0f).as<float>();
      auto packed = backend.pack_linear_quantized(qparts);
      w.total_bytes += packed->bytes();
      src.release_scratch();
      return packed;
    }
    for (size_t i = 0; i < names.size(); ++i) {
      parts.push_back(src.get(names[i] + ".weight", {rows[i], k}, kRandom));
      if (with_bias) biases.push_back(src.get(names[i] + ".bias", {rows[i]}, 0.0f));
    }
    auto packed = backend.pack_linear(parts, biases, dtype);
    w.total_bytes += packed->bytes();
    src.release_scratch();
    return packed;
  };
  // Small host-made parameters, moved to the backend's memory when that is not the host's.
  auto in_backend = [&](Buffer host) {
    if (backend.host_memory()) return host;
    Buffer dev = backend.allocate(host.size());
    backend.upload(dev.data(), host.data(), host.size());
    return dev;
  };
  auto norm = [&](const std::string& name, int64_t n) {
    Buffer b = to_f32(src.get(name, {n}, 1.0f), dtype);
    src.release_scratch();
    return in_backend(std::move(b));
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
  if (!w.tied && !backend.host_memory()) {  // the embedding table is read by the backend's gather
    const size_t bytes = static_cast<size_t>(w.embed_table.numel()) * dtype_size(w.embed_table.dtype);
    Buffer dev = backend.allocate(bytes);
    backend.upload(dev.data(), w.embed_table.data, bytes);
    w.embed_owned = std::move(dev);
    w.embed_table.data = w.embed_owned.data();
  }
  if (progress) progress(steps, steps);
  return w;
}

}  // namespace cserve
