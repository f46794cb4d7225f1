#include "model/tensor_parallel.h"

#include <algorithm>
#include <string>

#include "cserve/error.h"

namespace cserve {

void check_tensor_parallel(const ModelConfig& c, int size) {
  if (size < 1) throw InvalidArgument("tensor_parallel_size must be at least 1, got " + std::to_string(size));
  if (size == 1) return;
  const std::string n = std::to_string(size);
  // OLMo 2's q_norm / k_norm span every head: a rank holds only its heads' part of the sum of squares.
  if (c.qk_norm_full)
    throw NotSupported("tensor parallelism is not supported for " + c.architecture +
                       " (its q/k norms span all heads); use tensor_parallel_size 1 (pipeline parallelism works)");
  if (c.num_attention_heads % size != 0)
    throw InvalidArgument("Total number of attention heads (" + std::to_string(c.num_attention_heads) +
                          ") must be divisible by tensor parallel size (" + n + ").");
  const int64_t kv = c.num_key_value_heads;
  if (kv >= size ? kv % size != 0 : size % kv != 0)
    throw InvalidArgument("Total number of key/value heads (" + std::to_string(kv) +
                          ") must be divisible by tensor parallel size (" + n + "), or the other way round.");
  const std::pair<const char*, int64_t> widths[] = {{"intermediate_size", c.intermediate_size},
                                                    {"moe_intermediate_size", c.moe_intermediate_size},
                                                    {"shared_expert_intermediate_size", c.shared_expert_intermediate_size}};
  for (const auto& [field, width] : widths)
    if (width % size != 0)
      throw InvalidArgument(std::string(field) + " (" + std::to_string(width) +
                            ") must be divisible by tensor parallel size (" + n + ").");
}

ModelConfig rank_config(const ModelConfig& c, int rank, int size) {
  ModelConfig r = c;
  r.num_attention_heads = c.num_attention_heads / size;
  r.num_key_value_heads = c.num_key_value_heads >= size ? c.num_key_value_heads / size : 1;
  r.intermediate_size = c.intermediate_size / size;
  r.moe_intermediate_size = c.moe_intermediate_size / size;  // each expert split as a dense MLP
  r.shared_expert_intermediate_size = c.shared_expert_intermediate_size / size;
  (void)rank;
  return r;
}

int64_t first_kv_head(const ModelConfig& c, int rank, int size) {
  const int64_t kv = c.num_key_value_heads;
  // Fewer KV heads than ranks: ranks in groups of size / kv share one (replicated) head.
  return kv >= size ? rank * (kv / size) : rank / (size / kv);
}

PipelineStage pipeline_stage(const ModelConfig& c, int stage, int num_stages, Communicator* comm) {
  if (num_stages < 1) throw InvalidArgument("pipeline_parallel_size must be at least 1");
  if (c.num_hidden_layers < num_stages)
    throw InvalidArgument("The model has " + std::to_string(c.num_hidden_layers) + " layers, fewer than "
                          "pipeline parallel size (" + std::to_string(num_stages) + ").");
  PipelineStage s;
  s.stage = stage;
  s.num_stages = num_stages;
  s.comm = comm;
  const int64_t per = c.num_hidden_layers / num_stages, extra = c.num_hidden_layers % num_stages;
  s.first_layer = stage * per + std::min<int64_t>(stage, extra);
  s.num_layers = per + (stage < extra ? 1 : 0);
  return s;
}

VocabShard vocab_shard(int64_t vocab_size, int rank, int size) {
  VocabShard s;
  s.padded = (vocab_size + size - 1) / size;
  s.begin = std::min<int64_t>(vocab_size, rank * s.padded);
  s.end = std::min<int64_t>(vocab_size, s.begin + s.padded);
  return s;
}

}  // namespace cserve
