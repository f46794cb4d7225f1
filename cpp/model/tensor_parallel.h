// Tensor parallelism as vLLM splits a Llama-family decoder: column-parallel q/k/v and gate/up,
// row-parallel o and down (each followed by an all-reduce), vocab-parallel embedding and LM
// head (logits gathered), KV heads split across ranks or, with fewer KV heads than ranks, one
// replicated per group of ranks. Each rank computes with a config of its own share.
#pragma once
#include <cstdint>

#include "comm/communicator.h"
#include "loader/model_config.h"

namespace cserve {

struct TensorParallel {
  int rank = 0;
  int size = 1;
  Communicator* comm = nullptr;  // required when size > 1; not owned
  bool enabled() const { return size > 1; }
};

// Throws InvalidArgument with vLLM's message when `c` cannot be split `size` ways.
void check_tensor_parallel(const ModelConfig& c, int size);

// The config one rank computes with: its attention heads, KV heads and MLP width. vocab_size
// stays the whole vocabulary (the logits are gathered).
ModelConfig rank_config(const ModelConfig& c, int rank, int size);

// A rank's rows of the vocabulary [begin, end); every shard counts `padded` rows (the last one
// may hold fewer real ones), so gathered logits have one shape per rank.
struct VocabShard {
  int64_t begin = 0, end = 0, padded = 0;
};
VocabShard vocab_shard(int64_t vocab_size, int rank, int size);

// The first KV head a rank holds (of rank_config's num_key_value_heads).
int64_t first_kv_head(const ModelConfig& c, int rank, int size);

// Pipeline parallelism: stage `stage` of `num_stages` runs the contiguous layers [first_layer,
// first_layer + num_layers); the first stage also embeds, the last one also normalizes and
// computes the logits. Between stages the hidden states travel through `comm` (every stage
// takes part in every transfer, in stage order), and the last stage's logits go back to rank 0.
struct PipelineStage {
  int stage = 0;
  int num_stages = 1;
  int64_t first_layer = 0;
  int64_t num_layers = -1;  // -1: all of them
  Communicator* comm = nullptr;  // required when num_stages > 1; not owned
  // Micro-batches (optional; not owned): two-rank groups with the previous stage (this stage is
  // its rank 1) and the next one (rank 0), so that hand-overs involve only the two stages, and
  // the most micro-batches a step is cut into (1: none; the whole step goes stage by stage).
  Communicator* prev = nullptr;
  Communicator* next = nullptr;
  int micro_batches = 1;
  bool enabled() const { return num_stages > 1; }
  bool prev_next_ready() const { return (first() || prev) && (last() || next); }
  bool first() const { return stage == 0; }
  bool last() const { return stage == num_stages - 1; }
};

// The stage's layers: an even split, the first `num_layers % num_stages` stages taking one more.
// Throws InvalidArgument when there are fewer layers than stages.
PipelineStage pipeline_stage(const ModelConfig& c, int stage, int num_stages, Communicator* comm);

}  // namespace cserve
