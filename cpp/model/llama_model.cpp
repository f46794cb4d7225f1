#include "model/llama_model.h"

#include <algorithm>
#include <cmath>

#include "cserve/error.h"
#include "model/micro_batches.h"
#include "model/moe_routing.h"

namespace cserve {

LlamaModel::LlamaModel(const ModelConfig& config, Backend& backend, ModelWeights weights, TensorParallel tp,
                       PipelineStage pp)
    : config_(config), backend_(backend), weights_(std::move(weights)), tp_(tp), pp_(pp), rope_(config) {
  if (config.local_rope_theta > 0) {  // Gemma 3's sliding layers: the default RoPE at their own base
    ModelConfig local = config;
    local.rope_theta = config.local_rope_theta;
    local.rope_scaling = RopeScaling{};
    rope_local_ = std::make_unique<RotaryEmbedding>(local);
  }
  if ((tp_.enabled() && !tp_.comm) || (pp_.enabled() && !pp_.comm))
    throw InvalidArgument("tensor and pipeline parallelism need a communicator");
  // The collectives run on activations where the backend keeps them.
  for (const Communicator* comm : {tp_.enabled() ? tp_.comm : nullptr, pp_.enabled() ? pp_.comm : nullptr})
    if (comm && comm->device_memory() == backend_.host_memory())
      throw InvalidArgument(std::string("tensor and pipeline parallelism on ") + backend_.name() + " need a " +
                            (backend_.host_memory() ? "host" : "device") + " communicator");
}

void LlamaModel::embed_vocab_shard(const ForwardBatch& batch, std::vector<int32_t>& local_ids, Tensor& x) {
  const VocabShard vs = vocab_shard(config_.vocab_size, tp_.rank, tp_.size);
  const int64_t T = static_cast<int64_t>(batch.token_ids.size()), H = config_.hidden_size;
  local_ids.resize(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    const int32_t id = batch.token_ids[t];
    local_ids[t] = id >= vs.begin && id < vs.end ? static_cast<int32_t>(id - vs.begin) : 0;
  }
  if (weights_.tied)
    backend_.embedding(*weights_.lm_head, local_ids.data(), T, x);
  else
    backend_.embedding(weights_.embed_table, local_ids.data(), T, x);
  // Tokens of other ranks' rows contribute zeros; the sum over ranks is the embedding.
  backend_.zero_rows_outside(x, T, H, batch.token_ids.data(), vs.begin, vs.end);
  tp_.comm->all_reduce(x.data, T * H, DType::F32);
}

void LlamaModel::gather_logits(Scratch& bufs, const Tensor& sel, int64_t L, float* out) {
  const VocabShard vs = vocab_shard(config_.vocab_size, tp_.rank, tp_.size);
  const int64_t P = vs.padded, V = config_.vocab_size, H = config_.hidden_size;
  Tensor part = scratch(bufs.shard_logits, L, P);
  backend_.linear(*weights_.lm_head, sel, H, part, P, false);
  Tensor all = scratch(bufs.gathered, tp_.size * L, P);
  tp_.comm->all_gather(part.data, all.data, L * P, DType::F32);
  // Rank r's [L][P] block holds the columns [s.begin, s.end) of every row.
  for (int r = 0; r < tp_.size; ++r) {
    const VocabShard s = vocab_shard(V, r, tp_.size);
    const Tensor block{all.as<float>() + r * L * P, DType::F32, {L, P}};
    Tensor columns{out + s.begin, DType::F32, {L, V}};
    backend_.copy_rows_strided(block, P, columns, V, L, s.end - s.begin);
  }
}

Tensor LlamaModel::scratch(Buffer& buf, int64_t rows, int64_t cols) {
  size_t bytes = static_cast<size_t>(rows * cols) * sizeof(float);
  if (buf.size() < bytes) buf = backend_.allocate(bytes + bytes / 2);
  return Tensor{buf.data(), DType::F32, {rows, cols}};
}

void LlamaModel::forward(const ForwardBatch& batch, std::vector<KVCacheLayer>& kv_cache, float* logits,
                         ScratchSet set) {
  if (!in_micro_batch_ && micro_batch_count(batch) > 1) {
    forward_micro_batches(batch, kv_cache, logits, set);
    return;
  }
  Scratch& bufs = scratch_[set];
  const ModelConfig& c = config_;
  const int64_t T = static_cast<int64_t>(batch.token_ids.size());
  const int64_t H = c.hidden_size, D = c.head_dim, I = c.intermediate_size;
  const int64_t NH = c.num_attention_heads, NKV = c.num_key_value_heads;
  const int64_t q_dim = NH * D, kv_dim = NKV * D, qkv_dim = q_dim + 2 * kv_dim;
  const float eps = static_cast<float>(c.rms_norm_eps);
  // Granite: the residual stream x is held divided by embedding_multiplier (the embedding is used
  // as is, the sublayer outputs come scaled by residual_multiplier / embedding_multiplier from
  // load_weights). RMSNorm(m x) = RMSNorm(x) with epsilon / m^2, so the norms that read x use that.
  const float x_eps = static_cast<float>(c.rms_norm_eps / (c.embedding_multiplier * c.embedding_multiplier));
  const float scale = c.attention_multiplier > 0 ? static_cast<float>(c.attention_multiplier)
                                                 : static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));

  backend_.begin_forward(batch.attn);
  Tensor x = scratch(bufs.x, T, H), h = scratch(bufs.h, T, H), qkv = scratch(bufs.qkv, T, qkv_dim);
  // gu / act also serve a MoE layer's shared expert (run_experts): sized for the wider of the two.
  const int64_t mlp_width = std::max(I, c.shared_expert_intermediate_size);
  Tensor attn = scratch(bufs.attn, T, q_dim);
  Tensor gu = scratch(bufs.gu, T, 2 * mlp_width), act = scratch(bufs.act, T, mlp_width);
  const int64_t half = rope_.rotary_dim() / 2;
  Tensor cos = scratch(bufs.cos, T, half), sin = scratch(bufs.sin, T, half);
  // The rope tables are computed on the host (straight into cos/sin on the CPU).
  const bool host = backend_.host_memory();
  auto rope_tables = [&](const RotaryEmbedding& rope, Tensor& cos_t, Tensor& sin_t) {
    if (!host) rope_host_.resize(static_cast<size_t>(2 * T * half));
    float* cos_h = host ? cos_t.as<float>() : rope_host_.data();
    float* sin_h = host ? sin_t.as<float>() : rope_host_.data() + T * half;
    for (int64_t t = 0; t < T; ++t)
      rope.compute(batch.attn.positions[t], batch.token_seq_len[t], cos_h + t * half, sin_h + t * half);
    if (!host) {
      backend_.upload(cos_t.data, cos_h, static_cast<size_t>(T * half) * sizeof(float));
      backend_.upload(sin_t.data, sin_h, static_cast<size_t>(T * half) * sizeof(float));
    }
  };
  rope_tables(rope_, cos, sin);
  // Gemma 3's sliding layers: their own tables.
  Tensor cos_local = cos, sin_local = sin;
  if (rope_local_) {
    cos_local = scratch(bufs.cos_local, T, half);
    sin_local = scratch(bufs.sin_local, T, half);
    rope_tables(*rope_local_, cos_local, sin_local);
  }

  auto embed = [&] {
    if (tp_.enabled())
      embed_vocab_shard(batch, local_ids_, x);
    else if (weights_.tied)
      backend_.embedding(*weights_.lm_head, batch.token_ids.data(), T, x);
    else
      backend_.embedding(weights_.embed_table, batch.token_ids.data(), T, x);
    if (c.embedding_scale != 1.0) backend_.scale(x, T * H, static_cast<float>(c.embedding_scale));  // Gemma
  };
  // Row-parallel projections under tensor parallelism: each rank's partial product, the residual
  // added by rank 0 alone, summed over ranks in place.
  const bool residual = tp_.rank == 0;
  auto reduce = [&](Tensor& t) {
    if (tp_.enabled()) tp_.comm->all_reduce(t.data, T * H, DType::F32);
  };

  auto f32 = [](const Buffer& b, int64_t n) { return Tensor{b.data(), DType::F32, {n}}; };
  auto offset = [](const Tensor& t, int64_t cols, int64_t off) {
    return Tensor{t.as<float>() + off, DType::F32, {t.dim(0), cols}};
  };

  // The MLP's gated activation, from config.json's hidden_act.
  const GatedActivation mlp_act =
      c.hidden_act == "gelu_pytorch_tanh" ? GatedActivation::GeluTanh : GatedActivation::Silu;
  const float attn_cap = static_cast<float>(c.attn_logit_softcapping);

  // Each block: [pre-norm] -> sublayer -> [post-norm] -> residual add. `write(out, accumulate)`
  // puts the sublayer's output projection in `out`: without a post-norm it adds into x itself
  // (rank 0 adds the residual under tensor parallelism); with one (OLMo 2, Gemma 2 / 3) it goes
  // to h and rms_norm_add adds its norm into x. Summed over ranks either way.
  auto add_to_residual = [&](const Buffer& out_norm, auto&& write) {
    if (c.post_norms) {
      write(h, false);
      reduce(h);
      backend_.rms_norm_add(h, f32(out_norm, H), T, H, H, eps, x);
    } else {
      write(x, residual);
      reduce(x);
    }
  };
  // capture_hidden_states: each captured state in its own columns of one [T][W] buffer.
  const int64_t hidden_w = hidden_states_width();
  if (hidden_w > 0) hidden_ = scratch(bufs.hidden, T, hidden_w);
  auto run_layers = [&] {
    for (size_t l = 0; l < weights_.layers.size(); ++l) {
      const LayerWeights& lw = weights_.layers[l];
      // The config's per-layer settings are the whole model's: this stage starts at first_layer.
      const size_t global = static_cast<size_t>(pp_.enabled() ? pp_.first_layer : 0) + l;
      for (size_t j = 0; j < capture_layers_.size(); ++j) {
        if (capture_layers_[j] != static_cast<int32_t>(global)) continue;
        Tensor cols = offset(hidden_, H, static_cast<int64_t>(j) * H);
        backend_.copy_rows_strided(x, H, cols, hidden_w, T, H);
      }
      if (c.pre_norms) backend_.rms_norm(x, f32(lw.attn_in_norm, H), T, H, H, x_eps, h);
      backend_.linear(*lw.qkv, c.pre_norms ? h : x, H, qkv, qkv_dim, false);
      Tensor q = offset(qkv, q_dim, 0), k = offset(qkv, kv_dim, q_dim), v = offset(qkv, kv_dim, q_dim + kv_dim);
      if (c.qk_norm_full) {
        backend_.rms_norm(q, f32(lw.q_norm, q_dim), T, q_dim, qkv_dim, eps, q);
        backend_.rms_norm(k, f32(lw.k_norm, kv_dim), T, kv_dim, qkv_dim, eps, k);
      } else if (c.qk_norm) {  // per head, every token's heads at once
        backend_.rms_norm_heads(q, f32(lw.q_norm, D), T, NH, D, qkv_dim, eps);
        backend_.rms_norm_heads(k, f32(lw.k_norm, D), T, NKV, D, qkv_dim, eps);
      }
      const int64_t window = c.layer_sliding_window.empty() ? 0 : c.layer_sliding_window[global];
      if (c.layer_rope.empty() || c.layer_rope[global]) {  // SmolLM3's NoPE layers skip it
        const bool local = rope_local_ && config_.layer_local_rope[global];
        backend_.rope(q, T, NH, D, qkv_dim, local ? cos_local : cos, local ? sin_local : sin, rope_.rotary_dim());
        backend_.rope(k, T, NKV, D, qkv_dim, local ? cos_local : cos, local ? sin_local : sin, rope_.rotary_dim());
      }
      AttentionOptions attn_options{scale, window, attn_cap, nullptr};
      if (lw.sinks.size() > 0) attn_options.sinks = lw.sinks.as<float>();
      backend_.attention(q, qkv_dim, NH, k, v, qkv_dim, kv_cache[l], batch.attn, attn_options, attn);
      add_to_residual(lw.attn_out_norm, [&](Tensor& out, bool accumulate) {
        backend_.linear(*lw.o, attn, q_dim, out, H, accumulate);
      });
      if (c.pre_norms) backend_.rms_norm(x, f32(lw.mlp_in_norm, H), T, H, H, x_eps, h);
      const Tensor& mlp_in = c.pre_norms ? h : x;
      if (lw.router) {  // a mixture of experts (run_experts reads all of mlp_in before it writes out)
        add_to_residual(lw.mlp_out_norm, [&](Tensor& out, bool accumulate) {
          run_experts(lw, mlp_in, T, bufs, out, accumulate);
        });
        continue;
      }
      add_to_residual(lw.mlp_out_norm, [&](Tensor& out, bool accumulate) {
        backend_.mlp(*lw.gate_up, *lw.down, mlp_in, H, mlp_act, gu, act, out, H, accumulate);
      });
    }
  };
  if (!pp_.enabled()) {
    embed();
    run_layers();
    if (capture_final_) {  // after the captured layer inputs, normed as the logits' rows are
      Tensor last = offset(hidden_, H, hidden_w - H);
      if (hidden_w == H) {
        backend_.rms_norm(x, f32(weights_.final_norm, H), T, H, H, x_eps, last);
      } else {
        backend_.rms_norm(x, f32(weights_.final_norm, H), T, H, H, x_eps, h);
        backend_.copy_rows_strided(h, H, last, hidden_w, T, H);
      }
    }
  } else if (in_micro_batch_) {
    // This micro-batch from the previous stage (or the tokens), through this stage's layers, to
    // the next stage; the last one computes its logits rows below.
    const size_t bytes = static_cast<size_t>(T * H) * sizeof(float);
    if (pp_.first())
      embed();
    else
      pp_.prev->broadcast(x.data, bytes, 0);
    run_layers();
    if (!pp_.last()) {
      pp_.next->broadcast(x.data, bytes, 0);
      return;
    }
  } else {
    // Every stage takes part in every hand-over, in stage order: stage s sends its output, the
    // next stage computes on it.
    for (int s = 0; s < pp_.num_stages; ++s) {
      if (s == pp_.stage) {
        if (pp_.first()) embed();
        run_layers();
      }
      if (s + 1 < pp_.num_stages) pp_.comm->broadcast(x.data, static_cast<size_t>(T * H) * sizeof(float), s);
    }
  }

  const int64_t L = static_cast<int64_t>(batch.logits_rows.size());
  if (L == 0) return;
  if (pp_.enabled() && !pp_.last() && !in_micro_batch_) {  // the logits come from the last stage
    Tensor out = host && logits ? Tensor{logits, DType::F32, {L, c.vocab_size}} : scratch(bufs.logits, L, c.vocab_size);
    pp_.comm->broadcast(out.data, static_cast<size_t>(L * c.vocab_size) * sizeof(float), pp_.num_stages - 1);
    device_logits_ = out;
    return;
  }
  Tensor sel = scratch(bufs.sel, L, H);
  backend_.gather_rows(x, batch.logits_rows.data(), L, H, sel);
  backend_.rms_norm(sel, f32(weights_.final_norm, H), L, H, H, x_eps, sel);
  // Logits straight into the caller's host array on the CPU; elsewhere into backend memory,
  // then downloaded unless the caller samples there.
  Tensor out = host && logits ? Tensor{logits, DType::F32, {L, c.vocab_size}} : scratch(bufs.logits, L, c.vocab_size);
  if (tp_.enabled())
    gather_logits(bufs, sel, L, out.as<float>());
  else
    backend_.linear(*weights_.lm_head, sel, H, out, c.vocab_size, false);
  if (c.final_logit_softcapping > 0)  // Gemma 2
    backend_.softcap(out, L * c.vocab_size, static_cast<float>(c.final_logit_softcapping));
  if (pp_.enabled() && !in_micro_batch_)
    pp_.comm->broadcast(out.data, static_cast<size_t>(L * c.vocab_size) * sizeof(float), pp_.num_stages - 1);
  device_logits_ = out;
  if (logits && !host) backend_.download(logits, out.data, static_cast<size_t>(L * c.vocab_size) * sizeof(float));
}

void LlamaModel::run_experts(const LayerWeights& lw, const Tensor& in, int64_t T, Scratch& bufs, Tensor& out,
                             bool accumulate) {
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size, E = c.num_experts, K = c.num_experts_per_tok;
  const int64_t EI = c.moe_intermediate_size, SI = c.shared_expert_intermediate_size;
  const int64_t R = E + (SI > 0 ? 1 : 0);  // router columns: the experts, then the shared expert's gate
  Tensor logits = scratch(bufs.router, T, R);
  backend_.linear(*lw.router, in, H, logits, R, false);
  const float* host_logits = logits.as<float>();
  if (!backend_.host_memory()) {
    router_host_.resize(static_cast<size_t>(T * R));
    backend_.download(router_host_.data(), logits.data, router_host_.size() * sizeof(float));
    host_logits = router_host_.data();
  }
  route_top_k(host_logits, T, E, R, K, c.norm_topk_prob, SI > 0 ? E : -1, routing_);

  // Each expert's rows at once: its GEMMs read its weights once for all the tokens it serves.
  const int64_t n = T * K;
  Tensor xs = scratch(bufs.moe_in, n, H), gus = scratch(bufs.moe_gate_up, n, 2 * EI);
  Tensor acts = scratch(bufs.moe_act, n, EI), ys = scratch(bufs.moe_out, n + (SI > 0 ? T : 0), H);
  auto rows = [](const Tensor& t, int64_t first, int64_t count, int64_t cols) {
    return Tensor{t.as<float>() + first * cols, DType::F32, {count, cols}};
  };
  backend_.gather_rows(in, routing_.source_token.data(), n, H, xs);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t b = routing_.expert_begin[e], count = routing_.expert_begin[e + 1] - b;
    if (count == 0) continue;
    Tensor ge = rows(gus, b, count, 2 * EI);
    backend_.linear(*lw.expert_gate_up[e], rows(xs, b, count, H), H, ge, 2 * EI, false);
  }
  if (c.swiglu_limit > 0)  // gpt-oss
    backend_.clamped_swiglu_mul(gus, n, EI, static_cast<float>(c.swiglu_alpha), static_cast<float>(c.swiglu_limit),
                                acts);
  else
    backend_.silu_mul(gus, n, EI, acts);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t b = routing_.expert_begin[e], count = routing_.expert_begin[e + 1] - b;
    if (count == 0) continue;
    Tensor ye = rows(ys, b, count, H);
    backend_.linear(*lw.expert_down[e], rows(acts, b, count, EI), EI, ye, H, false);
  }
  if (SI > 0) {  // Qwen2-MoE's shared expert: its outputs after the routed ones, weighted by its gate
    // bufs.gu / act hold the shared expert's width too (forward() sized them), so these views
    // leave forward()'s own valid.
    Tensor shared_gu = scratch(bufs.gu, T, 2 * SI), shared_act = scratch(bufs.act, T, SI);
    Tensor tail = rows(ys, n, T, H);
    backend_.mlp(*lw.gate_up, *lw.down, in, H, GatedActivation::Silu, shared_gu, shared_act, tail, H, false);
  }
  backend_.combine_rows(ys, routing_.rows.data(), routing_.weights.data(), T, routing_.slots, H, out, accumulate);
}

void LlamaModel::capture_hidden_states(std::vector<int32_t> layer_inputs, bool final_normed) {
  if (tp_.enabled() || pp_.enabled())
    throw NotSupported("hidden states for an EAGLE head are not captured yet with tensor or pipeline parallelism");
  for (int32_t l : layer_inputs)
    if (l < 0 || l >= config_.num_hidden_layers)
      throw InvalidArgument("hidden state capture: layer " + std::to_string(l) + " is not one of the model's " +
                            std::to_string(config_.num_hidden_layers));
  capture_layers_ = std::move(layer_inputs);
  capture_final_ = final_normed;
}

int64_t LlamaModel::hidden_states_width() const {
  return config_.hidden_size * (static_cast<int64_t>(capture_layers_.size()) + (capture_final_ ? 1 : 0));
}

bool LlamaModel::graph_capturable(std::string& why) const {
  if (config_.num_experts == 0) return true;
  why = "a mixture of experts routes each step on the host";
  return false;
}

// A micro-batch below this many tokens would read the stage's weights once more for too little
// compute: decode steps, memory-bound, go through whole.
constexpr int64_t kMinMicroBatchTokens = 128;

int LlamaModel::micro_batch_count(const ForwardBatch& batch) const {
  if (!pp_.enabled() || pp_.micro_batches <= 1 || !pp_.prev_next_ready() || !backend_.host_memory()) return 1;
  const int64_t by_tokens = static_cast<int64_t>(batch.token_ids.size()) / kMinMicroBatchTokens;
  return static_cast<int>(std::min<int64_t>({pp_.micro_batches, by_tokens, batch.attn.num_seqs}));
}

void LlamaModel::forward_micro_batches(const ForwardBatch& batch, std::vector<KVCacheLayer>& kv_cache,
                                       float* logits, ScratchSet set) {
  const int64_t V = config_.vocab_size, L = static_cast<int64_t>(batch.logits_rows.size());
  Tensor out = logits ? Tensor{logits, DType::F32, {L, V}} : scratch(scratch_[set].logits, L, V);
  in_micro_batch_ = true;
  try {
    for (const MicroBatch& m : split_micro_batches(batch, micro_batch_count(batch)))
      forward(m.batch, kv_cache, out.as<float>() + m.first_logit * V, set);
  } catch (...) {
    in_micro_batch_ = false;
    throw;
  }
  in_micro_batch_ = false;
  if (L > 0) pp_.comm->broadcast(out.data, static_cast<size_t>(L * V) * sizeof(float), pp_.num_stages - 1);
  device_logits_ = out;
}

}  // namespace cserve
