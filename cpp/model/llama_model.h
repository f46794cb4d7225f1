// The forward pass of a Llama-family decoder over one flat batch of tokens from
// many sequences: embedding, per layer RMSNorm -> fused QKV -> (q/k norm) -> RoPE ->
// KV write -> paged attention -> O projection (+ residual) -> RMSNorm -> fused
// gate|up -> SiLU*up -> down (+ residual), then the final norm and the LM head
// only at the rows that need logits.
// Family options (ModelConfig): OLMo 2 drops the input norms and normalizes the O and down
// outputs before their residual adds (rms_norm_add), its q/k norms over the whole projection;
// SmolLM3 skips RoPE on its NoPE layers; Granite's multipliers are folded into the weights
// (load_weights) and the norms' epsilon (see forward()).
#pragma once
#include <cstdint>
#include <vector>

#include "backend/attention_metadata.h"
#include "backend/backend.h"
#include "loader/model_config.h"
#include "model/model_weights.h"
#include "model/rope.h"
#include "model/tensor_parallel.h"

namespace cserve {

struct ForwardBatch {
  std::vector<int32_t> token_ids;      // [num_tokens]
  std::vector<int32_t> token_seq_len;  // [num_tokens] length of the token's sequence after this step
  AttentionMetadata attn;
  std::vector<int32_t> logits_rows;    // token indices whose logits are returned, in order
};

class LlamaModel {
 public:
  // config: the shapes this model computes with (rank_config's under tensor parallelism, whose
  // weights are this rank's shard); tp: its rank, and the communicator its all-reduces use.
  // pp: the stage of a pipeline this model is (its weights are that stage's layers; the config's
  // num_hidden_layers is the stage's count).
  LlamaModel(const ModelConfig& config, Backend& backend, ModelWeights weights, TensorParallel tp = {},
             PipelineStage pp = {});

  const ModelConfig& config() const { return config_; }
  size_t weight_bytes() const { return weights_.total_bytes; }
  // Which set of activation buffers a forward uses: graph forwards (CUDA graphs) keep their
  // own, so that no eager step ever moves a buffer a captured graph points into.
  enum ScratchSet { kEagerScratch = 0, kGraphScratch = 1 };
  // logits: host [logits_rows.size()][vocab_size]; nullptr leaves them in backend memory
  // (device_logits()), for a backend that samples where they are.
  void forward(const ForwardBatch& batch, std::vector<KVCacheLayer>& kv_cache, float* logits,
               ScratchSet set = kEagerScratch);
  // How many pipeline micro-batches forward() cuts `batch` into (1: it goes through whole).
  int micro_batch_count(const ForwardBatch& batch) const;
  // The last forward's logits in backend memory (when it was given no host array).
  const Tensor& device_logits() const { return device_logits_; }

 private:
  Tensor scratch(Buffer& buf, int64_t rows, int64_t cols);

  ModelConfig config_;
  Backend& backend_;
  ModelWeights weights_;
  TensorParallel tp_;
  PipelineStage pp_;
  RotaryEmbedding rope_;
  // Activation buffers (backend memory), grown on demand and reused across steps.
  struct Scratch {
    Buffer x, h, qkv, attn, gu, act, cos, sin, sel, logits, shard_logits, gathered;
  };
  Scratch scratch_[2];
  // Pipeline parallelism: the step cut into micro-batches that flow through the stages, each
  // stage handing micro-batch m to the next while it computes m + 1; the logits come together on
  // the last stage and go to every stage once.
  void forward_micro_batches(const ForwardBatch& batch, std::vector<KVCacheLayer>& kv_cache, float* logits,
                             ScratchSet set);
  bool in_micro_batch_ = false;
  // Tensor parallelism: the embedding of this rank's vocabulary rows, summed over ranks.
  void embed_vocab_shard(const ForwardBatch& batch, std::vector<int32_t>& local_ids, Tensor& x);
  // Tensor parallelism: this rank's logits columns, gathered from every rank into out [L][vocab].
  void gather_logits(Scratch& bufs, const Tensor& sel, int64_t L, float* out);
  std::vector<int32_t> local_ids_;
  Tensor device_logits_;
  std::vector<float> rope_host_;  // rope tables made on the host for a device backend
};

}  // namespace cserve
