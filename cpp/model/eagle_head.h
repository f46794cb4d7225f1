// EAGLE draft heads (vLLM's "eagle" and "eagle3" speculative methods) over a Llama-family target,
// as vLLM's llama_eagle.py / llama_eagle3.py compute them.
//
// EAGLE-1: x = fc(concat(embed(token), hidden)), then Llama decoder layers (the first without its
// input norm); the output x (no final norm) is both the next step's hidden state and what the LM
// head (the target's unless the checkpoint has one) reads.
// EAGLE-3: the target's aux hidden states (the residual stream entering three of its layers)
// combine through fc into one hidden state h; the first layer's attention reads
// concat(input_layernorm(embed(token)), hidden_norm(h)) (2 x hidden wide), its residual is h (or
// hidden_norm(h) with norm_before_residual); after the layers, x before the final norm is the
// next step's hidden state, norm(x) feeds an LM head of draft_vocab_size rows whose ids map to
// the target's through d2t (target id = draft id + d2t[draft id]).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "loader/model_config.h"
#include "loader/safetensors.h"
#include "model/llama_model.h"
#include "model/rope.h"

namespace cserve {

struct EagleHeadLayer {
  std::unique_ptr<LinearWeight> qkv, o, gate_up, down;
  Buffer input_norm;   // empty on EAGLE-1's first layer (none)
  Buffer hidden_norm;  // EAGLE-3's first layer: on the hidden-state half of its attention input
  Buffer post_norm;    // post_attention_layernorm
};

struct EagleHeadWeights {
  std::unique_ptr<LinearWeight> fc;       // EAGLE-1: [hidden][2 hidden]; EAGLE-3: [hidden][3 target hidden]
  std::vector<EagleHeadLayer> layers;
  Buffer final_norm;                      // EAGLE-3
  std::unique_ptr<LinearWeight> embed;    // the checkpoint's embed_tokens; null: the target's
  std::unique_ptr<LinearWeight> lm_head;  // the checkpoint's; null: the target's (EAGLE-1 only)
  std::vector<int32_t> draft_to_target;   // EAGLE-3's d2t offsets; empty: draft ids are target ids
  size_t total_bytes = 0;
};

struct EagleHeadSpec {
  bool eagle3 = false;
  ModelConfig config;             // the head's shapes (a Llama decoder's): hidden, heads, layers, RoPE
  int64_t draft_vocab_size = 0;   // rows of the LM head
  int64_t fc_in = 0;              // the fc's input width
  std::vector<int32_t> aux_layers;  // EAGLE-3: the target layers whose inputs fc combines (ascending)
  bool norm_before_residual = false;
};

class EagleHead {
 public:
  // target: the model the head drafts for (its embedding and, where the head has none, its LM
  // head); it must outlive the head.
  EagleHead(const EagleHeadSpec& spec, EagleHeadWeights weights, const LlamaModel& target, Backend& backend);

  const EagleHeadSpec& spec() const { return spec_; }
  const ModelConfig& config() const { return spec_.config; }
  size_t weight_bytes() const { return weights_.total_bytes; }
  // One forward over `batch` (its keys and values written to `kv`): `hidden` holds one row per
  // token (row stride ld): the target's captured states (from_target: EAGLE-3 combines them
  // through fc first) or the head's own previous outputs. For each of batch.logits_rows, the
  // greedy draft (a target id) in `drafts` and the output hidden state in next_hidden() (row i).
  void forward(const ForwardBatch& batch, const Tensor& hidden, int64_t ld, bool from_target,
               std::vector<KVCacheLayer>& kv, std::vector<int32_t>& drafts);
  // [logits_rows][hidden] f32 in backend memory, valid until the next forward.
  const Tensor& next_hidden() const { return next_hidden_; }

 private:
  Tensor scratch(Buffer& buf, int64_t rows, int64_t cols);
  void argmax_rows(const Tensor& logits, int64_t rows, int64_t vocab, std::vector<int32_t>& out);

  EagleHeadSpec spec_;
  EagleHeadWeights weights_;
  const LlamaModel& target_;
  Backend& backend_;
  RotaryEmbedding rope_;
  Buffer x_, h_, e_, cat_, qkv_, attn_, gu_, act_, cos_, sin_, sel_, next_, logits_;
  Tensor next_hidden_;
  std::vector<float> host_;
  std::vector<DeviceSamplingRow> greedy_rows_;
};

// The head in `dir` (config.json + safetensors, vLLM's checkpoint names: fc, layers.N.* or
// EAGLE-3's midlayer.*, optional embed_tokens / lm_head / norm / d2t) for `target`, computing in
// `dtype`. method: "eagle" or "eagle3". Throws NotSupported for what is not built, InvalidArgument
// for shapes that do not fit the target.
std::unique_ptr<EagleHead> load_eagle_head(const std::string& dir, const std::string& method,
                                           const LlamaModel& target, DType dtype, Backend& backend);

}  // namespace cserve
