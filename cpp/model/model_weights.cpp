#include "model/model_weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>

#include "cserve/error.h"
#include "loader/gguf.h"
#include "loader/gguf_model.h"
#include "loader/mxfp4_experts.h"
#include "loader/quantized_checkpoint.h"
#include "loader/safetensors.h"
#include "util/mmap_file.h"

namespace cserve {

namespace {

// Part of a tensor's rows or columns: [begin, begin + count); count -1: all of them.
struct Slice {
  int64_t begin = 0, count = -1;
  bool all() const { return count < 0; }
};

// Rows converted from a quantized checkpoint, as the backend packs them.
QuantPart as_quant_part(const QuantizedRows& q, const float* bias = nullptr) {
  QuantPart p;
  p.type = q.type;
  p.data = q.data;
  p.rows = q.rows;
  p.cols = q.cols;
  p.row_stride = q.row_stride;
  p.k_order = q.k_order;
  p.bias = bias;
  return p;
}

// Supplies tensors by name: from the checkpoint, checked against the expected shape,
// or freshly made random ones for load_format dummy.
class TensorSource {
 public:
  TensorSource(const SafetensorsCheckpoint* ckpt, uint64_t seed, const GgufFile* gguf = nullptr,
               const ModelConfig* config = nullptr)
      : ckpt_(ckpt), gguf_(gguf), config_(config), state_(seed) {}

  bool has(const std::string& name) const {
    if (gguf_) return gguf_->has_tensor(gguf_tensor_name(name, *config_));
    return !ckpt_ || ckpt_->has(name);
  }

  // A GGUF tensor of a quantized type, as a QuantPart (rows un-permuted); nullopt for
  // dense tensors and for other sources.
  // rows / cols: this rank's share; quantized blocks are never split (a column slice must fall
  // on block boundaries), and no byte is copied (the part points into the file).
  std::optional<QuantPart> quant_part(const std::string& name, const std::vector<int64_t>& shape, Slice rows = {},
                                      Slice cols = {}) {
    if (!gguf_) return checkpoint_quant_part(name, shape, rows, cols);
    const GgufTensor& t = gguf_tensor(name, shape);
    if (t.type == GgmlType::F32 || t.type == GgmlType::F16 || t.type == GgmlType::BF16) return std::nullopt;
    QuantPart p;
    p.type = t.type;
    p.data = t.data;
    p.rows = shape[0];
    p.cols = shape[1];
    p.row_stride = ggml_row_bytes(t.type, p.cols);
    p.row_order = row_order(name, p.rows);
    if (!rows.all()) {
      if (p.row_order) {
        orders_.emplace_back(p.row_order + rows.begin, p.row_order + rows.begin + rows.count);
        p.row_order = orders_.back().data();
      } else {
        p.data += static_cast<size_t>(rows.begin) * p.row_stride;
      }
      p.rows = rows.count;
    }
    if (!cols.all()) {
      const int64_t block = ggml_block_elems(t.type);
      if (cols.begin % block != 0 || cols.count % block != 0)
        throw NotSupported(gguf_->path() + ": tensor " + gguf_tensor_name(name, *config_) + " holds blocks of " +
                           std::to_string(block) + " values, which tensor parallelism cannot split at column " +
                           std::to_string(cols.begin) + " (of " + std::to_string(cols.count) + " per rank)");
      p.data += static_cast<size_t>(cols.begin / block) * static_cast<size_t>(ggml_block_bytes(t.type));
      p.cols = cols.count;
    }
    fetched(t);
    return p;
  }

  // A bias as f32 (quantized checkpoints store them in f16 / bf16), valid until release_scratch.
  // file_order: a GGUF q/k bias in the file's (permuted) order, for a QuantPart with a row order.
  const float* get_f32(const std::string& name, const std::vector<int64_t>& shape, Slice rows,
                       bool file_order = false) {
    Tensor t = gguf_ && file_order ? get_gguf(name, shape, true) : get(name, shape, 0.0f, rows);
    if (t.dtype == DType::F32) return t.as<float>();
    scratch_.emplace_back(static_cast<size_t>(t.numel()) * sizeof(float));
    convert_to_f32(t.data, t.dtype, scratch_.back().as<float>(), static_cast<size_t>(t.numel()));
    return scratch_.back().as<float>();
  }

  // A linear weight of a quantized safetensors checkpoint (quantization_config, or online fp8) as
  // cserve's QB4 / QB8 rows of this rank's share; nullopt for float weights.
  std::optional<QuantPart> checkpoint_quant_part(const std::string& name, const std::vector<int64_t>& shape,
                                                 Slice rows, Slice cols) {
    if (!ckpt_ || !config_ || !config_->quantization.enabled() || shape.size() != 2) return std::nullopt;
    const WeightShare share{shape[0], shape[1], rows.begin, rows.all() ? shape[0] : rows.count,
                            cols.begin, cols.all() ? shape[1] : cols.count};
    const std::string module = name.substr(0, name.rfind(".weight"));
    auto q = read_quantized_linear(*ckpt_, config_->quantization, module, share, quant_scratch_);
    if (!q) return std::nullopt;
    return as_quant_part(*q);
  }

  // The tensor `name` of the given (whole) shape, or this rank's rows / columns of it: rows are a
  // view into the file, columns a copy.
  Tensor get(const std::string& name, const std::vector<int64_t>& shape, float dummy_value_or_nan, Slice rows = {},
             Slice cols = {}) {
    if (!gguf_ && !ckpt_) {  // dummy weights: made at the shard's own shape
      std::vector<int64_t> local = shape;
      if (!rows.all()) local[0] = rows.count;
      if (!cols.all()) local[1] = cols.count;
      return make_dummy(local, dummy_value_or_nan);
    }
    return slice(gguf_ ? get_gguf(name, shape) : whole(name, shape), rows, cols);
  }

 private:
  Tensor whole(const std::string& name, const std::vector<int64_t>& shape) {
    const SafetensorsEntry& e = ckpt_->get(name);
    fetched_.push_back(e.view);
    if (e.view.shape != shape)
      throw InvalidArgument(e.file + ": tensor " + name + " has shape " + shape_text(e.view.shape) +
                            ", expected " + shape_text(shape));
    return e.view;
  }

  Tensor slice(Tensor t, Slice rows, Slice cols) {
    const size_t elt = dtype_size(t.dtype);
    const int64_t row_elems = t.shape.size() == 2 ? t.shape[1] : 1;
    if (!rows.all()) {
      t.data = static_cast<uint8_t*>(t.data) + static_cast<size_t>(rows.begin * row_elems) * elt;
      t.shape[0] = rows.count;
    }
    if (cols.all()) return t;
    scratch_.emplace_back(static_cast<size_t>(t.shape[0] * cols.count) * elt);
    uint8_t* out = scratch_.back().as<uint8_t>();
    const uint8_t* in = static_cast<const uint8_t*>(t.data);
    for (int64_t r = 0; r < t.shape[0]; ++r)
      std::memcpy(out + static_cast<size_t>(r * cols.count) * elt,
                  in + static_cast<size_t>(r * row_elems + cols.begin) * elt, static_cast<size_t>(cols.count) * elt);
    return Tensor{out, t.dtype, {t.shape[0], cols.count}};
  }

 public:

 private:
  // The GGUF tensor holding `name`, checked against `shape`. An expert's matrix is its slab of the
  // layer's 3D tensor of all experts (whole rows: no block is split, nothing copied); size-1
  // dimensions llama.cpp's converter squeezes out (Qwen2-MoE's shared expert gate) are put back.
  GgufTensor gguf_tensor(const std::string& name, const std::vector<int64_t>& shape) {
    int64_t expert = -1;
    const std::string gname = gguf_tensor_name(name, *config_, &expert);
    if (gname.empty()) throw NotFound(gguf_->path() + ": no GGUF name for tensor " + name);
    GgufTensor t = gguf_->tensor(gname);
    std::vector<int64_t> want = shape;
    if (expert >= 0) want.insert(want.begin(), config_->num_experts);
    auto squeezed = [](std::vector<int64_t> s) {
      s.erase(std::remove(s.begin(), s.end(), int64_t{1}), s.end());
      return s;
    };
    if (squeezed(t.shape) != squeezed(want) || expert >= config_->num_experts)
      throw InvalidArgument(gguf_->path() + ": tensor " + gname + " has shape " + shape_text(t.shape) +
                            ", expected " + shape_text(want));
    if (expert >= 0) {
      t.nbytes /= static_cast<size_t>(config_->num_experts);
      t.data += static_cast<size_t>(expert) * t.nbytes;
    }
    if (t.type == GgmlType::MXFP4)  // checked here: the backends convert blocks on worker threads
      for (size_t b = 0; b < t.nbytes; b += static_cast<size_t>(ggml_block_bytes(t.type)))
        if (!mxfp4_scale_supported(t.data[b]))
          throw InvalidArgument(gguf_->path() + ": tensor " + gname + " holds the E8M0 scale " + std::to_string(t.data[b]) +
                                (t.data[b] == 255 ? " (NaN)" : "") + ", which cserve's blocks cannot hold (at most 251)");
    t.shape = shape;
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
  // quantized (or permuted) becomes an f32 copy. A q/k bias is un-permuted as its weight's rows
  // are, unless file_order.
  Tensor get_gguf(const std::string& name, const std::vector<int64_t>& shape, bool file_order = false) {
    const GgufTensor& t = gguf_tensor(name, shape);
    const bool vector = shape.size() == 1;
    const int64_t rows = vector ? 1 : shape[0];
    const int64_t cols = shape.back();
    const int32_t* order = shape.size() <= 2 && !file_order ? row_order(name, shape[0]) : nullptr;
    if (!order && (t.type == GgmlType::F32 || t.type == GgmlType::F16 || t.type == GgmlType::BF16)) {
      const DType dt = t.type == GgmlType::F32 ? DType::F32 : t.type == GgmlType::F16 ? DType::F16 : DType::BF16;
      fetched(t);
      return Tensor{const_cast<uint8_t*>(t.data), dt, shape};
    }
    scratch_.emplace_back(static_cast<size_t>(rows * cols) * sizeof(float));
    float* out = scratch_.back().as<float>();
    const size_t row_bytes = ggml_row_bytes(t.type, cols);
    for (int64_t r = 0; r < rows; ++r)
      dequantize_row(t.type, t.data + static_cast<size_t>(order && !vector ? order[r] : r) * row_bytes, out + r * cols,
                     cols);
    if (order && vector) {
      const std::vector<float> stored(out, out + cols);
      for (int64_t i = 0; i < cols; ++i) out[i] = stored[static_cast<size_t>(order[i])];
    }
    fetched(t);
    return Tensor{out, DType::F32, shape};
  }

  // Remembers a GGUF tensor's file bytes so release_scratch drops their pages once packed.
  void fetched(const GgufTensor& t) {
    fetched_.push_back(Tensor{const_cast<uint8_t*>(t.data), DType::F32, {static_cast<int64_t>(t.nbytes / 4)}});
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
    quant_scratch_.clear();
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
  QuantScratch quant_scratch_;
  uint64_t state_;
  std::vector<Buffer> scratch_;
  std::vector<Tensor> fetched_;
};

constexpr float kRandom = std::numeric_limits<float>::quiet_NaN();

}  // namespace

Buffer rounded_f32(const Tensor& t, DType dtype) {
  Buffer out(static_cast<size_t>(t.numel()) * sizeof(float));
  convert_to_f32(t.data, t.dtype, out.as<float>(), static_cast<size_t>(t.numel()));
  if (dtype != DType::F32) {
    Buffer tmp(static_cast<size_t>(t.numel()) * dtype_size(dtype));
    convert_from_f32(out.as<float>(), tmp.data(), dtype, static_cast<size_t>(t.numel()));
    convert_to_f32(tmp.data(), dtype, out.as<float>(), static_cast<size_t>(t.numel()));
  }
  return out;
}

Buffer in_backend_memory(Buffer host, Backend& backend) {
  if (backend.host_memory()) return host;
  Buffer dev = backend.allocate(host.size());
  backend.upload(dev.data(), host.data(), host.size());
  return dev;
}

ModelWeights load_weights(const ModelConfig& c, const SafetensorsCheckpoint* ckpt, DType dtype, Backend& backend,
                          uint64_t seed, const LoadProgress& progress, const GgufFile* gguf,
                          const TensorParallel& tp, const PipelineStage& pp) {
  const int64_t first_layer = pp.enabled() ? pp.first_layer : 0;
  const int64_t num_layers = pp.enabled() ? pp.num_layers : c.num_hidden_layers;
  const bool embeds = !pp.enabled() || pp.first(), heads = !pp.enabled() || pp.last();
  const int64_t steps = num_layers + 1;
  TensorSource src(ckpt, seed, gguf, &c);
  ModelWeights w;
  const int64_t H = c.hidden_size, I = c.intermediate_size, D = c.head_dim;
  const int64_t q_dim = c.num_attention_heads * D, kv_dim = c.num_key_value_heads * D;
  // This rank's share (all of it without tensor parallelism): rows of the column-parallel
  // matrices, columns of the row-parallel ones, rows of the vocabulary.
  const ModelConfig local = rank_config(c, tp.rank, tp.size);
  const int64_t q_local = local.num_attention_heads * D, kv_local = local.num_key_value_heads * D;
  const int64_t i_local = local.intermediate_size;
  const Slice q_rows = tp.enabled() ? Slice{tp.rank * q_local, q_local} : Slice{};
  const Slice kv_rows = tp.enabled() ? Slice{first_kv_head(c, tp.rank, tp.size) * D, kv_local} : Slice{};
  const Slice i_rows = tp.enabled() ? Slice{tp.rank * i_local, i_local} : Slice{};
  const VocabShard vs = vocab_shard(c.vocab_size, tp.rank, tp.size);
  const Slice vocab_rows = tp.enabled() ? Slice{vs.begin, vs.end - vs.begin} : Slice{};
  const bool sums_bias = tp.rank == 0;  // a bias before an all-reduce is added by one rank only

  struct Part {
    std::string name;
    int64_t rows;     // of the whole tensor
    Slice slice = {};  // this rank's rows
    // A part of a fused tensor (Phi-3's qkv_proj, gate_up_proj): `rows` of it from row `base`, of
    // `fused` rows in all; 0: the tensor is the part's own.
    int64_t base = 0, fused = 0;
    std::vector<int64_t> shape(int64_t k) const { return {fused > 0 ? fused : rows, k}; }
    Slice rows_in_tensor() const {
      if (fused == 0) return slice;
      return slice.all() ? Slice{base, rows} : Slice{base + slice.begin, slice.count};
    }
  };
  // scale: a constant the product is multiplied by, folded into the weights (and biases).
  std::vector<Buffer> scaled;
  auto times = [&](const Tensor& t, float scale) {
    if (scale == 1.0f) return t;
    scaled.emplace_back(static_cast<size_t>(t.numel()) * sizeof(float));
    float* out = scaled.back().as<float>();
    convert_to_f32(t.data, t.dtype, out, static_cast<size_t>(t.numel()));
    for (int64_t i = 0; i < t.numel(); ++i) out[i] *= scale;
    return Tensor{out, DType::F32, t.shape};
  };
  auto linear = [&](const std::vector<Part>& ps, int64_t k, Slice cols, bool with_bias, float scale = 1.0f) {
    std::vector<Tensor> parts, biases;
    std::vector<QuantPart> qparts;
    for (const Part& p : ps) {
      if (scale != 1.0f) break;  // a scaled weight is dequantized and scaled below
      if (auto q = src.quant_part(p.name + ".weight", p.shape(k), p.rows_in_tensor(), cols)) qparts.push_back(*q);
    }
    if (!qparts.empty() && qparts.size() == ps.size()) {  // every part quantized: keep it so
      // A part with a row order (llama.cpp's q/k permutation) indexes its bias by the file's
      // rows: the whole bias then, as stored, not this rank's slice of it.
      for (size_t i = 0; i < ps.size(); ++i) {
        const bool file_rows = qparts[i].row_order != nullptr;
        if (with_bias)
          qparts[i].bias = src.get_f32(ps[i].name + ".bias", {ps[i].shape(1)[0]},
                                       file_rows ? Slice{} : ps[i].rows_in_tensor(), file_rows);
      }
      auto packed = backend.pack_linear_quantized(qparts);
      w.total_bytes += packed->bytes();
      src.release_scratch();
      return packed;
    }
    for (const Part& p : ps) {
      parts.push_back(times(src.get(p.name + ".weight", p.shape(k), kRandom, p.rows_in_tensor(), cols), scale));
      if (with_bias) biases.push_back(times(src.get(p.name + ".bias", {p.shape(1)[0]}, 0.0f, p.rows_in_tensor()), scale));
    }
    auto packed = backend.pack_linear(parts, biases, dtype);
    w.total_bytes += packed->bytes();
    src.release_scratch();
    scaled.clear();
    return packed;
  };
  // Norm weights as the model scales by them: Gemma stores w for a scale of (1 + w), added in
  // f32 after the weight's own rounding, as transformers computes it.
  const double offset = c.norm_weight_offset;
  auto norm = [&](const std::string& name, int64_t n, double scale = 1.0) {
    Buffer b = rounded_f32(src.get(name, {n}, static_cast<float>(1.0 - offset)), dtype);
    if (scale != 1.0 || offset != 0.0)
      for (int64_t i = 0; i < n; ++i) b.as<float>()[i] = static_cast<float>((b.as<float>()[i] + offset) * scale);
    src.release_scratch();
    return in_backend_memory(std::move(b), backend);
  };

  // The decoder's tensors: under model., or in a multimodal checkpoint (Gemma 3) its language
  // model's, under language_model.model. (as transformers wrote them until 4.52) or
  // model.language_model. (since).
  std::string root = "model.", lm_head = "lm_head";
  if (c.text_of_multimodal && !(ckpt && ckpt->has("model.language_model.embed_tokens.weight"))) {
    root = "language_model.model.";
    lm_head = "language_model.lm_head";
  } else if (c.text_of_multimodal) {
    root = "model.language_model.";
  }
  // Granite: the residual stream is held divided by embedding_multiplier (LlamaModel), so the
  // sublayer outputs added to it are scaled by residual_multiplier / embedding_multiplier.
  // With post_norms the outputs are normalized before the add: their norms carry the scale.
  const float out_scale = static_cast<float>(c.residual_multiplier / c.embedding_multiplier);
  const float proj_scale = c.post_norms ? 1.0f : out_scale;
  // A mixture of experts' MLP: the router (with the shared expert's gate as one more row), each
  // expert's gate|up and down (this rank's share of each, as a dense MLP is split), and the
  // shared expert in gate_up / down.
  // gpt-oss: each expert kind in one 3D tensor of x @ W layout ([E][H][2I], gate and up
  // interleaved; [E][I][H]) with biases: transposed (and de-interleaved) into cserve's [rows][k]
  // matrices one expert at a time, this rank's share of I. MXFP4 checkpoints hold the weights as
  // quantized [rows][k] blocks instead: converted to QB8 rows one expert at a time (never a float
  // copy), the biases as above.
  auto load_packed_experts = [&](const std::string& moe, LayerWeights& lw) {
    const int64_t E = c.num_experts, EI = c.moe_intermediate_size, mine = local.moe_intermediate_size;
    const int64_t first = tp.enabled() ? tp.rank * mine : 0;
    const bool mxfp4 = ckpt && c.quantization.method == "mxfp4";
    const Tensor gu = mxfp4 ? Tensor{} : src.get(moe + "experts.gate_up_proj", {E, H, 2 * EI}, kRandom);
    const Tensor gu_bias = src.get(moe + "experts.gate_up_proj_bias", {E, 2 * EI}, 0.0f);
    const Tensor dn = mxfp4 ? Tensor{} : src.get(moe + "experts.down_proj", {E, EI, H}, kRandom);
    const Tensor dn_bias = src.get(moe + "experts.down_proj_bias", {E, H}, 0.0f);
    auto expert_f32 = [](const Tensor& t, int64_t e, int64_t n) {  // expert e's n values as f32
      std::vector<float> out(static_cast<size_t>(n));
      convert_to_f32(static_cast<const uint8_t*>(t.data) + static_cast<size_t>(e * n) * dtype_size(t.dtype), t.dtype,
                     out.data(), static_cast<size_t>(n));
      return out;
    };
    for (int64_t e = 0; e < E; ++e) {
      const std::vector<float> b = expert_f32(gu_bias, e, 2 * EI);
      std::vector<float> gate_b(mine), up_b(mine), down_b = expert_f32(dn_bias, e, H);
      for (int64_t i = 0; i < mine; ++i) gate_b[i] = b[2 * (first + i)], up_b[i] = b[2 * (first + i) + 1];
      if (mxfp4) {
        QuantScratch scratch;
        const Mxfp4Expert q = read_mxfp4_expert(*ckpt, moe + "experts.", e, {E, H, EI, first, mine}, scratch);
        lw.expert_gate_up.push_back(
            backend.pack_linear_quantized({as_quant_part(q.gate, gate_b.data()), as_quant_part(q.up, up_b.data())}));
        lw.expert_down.push_back(backend.pack_linear_quantized({as_quant_part(q.down, sums_bias ? down_b.data() : nullptr)}));
        w.total_bytes += lw.expert_gate_up.back()->bytes() + lw.expert_down.back()->bytes();
        continue;
      }
      const std::vector<float> wt = expert_f32(gu, e, H * 2 * EI);
      std::vector<float> gate(static_cast<size_t>(mine * H)), up(gate.size());
      for (int64_t i = 0; i < mine; ++i)
        for (int64_t h = 0; h < H; ++h) {
          gate[i * H + h] = wt[h * 2 * EI + 2 * (first + i)];
          up[i * H + h] = wt[h * 2 * EI + 2 * (first + i) + 1];
        }
      auto f32 = [](std::vector<float>& v, std::vector<int64_t> shape) { return Tensor{v.data(), DType::F32, shape}; };
      lw.expert_gate_up.push_back(backend.pack_linear({f32(gate, {mine, H}), f32(up, {mine, H})},
                                                      {f32(gate_b, {mine}), f32(up_b, {mine})}, dtype));
      const std::vector<float> d = expert_f32(dn, e, EI * H);
      std::vector<float> down(static_cast<size_t>(H * mine));
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < mine; ++i) down[h * mine + i] = d[(first + i) * H + h];
      std::vector<Tensor> down_bias;
      if (sums_bias) down_bias.push_back(f32(down_b, {H}));
      lw.expert_down.push_back(backend.pack_linear({f32(down, {H, mine})}, down_bias, dtype));
      w.total_bytes += lw.expert_gate_up.back()->bytes() + lw.expert_down.back()->bytes();
    }
    src.release_scratch();
  };
  auto load_experts = [&](const std::string& p, LayerWeights& lw) {
    const bool mixtral = c.model_type == "mixtral";
    const std::string moe = p + (mixtral ? "block_sparse_moe." : "mlp.");
    const int64_t E = c.num_experts, EI = c.moe_intermediate_size, SI = c.shared_expert_intermediate_size;
    const int64_t ei_local = local.moe_intermediate_size, si_local = local.shared_expert_intermediate_size;
    const Slice ei_rows = tp.enabled() ? Slice{tp.rank * ei_local, ei_local} : Slice{};
    const Slice si_rows = tp.enabled() ? Slice{tp.rank * si_local, si_local} : Slice{};
    // gpt-oss: a router with a bias; experts with biases, in 3D tensors (GGUF files hold them
    // per expert kind as the other families', gate and up apart).
    const bool gpt_oss = c.model_type == "gpt_oss";
    if (gpt_oss) {
      lw.router = linear({{moe + "router", E}}, H, {}, true);
      if (!gguf) return load_packed_experts(moe, lw);
    } else {
      std::vector<Part> router{{moe + "gate", E}};
      if (SI > 0) router.push_back({moe + "shared_expert_gate", 1});
      lw.router = linear(router, H, {}, false);
    }
    for (int64_t e = 0; e < E; ++e) {
      const std::string x = moe + "experts." + std::to_string(e) + ".";
      lw.expert_gate_up.push_back(mixtral ? linear({{x + "w1", EI, ei_rows}, {x + "w3", EI, ei_rows}}, H, {}, false)
                                          : linear({{x + "gate_proj", EI, ei_rows}, {x + "up_proj", EI, ei_rows}}, H,
                                                   {}, gpt_oss));
      lw.expert_down.push_back(
          linear({{x + (mixtral ? "w2" : "down_proj"), H}}, EI, ei_rows, gpt_oss && sums_bias, proj_scale));
    }
    if (SI > 0) {
      const std::string s = moe + "shared_expert.";
      lw.gate_up = linear({{s + "gate_proj", SI, si_rows}, {s + "up_proj", SI, si_rows}}, H, {}, false);
      lw.down = linear({{s + "down_proj", H}}, SI, si_rows, false, proj_scale);
    }
  };
  for (int64_t l = first_layer; l < first_layer + num_layers; ++l) {
    const std::string p = root + "layers." + std::to_string(l) + ".";
    LayerWeights lw;
    if (c.fused_proj) {  // Phi-3: this rank's q, k and v rows out of qkv_proj, gate and up out of gate_up_proj
      const std::string qkv = p + "self_attn.qkv_proj", gu = p + "mlp.gate_up_proj";
      const int64_t qkv_dim = q_dim + 2 * kv_dim;
      lw.qkv = linear({{qkv, q_dim, q_rows, 0, qkv_dim}, {qkv, kv_dim, kv_rows, q_dim, qkv_dim},
                       {qkv, kv_dim, kv_rows, q_dim + kv_dim, qkv_dim}},
                      H, {}, c.attention_bias);
      lw.gate_up = linear({{gu, I, i_rows, 0, 2 * I}, {gu, I, i_rows, I, 2 * I}}, H, {}, c.mlp_bias);
    } else {
      lw.qkv = linear({{p + "self_attn.q_proj", q_dim, q_rows}, {p + "self_attn.k_proj", kv_dim, kv_rows},
                       {p + "self_attn.v_proj", kv_dim, kv_rows}},
                      H, {}, c.attention_bias);
    }
    lw.o = linear({{p + "self_attn.o_proj", H}}, q_dim, q_rows, c.o_proj_bias && sums_bias, proj_scale);
    if (!c.layer_moe.empty() && c.layer_moe[l]) {
      load_experts(p, lw);
    } else {
      if (!c.fused_proj)
        lw.gate_up = linear({{p + "mlp.gate_proj", I, i_rows}, {p + "mlp.up_proj", I, i_rows}}, H, {}, c.mlp_bias);
      lw.down = linear({{p + "mlp.down_proj", H}}, I, i_rows, c.mlp_bias && sums_bias, proj_scale);
    }
    if (c.pre_norms) lw.attn_in_norm = norm(p + "input_layernorm.weight", H);
    if (c.post_norms) {  // post_attention_layernorm is then the attention output's norm
      lw.attn_out_norm = norm(p + "post_attention_layernorm.weight", H, out_scale);
      lw.mlp_out_norm = norm(p + "post_feedforward_layernorm.weight", H, out_scale);
      if (c.pre_norms) lw.mlp_in_norm = norm(p + "pre_feedforward_layernorm.weight", H);
    } else {
      lw.mlp_in_norm = norm(p + "post_attention_layernorm.weight", H);
    }
    if (c.qk_norm) {
      lw.q_norm = norm(p + "self_attn.q_norm.weight", D);
      lw.k_norm = norm(p + "self_attn.k_norm.weight", D);
    } else if (c.qk_norm_full) {  // over the whole projection (-tp 1 only: check_tensor_parallel)
      lw.q_norm = norm(p + "self_attn.q_norm.weight", q_dim);
      lw.k_norm = norm(p + "self_attn.k_norm.weight", kv_dim);
    }
    if (c.attention_sinks) {  // this rank's heads' sinks
      const int64_t heads = local.num_attention_heads;
      const Slice mine = tp.enabled() ? Slice{tp.rank * heads, heads} : Slice{};
      Buffer b = rounded_f32(src.get(p + "self_attn.sinks", {c.num_attention_heads}, 0.0f, mine), dtype);
      src.release_scratch();
      lw.sinks = in_backend_memory(std::move(b), backend);
    }
    w.layers.push_back(std::move(lw));
    if (progress) progress(l - first_layer + 1, steps);
  }
  if (heads) w.final_norm = norm(root + "norm.weight", H, 1.0 / c.logits_scaling);

  w.tied = c.tie_word_embeddings;
  if (w.tied) {  // the embedding is the LM head's matrix: the first stage needs it too
    if (heads || embeds) w.lm_head = linear({{root + "embed_tokens", c.vocab_size, vocab_rows}}, H, {}, false);
  } else if (heads) {
    w.lm_head = linear({{lm_head, c.vocab_size, vocab_rows}}, H, {}, false);
  }
  if (!w.tied && embeds) {
    Tensor e = src.get(root + "embed_tokens.weight", {c.vocab_size, H}, kRandom, vocab_rows);
    if (ckpt && e.dtype == dtype) {
      w.embed_table = e;  // used straight from the mmap
    } else {
      w.embed_owned = Buffer(static_cast<size_t>(e.numel()) * dtype_size(dtype));
      Buffer f32(static_cast<size_t>(e.numel()) * sizeof(float));
      convert_to_f32(e.data, e.dtype, f32.as<float>(), static_cast<size_t>(e.numel()));
      convert_from_f32(f32.as<float>(), w.embed_owned.data(), dtype, static_cast<size_t>(e.numel()));
      w.embed_table = Tensor{w.embed_owned.data(), dtype, {e.shape[0], H}};
    }
    w.total_bytes += e.numel() * dtype_size(dtype);
    src.release_scratch(/*keep_file_pages=*/w.embed_owned.size() == 0);
  }
  if (!w.tied && embeds && !backend.host_memory()) {  // the embedding table is read by the backend's gather
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
