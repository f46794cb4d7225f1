#include "engine/engine_setup.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>

#include "cserve/error.h"

namespace cserve {

namespace {

int64_t available_memory_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (f >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return 4LL << 30;
}

std::string gib(int64_t bytes) {
  std::ostringstream s;
  s.precision(2);
  s << std::fixed << static_cast<double>(bytes) / (1 << 30) << " GiB";
  return s.str();
}

}  // namespace

DType resolve_dtype(const std::string& requested, const ModelConfig& model) {
  if (requested != "auto") return parse_dtype(requested);
  if (model.torch_dtype == "float16") return DType::F16;
  return DType::BF16;  // bfloat16, float32 and unspecified checkpoints
}

int64_t resolve_max_model_len(const EngineConfig& config, const ModelConfig& model) {
  int64_t derived = model.max_position_embeddings;
  if (model.rope_scaling.type == "yarn" || model.rope_scaling.type == "dynamic" || model.rope_scaling.type == "linear")
    if (model.rope_scaling.factor > 1 && model.rope_scaling.original_max_position_embeddings == 0)
      derived = static_cast<int64_t>(static_cast<double>(derived) * model.rope_scaling.factor);
  if (config.max_model_len <= 0) return derived;
  if (config.max_model_len > derived)
    throw InvalidArgument("User-specified max_model_len (" + std::to_string(config.max_model_len) +
                          ") is greater than the derived max_model_len (max_position_embeddings=" +
                          std::to_string(derived) + " in the model's config.json)");
  return config.max_model_len;
}

SchedulerConfig resolve_scheduler_config(const EngineConfig& config, int64_t max_model_len) {
  SchedulerConfig s;
  if (config.max_num_seqs <= 0) throw InvalidArgument("max_num_seqs must be positive");
  s.max_num_seqs = config.max_num_seqs;
  s.max_model_len = max_model_len;
  s.enable_chunked_prefill = config.enable_chunked_prefill;
  s.max_num_batched_tokens = config.max_num_batched_tokens > 0 ? config.max_num_batched_tokens
                             : config.enable_chunked_prefill ? 8192
                                                             : std::max<int64_t>(8192, max_model_len);
  if (!s.enable_chunked_prefill && s.max_num_batched_tokens < max_model_len)
    throw InvalidArgument("max_num_batched_tokens (" + std::to_string(s.max_num_batched_tokens) +
                          ") is smaller than max_model_len (" + std::to_string(max_model_len) +
                          "). This effectively limits the maximum sequence length to max_num_batched_tokens; "
                          "enable chunked prefill or raise max_num_batched_tokens");
  if (config.max_num_partial_prefills < 1 || config.max_long_partial_prefills < 1)
    throw InvalidArgument("max_num_partial_prefills and max_long_partial_prefills must be at least 1");
  if (config.max_long_partial_prefills > config.max_num_partial_prefills)
    throw InvalidArgument("max_long_partial_prefills (" + std::to_string(config.max_long_partial_prefills) +
                          ") must be less than or equal to max_num_partial_prefills (" +
                          std::to_string(config.max_num_partial_prefills) + ")");
  s.max_num_partial_prefills = config.max_num_partial_prefills;
  s.max_long_partial_prefills = config.max_long_partial_prefills;
  s.long_prefill_token_threshold = config.long_prefill_token_threshold;
  if (s.long_prefill_token_threshold == 0 && s.max_num_partial_prefills > 1)
    s.long_prefill_token_threshold = static_cast<int64_t>(static_cast<double>(max_model_len) * 0.04);
  if (config.scheduling_policy == "priority") s.priority_policy = true;
  else if (config.scheduling_policy != "fcfs")
    throw InvalidArgument("scheduling_policy " + config.scheduling_policy + " is not one of fcfs, priority");
  return s;
}

KVCachePlan plan_kv_cache(const EngineConfig& config, const ModelConfig& m, DType kv_dtype, int64_t max_model_len,
                          int64_t weight_bytes, const DeviceMemoryUse* device) {
  KVCachePlan plan;
  if (config.block_size <= 0) throw InvalidArgument("block_size must be positive");
  plan.bytes_per_block = 2 * m.num_hidden_layers * m.num_key_value_heads * m.head_dim * config.block_size *
                         static_cast<int64_t>(dtype_size(kv_dtype));
  const int64_t blocks_per_seq = (max_model_len + config.block_size - 1) / config.block_size;
  if (config.num_gpu_blocks_override > 0) {
    plan.num_blocks = config.num_gpu_blocks_override;
    plan.source = "num_gpu_blocks_override";
    return plan;  // vLLM does not check capacity against max_model_len here either
  }
  int64_t budget;
  if (config.kv_cache_memory_bytes > 0) {
    budget = config.kv_cache_memory_bytes;
    plan.source = "kv_cache_memory_bytes";
  } else {
    if (config.gpu_memory_utilization <= 0 || config.gpu_memory_utilization > 1)
      throw InvalidArgument("gpu_memory_utilization must be in (0, 1], got " +
                            std::to_string(config.gpu_memory_utilization));
    if (device) {
      budget = static_cast<int64_t>(config.gpu_memory_utilization * static_cast<double>(device->total_bytes)) -
               device->used_bytes;
    } else {
      budget = static_cast<int64_t>(config.gpu_memory_utilization * static_cast<double>(available_memory_bytes())) -
               weight_bytes;
      // More blocks than max_num_seqs full-length sequences can hold would never be used at once.
      budget = std::min(budget, blocks_per_seq * config.max_num_seqs * plan.bytes_per_block);
    }
    plan.source = "gpu_memory_utilization";
  }
  plan.num_blocks = budget / plan.bytes_per_block;
  if (plan.num_blocks < blocks_per_seq)
    throw OutOfMemory("To serve at least one request with the model's max seq len (" + std::to_string(max_model_len) +
                      "), " + gib(blocks_per_seq * plan.bytes_per_block) + " KV cache is needed, which is larger than the " +
                      "available KV cache memory (" + gib(std::max<int64_t>(budget, 0)) +
                      "). Try increasing gpu_memory_utilization or kv_cache_memory_bytes, or decreasing max_model_len.");
  return plan;
}

std::vector<int> resolve_cudagraph_sizes(const EngineConfig& config, int max_num_seqs) {
  if (config.enforce_eager) return {};
  std::vector<int> sizes = config.cudagraph_capture_sizes;
  if (sizes.empty()) {
    const int max = config.max_cudagraph_capture_size > 0 ? config.max_cudagraph_capture_size
                                                          : std::min(2 * max_num_seqs, 512);
    for (int s : {1, 2, 4}) sizes.push_back(s);
    for (int s = 8; s < 256; s += 8) sizes.push_back(s);
    for (int s = 256; s <= max; s += 16) sizes.push_back(s);
    sizes.erase(std::remove_if(sizes.begin(), sizes.end(), [max](int s) { return s > max; }), sizes.end());
  }
  for (int s : sizes)
    if (s <= 0) throw InvalidArgument("cudagraph_capture_sizes must be positive, got " + std::to_string(s));
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  const auto first_enough = std::lower_bound(sizes.begin(), sizes.end(), max_num_seqs);
  if (first_enough != sizes.end()) sizes.erase(first_enough + 1, sizes.end());
  return sizes;
}

}  // namespace cserve
