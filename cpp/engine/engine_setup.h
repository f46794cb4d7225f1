// Start-up decisions derived from EngineConfig and the model: dtypes, context
// length, scheduler limits and the size of the KV cache.
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "cserve/engine_config.h"
#include "engine/ngram_proposer.h"
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
// What a profiling run found on a device backend: the device's total memory and what this
// engine's weights and activations use of it (everything of its own but the KV cache).
struct DeviceMemoryUse {
  int64_t total_bytes = 0;
  int64_t used_bytes = 0;
};
// A second KV cache addressed by the target's block tables (a draft model's): its bytes per
// block, which every block of the plan adds, and the blocks of its own beyond the plan's.
struct ExtraKVCache {
  int64_t bytes_per_block = 0;
  int64_t num_own_blocks = 0;
};
// The CPU KV cache when nothing sets its size: vLLM-CPU's default for VLLM_CPU_KVCACHE_SPACE.
constexpr int64_t kDefaultCpuKVCacheBytes = int64_t{4} << 30;
// gpu_memory_utilization on a device when it is not set (EngineConfig's 0).
constexpr double kDefaultGpuMemoryUtilization = 0.9;
// The first that is set decides:
// 1. num_gpu_blocks_override: that many blocks;
// 2. kv_cache_memory_bytes: that many bytes;
// 3. on a device (device != nullptr), gpu_memory_utilization (0: 0.9) as vLLM means it: that
//    fraction of the device's total memory, less what the profiling run saw in use;
// on the CPU:
// 3. VLLM_CPU_KVCACHE_SPACE (vLLM-CPU's variable, GiB; 0 or unset: not set);
// 4. gpu_memory_utilization, when set: that fraction of the host memory available now, less
//    the weights, capped at what max_num_seqs full-length sequences can use;
// 5. the default: 4 GiB (vLLM-CPU's), capped at what max_num_seqs full-length sequences can
//    use, raised to one full-length sequence where 4 GiB does not hold one (with a warning).
// With `extra` (a draft model's cache), each block costs both caches' bytes (bytes_per_block is
// the sum) and the extra cache's own blocks come out of the budget first: the settings above
// bound both caches together, as vLLM's bound every layer of the target and the draft;
// weight_bytes is then the target's and the draft's weights.
// Throws OutOfMemory when not even one max_model_len sequence fits (except with
// num_gpu_blocks_override), and, on the CPU, when the cache does not fit in the host memory
// available now less a reserve (1 GiB, or a tenth of it): the CPU cache is committed at start.
KVCachePlan plan_kv_cache(const EngineConfig& config, const ModelConfig& model, DType kv_dtype,
                          int64_t max_model_len, int64_t weight_bytes, const DeviceMemoryUse* device = nullptr,
                          const ExtraKVCache& extra = {});

// The n-gram proposer of speculative_method "ngram" (num_speculative_tokens 0: speculation off);
// for "draft_model", "eagle" and "eagle3" only its num_speculative_tokens (the draft model or the
// EAGLE head proposes).
// Throws NotSupported for another method, InvalidArgument for values vLLM refuses too.
NgramProposer resolve_speculation(const EngineConfig& config);

// The CUDA graph sizes a device engine captures: none with enforce_eager; else
// cudagraph_capture_sizes, or vLLM's default list ([1, 2, 4], multiples of 8 below 256, of 16
// from 256) up to max_cudagraph_capture_size (0: min(2 * max_num_seqs, 512)). Sizes past the
// first that holds max_num_seqs requests are dropped: no decode step is larger.
std::vector<int> resolve_cudagraph_sizes(const EngineConfig& config, int max_num_seqs);

}  // namespace cserve
