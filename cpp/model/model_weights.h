// The weights of a Llama-family decoder, packed by the backend at load.
// Dense matrices are fused where one GEMM can serve several: q|k|v and gate|up.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/buffer.h"
#include "loader/model_config.h"
#include "model/tensor_parallel.h"

namespace cserve {

class GgufFile;

class SafetensorsCheckpoint;

struct LayerWeights {
  std::unique_ptr<LinearWeight> qkv, o, gate_up, down;  // gate_up / down: a MoE layer's shared expert, if any
  // Mixture-of-experts layers: the router ([num_experts (+ 1: the shared expert's gate)][hidden])
  // and each expert's gate|up and down; null / empty on dense layers.
  std::unique_ptr<LinearWeight> router;
  std::vector<std::unique_ptr<LinearWeight>> expert_gate_up, expert_down;
  // RMSNorm weights, f32 [hidden]: on the attention and MLP blocks' inputs (pre_norms: all but
  // OLMo 2) and outputs (post_norms: OLMo 2, Gemma 2 / 3); Gemma's offset already added.
  Buffer attn_in_norm, attn_out_norm, mlp_in_norm, mlp_out_norm;
  Buffer q_norm, k_norm;                   // f32 [head_dim] (Qwen3, Gemma 3), [q_dim] / [kv_dim] (OLMo 2)
  Buffer sinks;                            // f32 [this rank's heads]: gpt-oss's attention sinks
};

struct ModelWeights {
  std::vector<LayerWeights> layers;
  Buffer final_norm;                        // f32 [hidden] (Granite: over logits_scaling)
  std::unique_ptr<LinearWeight> lm_head;    // also the embedding when tied
  Tensor embed_table;                       // untied: [vocab][hidden], in the mmap or in embed_owned
  Buffer embed_owned;
  bool tied = false;
  size_t total_bytes = 0;
};

// Called after each layer (and the head) is loaded: (done, total).
using LoadProgress = std::function<void(int64_t done, int64_t total)>;

// From a checkpoint (shapes and dtypes checked, errors name the file and tensor), or
// random (load_format dummy) when checkpoint is null. Converts to `dtype`.
// From a GGUF file instead when `gguf` is set: quantized linear weights stay quantized,
// other tensors are dequantized to `dtype`.
// With tensor parallelism (tp.size > 1) only this rank's shard is read and packed (the config is
// the whole model's; the layers' shapes are then rank_config's). With pipeline parallelism only
// the stage's layers, the embedding on the first stage, the final norm and LM head on the last.
// Granite's multipliers are folded in here (see LlamaModel): o and down (weights and biases) are
// scaled by residual_multiplier / embedding_multiplier (with post_norms: the output norms), the
// final norm by 1 / logits_scaling. Gemma's norm offset is added to the norm weights.
ModelWeights load_weights(const ModelConfig& config, const SafetensorsCheckpoint* checkpoint, DType dtype,
                          Backend& backend, uint64_t seed, const LoadProgress& progress = {},
                          const GgufFile* gguf = nullptr, const TensorParallel& tp = {},
                          const PipelineStage& pp = {});

// A small parameter (norm weights, attention sinks) as f32 on the host, rounded through the
// compute dtype as the model holds it.
Buffer rounded_f32(const Tensor& t, DType dtype);
// A host buffer in the backend's memory (itself when that is the host's).
Buffer in_backend_memory(Buffer host, Backend& backend);

}  // namespace cserve
