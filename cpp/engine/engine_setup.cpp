#include "engine/engine_setup.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "cserve/error.h"
#include "engine/kv_cache_memory.h"
#include "util/logging.h"
#include "util/memory.h"

namespace cserve {

namespace {

constexpr int64_t kGiB = int64_t{1} << 30;

// VLLM_CPU_KVCACHE_SPACE, vLLM-CPU's KV cache size in GiB; unset or 0: 0 (not set).
int64_t cpu_kvcache_space_bytes() {
  const char* v = std::getenv("VLLM_CPU_KVCACHE_SPACE");
  if (v == nullptr || *v == '\0') return 0;
  char* end = nullptr;
  const double gib = std::strtod(v, &end);
  if (end == v || *end != '\0' || !(gib >= 0) || gib > 1e6)
    throw InvalidArgument(std::string("VLLM_CPU_KVCACHE_SPACE must be the CPU KV cache size in GiB (0: the default), "
                                      "got '") + v + "'");
  return static_cast<int64_t>(gib * static_cast<double>(kGiB));
}

// What the CPU cache may not leave below it of the memory available at start: 1 GiB, or a
// tenth of what is available where that is less (activations and the rest of the process).
int64_t cpu_reserve_bytes(int64_t available) { return std::min<int64_t>(kGiB, available / 10); }

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
  std::string key = "max_position_embeddings";
  if (model.disabled_sliding_window > 0 && model.disabled_sliding_window < derived) {
    derived = model.disabled_sliding_window;  // vLLM: attending beyond the window was never trained
    key = "sliding_window";
  }
  if (config.max_model_len <= 0) return derived;
  if (config.max_model_len > derived)
    throw InvalidArgument("User-specified max_model_len (" + std::to_string(config.max_model_len) +
                          ") is greater than the derived max_model_len (" + key + "=" + std::to_string(derived) +
                          " in the model's config.json)");
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
  s.speculative_disable_by_batch_size = config.speculative_disable_by_batch_size;
  s.speculative_auto_disable = config.speculative_auto_disable;
  s.speculative_proposals_cost = config.speculative_method == "draft_model";
  s.num_speculative_tokens = config.num_speculative_tokens;
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
                          int64_t weight_bytes, const DeviceMemoryUse* device, const ExtraKVCache& extra) {
  KVCachePlan plan;
  if (config.block_size <= 0) throw InvalidArgument("block_size must be positive");
  const double utilization = config.gpu_memory_utilization;
  if (utilization < 0 || utilization > 1)
    throw InvalidArgument("gpu_memory_utilization must be in (0, 1], got " + std::to_string(utilization));
  plan.bytes_per_block = kv_cache_bytes_per_block(m, kv_dtype, config.block_size) + extra.bytes_per_block;
  const int64_t extra_own_bytes = extra.num_own_blocks * extra.bytes_per_block;
  const int64_t blocks_per_seq = (max_model_len + config.block_size - 1) / config.block_size;
  // What one full-length sequence needs (the extra cache's own blocks included) and what
  // max_num_seqs of them can use: more blocks would never be used at once.
  const int64_t seq_bytes = blocks_per_seq * plan.bytes_per_block + extra_own_bytes;
  const int64_t all_seqs_bytes = blocks_per_seq * plan.bytes_per_block * config.max_num_seqs + extra_own_bytes;
  const int64_t env_bytes = device ? 0 : cpu_kvcache_space_bytes();
  int64_t budget = 0;
  if (config.num_gpu_blocks_override > 0) {
    plan.num_blocks = config.num_gpu_blocks_override;
    plan.source = "num_gpu_blocks_override";  // vLLM does not check capacity against max_model_len here either
  } else if (config.kv_cache_memory_bytes > 0) {
    budget = config.kv_cache_memory_bytes;
    plan.source = "kv_cache_memory_bytes";
  } else if (device) {
    const double fraction = utilization > 0 ? utilization : kDefaultGpuMemoryUtilization;
    budget = static_cast<int64_t>(fraction * static_cast<double>(device->total_bytes)) - device->used_bytes;
    plan.source = "gpu_memory_utilization";
  } else if (env_bytes > 0) {
    budget = env_bytes;
    plan.source = "VLLM_CPU_KVCACHE_SPACE";
  } else if (utilization > 0) {
    budget = static_cast<int64_t>(utilization * static_cast<double>(host_available_memory_bytes())) - weight_bytes;
    budget = std::min(budget, all_seqs_bytes);
    plan.source = "gpu_memory_utilization";
  } else if (all_seqs_bytes <= kDefaultCpuKVCacheBytes) {
    budget = all_seqs_bytes;
    plan.source = "the CPU default (4 GiB), capped at max_num_seqs x max_model_len";
  } else if (seq_bytes <= kDefaultCpuKVCacheBytes) {
    budget = kDefaultCpuKVCacheBytes;
    plan.source = "the CPU default (4 GiB)";
  } else {
    budget = seq_bytes;
    plan.source = "the CPU default, raised to one max_model_len sequence";
    log_warning("The default CPU KV cache (4 GiB) cannot hold one sequence of max_model_len (" +
                std::to_string(max_model_len) + ") tokens: using " + format_gib(seq_bytes) +
                " instead. Set VLLM_CPU_KVCACHE_SPACE (GiB) or --kv-cache-memory-bytes to choose the size, "
                "or lower --max-model-len.");
  }
  if (config.num_gpu_blocks_override <= 0) {
    plan.num_blocks = std::max<int64_t>(budget - extra_own_bytes, 0) / plan.bytes_per_block;
    if (plan.num_blocks < blocks_per_seq)
      throw OutOfMemory("To serve at least one request with the model's max seq len (" + std::to_string(max_model_len) +
                        "), " + format_gib(seq_bytes) + " KV cache is needed, which is larger than the " +
                        "available KV cache memory (" + format_gib(std::max<int64_t>(budget, 0)) + ", sized by " +
                        plan.source + "). " +
                        (device ? "Try increasing gpu_memory_utilization or kv_cache_memory_bytes, or decreasing "
                                  "max_model_len."
                                : "Set VLLM_CPU_KVCACHE_SPACE (GiB) or --kv-cache-memory-bytes to at least that, "
                                  "or lower --max-model-len."));
  }
  if (!device) {
    // The CPU cache is committed at start: it must fit in what is free now, with room to spare.
    const int64_t bytes = plan.num_blocks * plan.bytes_per_block + extra_own_bytes;
    const int64_t available = host_available_memory_bytes();
    if (bytes > available - cpu_reserve_bytes(available))
      throw OutOfMemory("The CPU KV cache (" + format_gib(bytes) + ", sized by " + plan.source +
                        ") does not fit in the memory available (" + format_gib(available) + ", of which " +
                        format_gib(cpu_reserve_bytes(available)) + " stays free for the rest of the server). Set VLLM_CPU_KVCACHE_SPACE (GiB) or "
                        "--kv-cache-memory-bytes to a size that fits, or lower --max-model-len or --max-num-seqs.");
  }
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

namespace cserve {

NgramProposer resolve_speculation(const EngineConfig& config) {
  NgramProposer p;
  if (config.speculative_method.empty()) return p;
  const std::string& method = config.speculative_method;
  const bool eagle = method == "eagle" || method == "eagle3";
  if (method != "ngram" && method != "draft_model" && !eagle)
    throw NotSupported("speculative decoding method '" + method +
                       "' is not supported yet (supported: ngram, draft_model, eagle, eagle3)");
  if (method == "draft_model" && config.speculative_model.empty())
    throw InvalidArgument("speculative decoding method draft_model needs a draft model path");
  if (eagle && config.speculative_model.empty())
    throw InvalidArgument("speculative decoding method " + method + " needs the EAGLE head's directory");
  if (eagle && parallel_group_size(config) > 1)
    throw NotSupported("speculative decoding method " + method +
                       " is not supported yet with tensor or pipeline parallelism");
  if (config.num_speculative_tokens <= 0)
    throw InvalidArgument("num_speculative_tokens must be > 0, got " + std::to_string(config.num_speculative_tokens));
  const bool ngram = config.speculative_method == "ngram";
  if (ngram && (config.prompt_lookup_min < 1 || config.prompt_lookup_max < 1))
    throw InvalidArgument("prompt_lookup_min and prompt_lookup_max must be >= 1");
  if (ngram && config.prompt_lookup_min > config.prompt_lookup_max)
    throw InvalidArgument("prompt_lookup_min=" + std::to_string(config.prompt_lookup_min) + " must be <= prompt_lookup_max=" +
                          std::to_string(config.prompt_lookup_max));
  if (config.speculative_disable_by_batch_size != 0 && config.speculative_disable_by_batch_size < 2)
    throw InvalidArgument("Expect the batch size threshold of disabling speculative decoding is > 1, but got "
                          "disable_by_batch_size=" + std::to_string(config.speculative_disable_by_batch_size));
  p.num_speculative_tokens = config.num_speculative_tokens;
  if (config.speculative_method == "draft_model" || eagle) return p;  // the draft model / head proposes
  p.min_n = config.prompt_lookup_min;
  p.max_n = config.prompt_lookup_max;
  return p;
}

}  // namespace cserve
