// The forward pass of a Llama-family decoder over one flat batch of tokens from
// many sequences: embedding, per layer RMSNorm -> fused QKV -> (q/k norm) -> RoPE ->
// KV write -> paged attention -> O projection (+ residual) -> RMSNorm -> fused
// gate|up -> SiLU*up -> down (+ residual), then the final norm and the LM head
// only at the rows that need logits.
#pragma once
#include <cstdint>
#include <vector>

#include "backend/attention_metadata.h"
#include "backend/backend.h"
#include "loader/model_config.h"
#include "model/model_weights.h"
#include "model/rope.h"

namespace cserve {

struct ForwardBatch {
  std::vector<int32_t> token_ids;      // [num_tokens]
  std::vector<int32_t> token_seq_len;  // [num_tokens] length of the token's sequence after this step
  AttentionMetadata attn;
  std::vector<int32_t> logits_rows;    // token indices whose logits are returned, in order
};

class LlamaModel {
 public:
  LlamaModel(const ModelConfig& config, Backend& backend, ModelWeights weights);

  const ModelConfig& config() const { return config_; }
  size_t weight_bytes() const { return weights_.total_bytes; }
  // logits: host [logits_rows.size()][vocab_size]; nullptr leaves them in backend memory
  // (device_logits()), for a backend that samples where they are.
  void forward(const ForwardBatch& batch, std::vector<KVCacheLayer>& kv_cache, float* logits);
  // The last forward's logits in backend memory (when it was given no host array).
  const Tensor& device_logits() const { return device_logits_; }

 private:
  Tensor scratch(Buffer& buf, int64_t rows, int64_t cols);

  ModelConfig config_;
  Backend& backend_;
  ModelWeights weights_;
  RotaryEmbedding rope_;
  // Activation buffers, grown on demand and reused across steps.
  Buffer x_, h_, qkv_, attn_, gu_, act_, cos_, sin_, sel_, logits_;  // backend memory
  Tensor device_logits_;
  std::vector<float> rope_host_;  // rope tables made on the host for a device backend
};

}  // namespace cserve
