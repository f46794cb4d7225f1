// The forward pass of a Llama-family decoder over one flat batch of tokens from
// many sequences: embedding, per layer RMSNorm -> fused QKV -> (q/k norm) -> RoPE ->
// KV write -> paged attention -> O projection (+ residual) -> RMSNorm -> fused
// gate|up -> SiLU*up -> down (+ residual), then the final norm and the LM head
// only at the rows that need logits.
// Family options (ModelConfig): OLMo 2 drops the input norms and normalizes the O and down
// outputs before their residual adds (rms_norm_add), its q/k norms over the whole projection;
// Gemma scales its embeddings, Gemma 2 / 3 normalize both sides of each block, GELU (tanh) in
// the MLP, soft-capped attention scores and logits (Gemma 2), a RoPE of their own for the
// sliding layers (Gemma 3); SmolLM3 skips RoPE on its NoPE layers; Granite's multipliers are
// folded into the weights (load_weights) and the norms' epsilon (see forward()).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/attention_metadata.h"
#include "backend/backend.h"
#include "loader/model_config.h"
#include "model/model_weights.h"
#include "model/moe_routing.h"
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
  // Whether forward() can be captured in a graph (false, with the reason, for a mixture of
  // experts: its routing runs on the host).
  bool graph_capturable(std::string& why) const;
  // How many pipeline micro-batches forward() cuts `batch` into (1: it goes through whole).
  int micro_batch_count(const ForwardBatch& batch) const;
  // The last forward's logits in backend memory (when it was given no host array).
  const Tensor& device_logits() const { return device_logits_; }
  // Hidden states an EAGLE head reads, kept for every token of each forward from now on (no
  // pipeline or tensor parallelism): the residual stream entering each of `layer_inputs` (vLLM's
  // aux hidden states, in ascending layer order), then with `final_normed` the last layer's output
  // after the final norm (what vLLM's model returns), side by side per token.
  void capture_hidden_states(std::vector<int32_t> layer_inputs, bool final_normed);
  // The last forward's captured states: [num_tokens][hidden x count] f32 in backend memory.
  const Tensor& hidden_states() const { return hidden_; }
  int64_t hidden_states_width() const;
  const ModelWeights& weights() const { return weights_; }

 private:
  Tensor scratch(Buffer& buf, int64_t rows, int64_t cols);

  ModelConfig config_;
  Backend& backend_;
  ModelWeights weights_;
  TensorParallel tp_;
  PipelineStage pp_;
  RotaryEmbedding rope_;
  std::unique_ptr<RotaryEmbedding> rope_local_;  // Gemma 3's sliding layers; null elsewhere
  // Activation buffers (backend memory), grown on demand and reused across steps.
  struct Scratch {
    Buffer x, h, qkv, attn, gu, act, cos, sin, cos_local, sin_local, sel, logits, shard_logits, gathered;
    Buffer router, moe_in, moe_gate_up, moe_act, moe_out;  // mixture-of-experts layers
    Buffer hidden;                                          // capture_hidden_states
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
  // A mixture-of-experts MLP on `in` ([T][hidden]): routed on the host, each expert's GEMMs over
  // the rows routed to it, combined per token into `out` (added to it when accumulate).
  void run_experts(const LayerWeights& lw, const Tensor& in, int64_t T, Scratch& bufs, Tensor& out, bool accumulate);
  ExpertRouting routing_;
  std::vector<float> router_host_;  // router logits downloaded from a device backend
  std::vector<int32_t> local_ids_;
  Tensor device_logits_;
  std::vector<float> rope_host_;  // rope tables made on the host for a device backend
  std::vector<int32_t> capture_layers_;
  bool capture_final_ = false;
  Tensor hidden_;
};

}  // namespace cserve
