#include "model/llama_model.h"

#include <algorithm>
#include <cmath>

#include "cserve/error.h"
#include "model/micro_batches.h"

namespace cserve {

LlamaModel::LlamaModel(const ModelConfig& config, Backend& backend, ModelWeights weights, TensorParallel tp,
                       PipelineStage pp)
    : config_(config), backend_(backend), weights_(std::move(weights)), tp_(tp), pp_(pp), rope_(config) {
  if ((tp_.enabled() || pp_.enabled()) && !backend_.host_memory())
    throw NotSupported("tensor and pipeline parallelism run on the CPU backend only so far");
  if ((tp_.enabled() && !tp_.comm) || (pp_.enabled() && !pp_.comm))
    throw InvalidArgument("tensor and pipeline parallelism need a communicator");
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
  for (int64_t t = 0; t < T; ++t)
    if (batch.token_ids[t] < vs.begin || batch.token_ids[t] >= vs.end)
      std::fill(x.as<float>() + t * H, x.as<float>() + (t + 1) * H, 0.0f);
  tp_.comm->all_reduce(x.data, T * H, DType::F32);
}

void LlamaModel::gather_logits(Scratch& bufs, const Tensor& sel, int64_t L, float* out) {
  const VocabShard vs = vocab_shard(config_.vocab_size, tp_.rank, tp_.size);
  const int64_t P = vs.padded, V = config_.vocab_size, H = config_.hidden_size;
  Tensor part = scratch(bufs.shard_logits, L, P);
  backend_.linear(*weights_.lm_head, sel, H, part, P, false);
  Tensor all = scratch(bufs.gathered, tp_.size * L, P);
  tp_.comm->all_gather(part.data, all.data, L * P, DType::F32);
  for (int r = 0; r < tp_.size; ++r) {
    const VocabShard s = vocab_shard(V, r, tp_.size);
    for (int64_t l = 0; l < L; ++l)
      std::copy_n(all.as<float>() + (r * L + l) * P, s.end - s.begin, out + l * V + s.begin);
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
  Tensor attn = scratch(bufs.attn, T, q_dim), gu = scratch(bufs.gu, T, 2 * I), act = scratch(bufs.act, T, I);
  const int64_t half = rope_.rotary_dim() / 2;
  Tensor cos = scratch(bufs.cos, T, half), sin = scratch(bufs.sin, T, half);
  // The rope tables are computed on the host (straight into cos/sin on the CPU).
  const bool host = backend_.host_memory();
  if (!host) rope_host_.resize(static_cast<size_t>(2 * T * half));
  float* cos_h = host ? cos.as<float>() : rope_host_.data();
  float* sin_h = host ? sin.as<float>() : rope_host_.data() + T * half;
  for (int64_t t = 0; t < T; ++t)
    rope_.compute(batch.attn.positions[t], batch.token_seq_len[t], cos_h + t * half, sin_h + t * half);
  if (!host) {
    backend_.upload(cos.data, cos_h, static_cast<size_t>(T * half) * sizeof(float));
    backend_.upload(sin.data, sin_h, static_cast<size_t>(T * half) * sizeof(float));
  }

  auto embed = [&] {
    if (tp_.enabled())
      embed_vocab_shard(batch, local_ids_, x);
    else if (weights_.tied)
      backend_.embedding(*weights_.lm_head, batch.token_ids.data(), T, x);
    else
      backend_.embedding(weights_.embed_table, batch.token_ids.data(), T, x);
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

  auto run_layers = [&] {
    for (size_t l = 0; l < weights_.layers.size(); ++l) {
      const LayerWeights& lw = weights_.layers[l];
      // The config's per-layer settings are the whole model's: this stage starts at first_layer.
      const size_t global = static_cast<size_t>(pp_.enabled() ? pp_.first_layer : 0) + l;
      if (!c.post_norms) backend_.rms_norm(x, f32(lw.input_norm, H), T, H, H, x_eps, h);
      backend_.linear(*lw.qkv, c.post_norms ? x : h, H, qkv, qkv_dim, false);
      Tensor q = offset(qkv, q_dim, 0), k = offset(qkv, kv_dim, q_dim), v = offset(qkv, kv_dim, q_dim + kv_dim);
      if (c.qk_norm_full) {
        backend_.rms_norm(q, f32(lw.q_norm, q_dim), T, q_dim, qkv_dim, eps, q);
        backend_.rms_norm(k, f32(lw.k_norm, kv_dim), T, kv_dim, qkv_dim, eps, k);
      } else if (c.qk_norm) {
        for (int64_t t = 0; t < T; ++t) {
          Tensor qt{q.as<float>() + t * qkv_dim, DType::F32, {NH, D}};
          Tensor kt{k.as<float>() + t * qkv_dim, DType::F32, {NKV, D}};
          backend_.rms_norm(qt, f32(lw.q_norm, D), NH, D, D, eps, qt);
          backend_.rms_norm(kt, f32(lw.k_norm, D), NKV, D, D, eps, kt);
        }
      }
      if (c.layer_rope.empty() || c.layer_rope[global]) {  // SmolLM3's NoPE layers skip it
        backend_.rope(q, T, NH, D, qkv_dim, cos, sin, rope_.rotary_dim());
        backend_.rope(k, T, NKV, D, qkv_dim, cos, sin, rope_.rotary_dim());
      }
      backend_.write_kv(k, v, T, qkv_dim, batch.attn.slot_mapping.data(), kv_cache[l]);
      int64_t window = c.layer_sliding_window.empty() ? 0 : c.layer_sliding_window[global];
      backend_.attention(q, qkv_dim, NH, kv_cache[l], batch.attn, scale, window, attn);
      if (c.post_norms) {  // OLMo 2: x += norm(o(attn))
        backend_.linear(*lw.o, attn, q_dim, h, H, false);
        reduce(h);
        backend_.rms_norm_add(h, f32(lw.post_attention_norm, H), T, H, H, eps, x);
        backend_.linear(*lw.gate_up, x, H, gu, 2 * I, false);
      } else {
        backend_.linear(*lw.o, attn, q_dim, x, H, residual);
        reduce(x);
        backend_.rms_norm(x, f32(lw.post_attention_norm, H), T, H, H, x_eps, h);
        backend_.linear(*lw.gate_up, h, H, gu, 2 * I, false);
      }
      backend_.silu_mul(gu, T, I, act);
      if (c.post_norms) {  // x += norm(down(act))
        backend_.linear(*lw.down, act, I, h, H, false);
        reduce(h);
        backend_.rms_norm_add(h, f32(lw.post_feedforward_norm, H), T, H, H, eps, x);
      } else {
        backend_.linear(*lw.down, act, I, x, H, residual);
        reduce(x);
      }
    }
  };
  if (!pp_.enabled()) {
    embed();
    run_layers();
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
  if (pp_.enabled() && !in_micro_batch_)
    pp_.comm->broadcast(out.data, static_cast<size_t>(L * c.vocab_size) * sizeof(float), pp_.num_stages - 1);
  device_logits_ = out;
  if (logits && !host) backend_.download(logits, out.data, static_cast<size_t>(L * c.vocab_size) * sizeof(float));
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
