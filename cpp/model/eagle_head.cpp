#include "model/eagle_head.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "cserve/error.h"
#include "model/model_weights.h"
#include "util/first_largest.h"
#include "util/json.h"

namespace cserve {

namespace {

// The head's tensors by vLLM's names, checked against their shapes.
class HeadTensors {
 public:
  HeadTensors(const SafetensorsCheckpoint& ckpt, DType dtype, Backend& backend, size_t& bytes)
      : ckpt_(ckpt), dtype_(dtype), backend_(backend), bytes_(bytes) {}

  bool has(const std::string& name) const { return ckpt_.has(name); }
  Tensor get(const std::string& name, const std::vector<int64_t>& shape) const {
    const SafetensorsEntry& e = ckpt_.get(name);
    if (e.view.shape != shape)
      throw InvalidArgument(e.file + ": tensor " + name + " has shape " + shape_text(e.view.shape) + ", expected " +
                            shape_text(shape));
    return e.view;
  }
  // Matrices [n_i][k] side by side along n (q|k|v, gate|up), with an optional bias.
  std::unique_ptr<LinearWeight> linear(const std::vector<std::pair<std::string, int64_t>>& parts, int64_t k,
                                       bool bias = false) {
    std::vector<Tensor> ws, bs;
    for (const auto& [name, n] : parts) {
      ws.push_back(get(name + ".weight", {n, k}));
      if (bias) bs.push_back(get(name + ".bias", {n}));
    }
    auto packed = backend_.pack_linear(ws, bs, dtype_);
    bytes_ += packed->bytes();
    return packed;
  }
  // A norm weight as f32 in the backend's memory, rounded through the compute dtype.
  Buffer norm(const std::string& name, int64_t n) {
    return in_backend_memory(rounded_f32(get(name, {n}), dtype_), backend_);
  }

 private:
  const SafetensorsCheckpoint& ckpt_;
  DType dtype_;
  Backend& backend_;
  size_t& bytes_;
};

std::vector<int32_t> int_list(const Json& v, const std::string& what) {
  if (!v.is_array()) throw InvalidArgument(what + " must be a list of integers");
  std::vector<int32_t> out;
  for (const Json& x : v.as_array()) out.push_back(static_cast<int32_t>(x.as_int()));
  return out;
}

// EAGLE-3's target layers, as vLLM picks them: the config's eagle_aux_hidden_state_layer_ids,
// else Llama's (2, L/2, L-3) of the target's L layers; its model appends the states in layer
// order, each once, so three distinct layers are needed (fc reads three).
std::vector<int32_t> aux_layers(const Json& root, int32_t target_layers, const std::string& what) {
  std::vector<int32_t> ids;
  if (const Json* v = root.find("eagle_aux_hidden_state_layer_ids"); v && v->is_array() && !v->as_array().empty())
    ids = int_list(*v, what + ": eagle_aux_hidden_state_layer_ids");
  else
    ids = {2, target_layers / 2, target_layers - 3};
  std::set<int32_t> layers;
  for (int32_t id : ids)
    if (id >= 0 && id < target_layers) layers.insert(id);
  if (layers.size() == 3) return {layers.begin(), layers.end()};
  std::string named;
  for (int32_t id : ids) named += (named.empty() ? "" : ", ") + std::to_string(id);
  throw InvalidArgument(what + ": the aux hidden states of target layers (" + named + ") are not three distinct "
                        "layers of the target's " + std::to_string(target_layers) +
                        " (set eagle_aux_hidden_state_layer_ids in the head's config.json)");
}

}  // namespace

std::unique_ptr<EagleHead> load_eagle_head(const std::string& dir, const std::string& method,
                                           const LlamaModel& target, DType dtype, Backend& backend) {
  const bool eagle3 = method == "eagle3";
  if (!eagle3 && method != "eagle")
    throw InvalidArgument("load_eagle_head: method must be eagle or eagle3, got " + method);
  const std::string path = dir + "/config.json";
  const Json root = Json::parse(read_text_file(path), path);
  if (!root.is_object()) throw InvalidArgument(path + ": config must be a JSON object");
  // The head is a Llama decoder's shapes whatever its architecture name (LlamaForCausalLMEagle3,
  // EagleLlamaForCausalLM, ...), as vLLM reads it for these methods.
  EagleHeadSpec spec;
  spec.eagle3 = eagle3;
  spec.config = load_model_config(dir, R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})");
  const ModelConfig& c = spec.config;
  const ModelConfig& t = target.config();
  const std::string what = "speculative_config: the " + method + " head " + dir;
  if (!eagle3 && c.hidden_size != t.hidden_size)  // fc reads concat(embedding, the target's state): both H wide
    throw InvalidArgument(what + " has hidden_size " + std::to_string(c.hidden_size) + ", the target " +
                          std::to_string(t.hidden_size) + ": an EAGLE-1 head's must be the target's");
  if (c.vocab_size != t.vocab_size)
    throw InvalidArgument(what + " has a vocabulary of " + std::to_string(c.vocab_size) + " tokens, the target model " +
                          std::to_string(t.vocab_size) + ": they must be the same");
  if (c.num_experts > 0 || c.attention_bias || c.mlp_bias)
    throw NotSupported(what + ": only Llama decoder layers (no biases, no experts) are supported in a head");
  const int64_t H = c.hidden_size, L = c.num_hidden_layers;
  spec.draft_vocab_size = c.vocab_size;
  if (eagle3) {
    if (const Json* v = root.find("draft_vocab_size"); v && !v->is_null()) spec.draft_vocab_size = v->as_int();
    if (spec.draft_vocab_size <= 0 || spec.draft_vocab_size > c.vocab_size)
      throw InvalidArgument(what + ": draft_vocab_size " + std::to_string(spec.draft_vocab_size) +
                            " must be in [1, vocab_size]");
    if (const Json* v = root.find("norm_before_residual"); v && v->is_bool()) spec.norm_before_residual = v->as_bool();
    if (const Json* ec = root.find("eagle_config"); ec && ec->is_object())
      if (const Json* v = ec->find("use_aux_hidden_state"); v && v->is_bool() && !v->as_bool())
        throw NotSupported(what + ": eagle_config.use_aux_hidden_state false (no fc) is not supported yet");
    int64_t target_hidden = t.hidden_size;
    if (const Json* v = root.find("target_hidden_size"); v && !v->is_null()) target_hidden = v->as_int();
    if (target_hidden != t.hidden_size)
      throw InvalidArgument(what + ": target_hidden_size " + std::to_string(target_hidden) +
                            " is not the target model's hidden_size " + std::to_string(t.hidden_size));
    spec.aux_layers = aux_layers(root, static_cast<int32_t>(t.num_hidden_layers), what);
    spec.fc_in = 3 * t.hidden_size;
  } else {
    spec.fc_in = 2 * H;
  }

  SafetensorsCheckpoint ckpt(dir);
  if (c.hidden_size != t.hidden_size && !ckpt.has("embed_tokens.weight"))
    throw InvalidArgument(what + " has hidden_size " + std::to_string(c.hidden_size) + ", the target " +
                          std::to_string(t.hidden_size) + ", and no embed_tokens of its own: the target's "
                          "embedding does not fit it");
  EagleHeadWeights w;
  HeadTensors src(ckpt, dtype, backend, w.total_bytes);
  const int64_t D = c.head_dim, NH = c.num_attention_heads, NKV = c.num_key_value_heads, I = c.intermediate_size;
  w.fc = src.linear({{"fc", H}}, spec.fc_in, ckpt.has("fc.bias"));
  for (int64_t l = 0; l < L; ++l) {
    // EAGLE-3 names its first layer midlayer (vLLM maps it to layers.0).
    std::string p = "layers." + std::to_string(l) + ".";
    if (eagle3 && l == 0 && !ckpt.has(p + "self_attn.q_proj.weight")) p = "midlayer.";
    const int64_t attn_in = eagle3 && l == 0 ? 2 * H : H;
    EagleHeadLayer lw;
    lw.qkv = src.linear({{p + "self_attn.q_proj", NH * D}, {p + "self_attn.k_proj", NKV * D},
                         {p + "self_attn.v_proj", NKV * D}}, attn_in);
    lw.o = src.linear({{p + "self_attn.o_proj", H}}, NH * D);
    lw.gate_up = src.linear({{p + "mlp.gate_proj", I}, {p + "mlp.up_proj", I}}, H);
    lw.down = src.linear({{p + "mlp.down_proj", H}}, I);
    if (eagle3 || l > 0) lw.input_norm = src.norm(p + "input_layernorm.weight", H);  // EAGLE-1 drops the first
    if (eagle3 && l == 0) lw.hidden_norm = src.norm(p + "hidden_norm.weight", H);
    lw.post_norm = src.norm(p + "post_attention_layernorm.weight", H);
    w.layers.push_back(std::move(lw));
  }
  if (ckpt.has("embed_tokens.weight")) w.embed = src.linear({{"embed_tokens", c.vocab_size}}, H);
  if (eagle3) {
    w.final_norm = src.norm("norm.weight", H);
    w.lm_head = src.linear({{"lm_head", spec.draft_vocab_size}}, H);
    if (const SafetensorsRawEntry* d2t = ckpt.raw("d2t")) {
      if (d2t->shape != std::vector<int64_t>{spec.draft_vocab_size} || (d2t->dtype != "I64" && d2t->dtype != "I32"))
        throw InvalidArgument(d2t->file + ": tensor d2t must be I64 or I32 of shape [" +
                              std::to_string(spec.draft_vocab_size) + "]");
      w.draft_to_target.resize(static_cast<size_t>(spec.draft_vocab_size));
      for (int64_t i = 0; i < spec.draft_vocab_size; ++i) {
        int64_t off = 0;
        if (d2t->dtype == "I64")
          std::copy_n(d2t->data + i * 8, 8, reinterpret_cast<uint8_t*>(&off));
        else
          off = reinterpret_cast<const int32_t*>(d2t->data)[i];
        const int64_t id = i + off;
        if (id < 0 || id >= t.vocab_size)
          throw InvalidArgument(d2t->file + ": d2t maps draft token " + std::to_string(i) + " to " +
                                std::to_string(id) + ", outside the target's vocabulary");
        w.draft_to_target[static_cast<size_t>(i)] = static_cast<int32_t>(id);
      }
    } else if (spec.draft_vocab_size != t.vocab_size) {
      throw InvalidArgument(what + ": draft_vocab_size " + std::to_string(spec.draft_vocab_size) +
                            " differs from the vocabulary without a d2t table in the checkpoint");
    }
  } else if (ckpt.has("lm_head.weight")) {
    w.lm_head = src.linear({{"lm_head", c.vocab_size}}, H);
  }
  return std::make_unique<EagleHead>(spec, std::move(w), target, backend);
}

EagleHead::EagleHead(const EagleHeadSpec& spec, EagleHeadWeights weights, const LlamaModel& target, Backend& backend)
    : spec_(spec), weights_(std::move(weights)), target_(target), backend_(backend), rope_(spec.config) {}

Tensor EagleHead::scratch(Buffer& buf, int64_t rows, int64_t cols) {
  const size_t bytes = static_cast<size_t>(std::max<int64_t>(1, rows * cols)) * sizeof(float);
  if (buf.size() < bytes) buf = backend_.allocate(bytes + bytes / 2);
  return Tensor{buf.data(), DType::F32, {rows, cols}};
}

void EagleHead::argmax_rows(const Tensor& logits, int64_t rows, int64_t vocab, std::vector<int32_t>& out) {
  out.resize(static_cast<size_t>(rows));
  if (backend_.can_sample()) {  // greedy rows: the device's argmax, only ids come back
    greedy_rows_.assign(static_cast<size_t>(rows), DeviceSamplingRow{});
    DeviceSamplingResult r;
    backend_.sample(logits, greedy_rows_, 0, nullptr, r);
    std::copy_n(r.ids.begin(), rows, out.begin());
  } else {
    const float* data = logits.as<float>();
    if (!backend_.host_memory()) {
      host_.resize(static_cast<size_t>(rows * vocab));
      backend_.download(host_.data(), logits.data, host_.size() * sizeof(float));
      data = host_.data();
    }
    for (int64_t r = 0; r < rows; ++r) out[r] = greedy_token(data + r * vocab, vocab);
  }
  if (!weights_.draft_to_target.empty())
    for (int32_t& id : out) id = weights_.draft_to_target[static_cast<size_t>(id)];
}

void EagleHead::forward(const ForwardBatch& batch, const Tensor& hidden, int64_t ld, bool from_target,
                        std::vector<KVCacheLayer>& kv, std::vector<int32_t>& drafts) {
  const ModelConfig& c = spec_.config;
  const int64_t T = static_cast<int64_t>(batch.token_ids.size());
  drafts.clear();
  if (T == 0) return;
  const int64_t H = c.hidden_size, D = c.head_dim, I = c.intermediate_size;
  const int64_t NH = c.num_attention_heads, NKV = c.num_key_value_heads;
  const int64_t q_dim = NH * D, kv_dim = NKV * D, qkv_dim = q_dim + 2 * kv_dim;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  auto f32 = [](const Buffer& b, int64_t n) { return Tensor{b.data(), DType::F32, {n}}; };
  auto cols = [](const Tensor& t, int64_t width, int64_t off) {
    return Tensor{t.as<float>() + off, DType::F32, {t.dim(0), width}};
  };

  backend_.begin_forward(batch.attn);
  Tensor x = scratch(x_, T, H), h = scratch(h_, T, H), e = scratch(e_, T, H), cat = scratch(cat_, T, 2 * H);
  Tensor qkv = scratch(qkv_, T, qkv_dim), attn = scratch(attn_, T, q_dim);
  Tensor gu = scratch(gu_, T, 2 * I), act = scratch(act_, T, I);
  const int64_t half = rope_.rotary_dim() / 2;
  Tensor cos = scratch(cos_, T, half), sin = scratch(sin_, T, half);
  host_.resize(static_cast<size_t>(2 * T * half));
  for (int64_t i = 0; i < T; ++i)
    rope_.compute(batch.attn.positions[i], batch.token_seq_len[i], host_.data() + i * half,
                  host_.data() + (T + i) * half);
  if (backend_.host_memory()) {
    std::copy_n(host_.data(), T * half, cos.as<float>());
    std::copy_n(host_.data() + T * half, T * half, sin.as<float>());
  } else {
    backend_.upload(cos.data, host_.data(), static_cast<size_t>(T * half) * sizeof(float));
    backend_.upload(sin.data, host_.data() + T * half, static_cast<size_t>(T * half) * sizeof(float));
  }

  // Token embeddings: the head's own table, else the target's.
  const ModelWeights& tw = target_.weights();
  if (weights_.embed)
    backend_.embedding(*weights_.embed, batch.token_ids.data(), T, e);
  else if (tw.tied)
    backend_.embedding(*tw.lm_head, batch.token_ids.data(), T, e);
  else
    backend_.embedding(tw.embed_table, batch.token_ids.data(), T, e);

  // The first layer's input. x: the residual stream; the attention input: `first_in` (width first_k).
  Tensor first_in = x;
  int64_t first_k = H;
  if (!spec_.eagle3) {
    // x = fc(concat(embedding, hidden)); the first layer has no input norm.
    backend_.copy_rows_strided(e, H, cat, 2 * H, T, H);
    Tensor right = cols(cat, H, H);
    backend_.copy_rows_strided(hidden, ld, right, 2 * H, T, H);
    backend_.linear(*weights_.fc, cat, 2 * H, x, H, false);
  } else {
    if (from_target)
      backend_.linear(*weights_.fc, hidden, ld, x, H, false);  // the aux states combined
    else
      backend_.copy_rows_strided(hidden, ld, x, H, T, H);
    const EagleHeadLayer& l0 = weights_.layers[0];
    Tensor left = cat, right = cols(cat, H, H);
    backend_.rms_norm(e, f32(l0.input_norm, H), T, H, H, eps, h);
    backend_.copy_rows_strided(h, H, left, 2 * H, T, H);
    backend_.rms_norm(x, f32(l0.hidden_norm, H), T, H, H, eps, h);
    backend_.copy_rows_strided(h, H, right, 2 * H, T, H);
    if (spec_.norm_before_residual) backend_.copy_rows_strided(h, H, x, H, T, H);  // the residual is normed too
    first_in = cat;
    first_k = 2 * H;
  }

  for (size_t l = 0; l < weights_.layers.size(); ++l) {
    const EagleHeadLayer& lw = weights_.layers[l];
    const Tensor* in = &x;
    int64_t k_in = H;
    if (l == 0) {
      in = &first_in;
      k_in = first_k;
    } else {
      backend_.rms_norm(x, f32(lw.input_norm, H), T, H, H, eps, h);
      in = &h;
    }
    backend_.linear(*lw.qkv, *in, k_in, qkv, qkv_dim, false);
    Tensor q = cols(qkv, q_dim, 0), k = cols(qkv, kv_dim, q_dim), v = cols(qkv, kv_dim, q_dim + kv_dim);
    backend_.rope(q, T, NH, D, qkv_dim, cos, sin, rope_.rotary_dim());
    backend_.rope(k, T, NKV, D, qkv_dim, cos, sin, rope_.rotary_dim());
    backend_.attention(q, qkv_dim, NH, k, v, qkv_dim, kv[l], batch.attn, AttentionOptions{scale, 0, 0.0f, nullptr},
                       attn);
    backend_.linear(*lw.o, attn, q_dim, x, H, true);
    backend_.rms_norm(x, f32(lw.post_norm, H), T, H, H, eps, h);
    backend_.mlp(*lw.gate_up, *lw.down, h, H, GatedActivation::Silu, gu, act, x, H, true);
  }

  const int64_t R = static_cast<int64_t>(batch.logits_rows.size());
  if (R == 0) return;
  next_hidden_ = scratch(next_, R, H);
  backend_.gather_rows(x, batch.logits_rows.data(), R, H, next_hidden_);  // before the final norm
  const int64_t V = spec_.draft_vocab_size;
  Tensor logits = scratch(logits_, R, V);
  const LinearWeight& head = weights_.lm_head ? *weights_.lm_head : *tw.lm_head;
  if (spec_.eagle3) {
    Tensor sel = scratch(sel_, R, H);
    backend_.rms_norm(next_hidden_, f32(weights_.final_norm, H), R, H, H, eps, sel);
    backend_.linear(head, sel, H, logits, V, false);
  } else {
    backend_.linear(head, next_hidden_, H, logits, V, false);  // EAGLE-1: no final norm
  }
  argmax_rows(logits, R, V, drafts);
}

}  // namespace cserve
