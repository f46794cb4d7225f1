// Start-up decisions derived from EngineConfig and the model: dtypes, context
// length, scheduler limits and the size of the KV cache.
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "cserve/engine_config.h"
#include "loader/model_config.h"
#include "sched/scheduler.h"

namespace cserve {

// "auto" follows the checkpoint, except that float32 checkpoints run in bfloat16 (as vLLM).
DType resolve_dtype(const std::string& requested, const ModelConfig& model);
int64_t resolve_max_model_len(const EngineConfig& config, const ModelConfig& model);
SchedulerConfig resolve_scheduler_config(const EngineConfig& config, int64_t max_model_len);

struct KVCachePlan {
  int64_t num_blocks = 0;
  int64_t bytes_per_block = 0;
  const char* source = "";  // which setting decided it
};
// num_gpu_blocks_override, else kv_cache_memory_bytes, else gpu_memory_utilization of the
// memory available now, less the weights, capped at what max_num_seqs full-length
// sequences can use. Throws OutOfMemory when not even one max_model_len sequence fits.
KVCachePlan plan_kv_cache(const EngineConfig& config, const ModelConfig& model, DType kv_dtype,
                          int64_t max_model_len, int64_t weight_bytes);

}  // namespace cserve
