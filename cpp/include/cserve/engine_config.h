// Everything the engine needs to start, with vLLM's names and defaults.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace cserve {

struct EngineConfig {
  std::string model;                 // a directory with config.json and safetensors
  std::string dtype = "auto";        // auto, float32, bfloat16, float16 (float, half)
  std::string load_format = "auto";  // auto, safetensors, dummy
  // vLLM's --quantization: "" (read from the checkpoint), awq, awq_marlin, gptq, gptq_marlin,
  // compressed-tensors, fp8 (also online, of a float checkpoint), gguf
  std::string quantization;
  int64_t max_model_len = 0;         // 0: from config.json
  int64_t seed = 0;
  // KV cache
  int block_size = 16;
  bool enable_prefix_caching = true;
  std::string prefix_caching_hash_algo = "sha256";  // sha256, sha256_cbor, xxhash, xxhash_cbor
  // 0: unset (0.9 on a GPU; on the CPU the KV cache then follows VLLM_CPU_KVCACHE_SPACE or its
  // 4 GiB default); set on the CPU: the fraction of available RAM, after weights, for the KV cache.
  double gpu_memory_utilization = 0;
  int64_t kv_cache_memory_bytes = 0;    // 0: unset
  int64_t num_gpu_blocks_override = 0;  // 0: unset
  std::string kv_cache_dtype = "auto";  // auto or the compute dtype
  // Scheduler
  int max_num_seqs = 256;
  int64_t max_num_batched_tokens = 0;  // 0: max(8192, max_model_len) without chunked prefill, else 8192
  bool enable_chunked_prefill = true;
  int64_t long_prefill_token_threshold = 0;  // 0: 4% of max_model_len when partial prefills > 1
  int max_num_partial_prefills = 1;
  int max_long_partial_prefills = 1;
  std::string scheduling_policy = "fcfs";  // fcfs, priority
  int max_logprobs = 20;  // -1: no cap
  bool disable_sliding_window = false;
  // vLLM's --hf-overrides: a JSON object merged into config.json ("": none), and
  // --hf-config-path: the directory whose config.json to read instead of the model's ("").
  std::string hf_overrides;
  std::string hf_config_path;
  // Runtime
  std::string device = "auto";  // auto (CUDA when a GPU and the CUDA backend are there), cpu, cuda, cuda:N
  // CUDA graphs for decode steps (device backends): captured at start for each size, a step of
  // B decode tokens is padded to the nearest size. Empty: vLLM's default sizes up to
  // max_cudagraph_capture_size (0: min(2 * max_num_seqs, 512)). enforce_eager: none.
  bool enforce_eager = false;
  std::vector<int> cudagraph_capture_sizes;
  int max_cudagraph_capture_size = 0;
  int num_threads = 0;  // 0: all cores (CPU backend); per rank under tensor parallelism
  // Tensor parallelism: the model split across tensor_parallel_size ranks, one process each
  // (on CUDA, rank r on GPU r mod the visible GPUs). The engine is rank 0; each other rank is a process that calls
  // run_tensor_parallel_rank(config, rank) with the same config. They meet in a group named
  // tensor_parallel_group (unique per engine), as tensor_parallel_store says; a rank that does
  // not answer within tensor_parallel_timeout seconds fails the step (and, repeated, the engine).
  int tensor_parallel_size = 1;
  // Pipeline parallelism: contiguous layer ranges on pipeline_parallel_size ranks (processes,
  // started as for tensor parallelism; with tensor parallelism, tp ranks per stage). A step of
  // enough tokens (prefill) is cut into up to pipeline_micro_batches micro-batches of whole
  // sequences that flow through the stages so that they overlap (0: twice the stages; 1: none).
  int pipeline_parallel_size = 1;
  int pipeline_micro_batches = 0;
  std::string tensor_parallel_group;
  // How the ranks meet. Empty: shared memory on one host. "host:port": gloo over TCP (ranks on
  // one or several hosts; tensor_parallel_group keeps engines apart), rank 0's process hosts the
  // bootstrap store there.
  std::string tensor_parallel_store;
  double tensor_parallel_timeout = 60.0;
  // On GPUs: NCCL for every all-reduce, never the custom all-reduce over CUDA IPC buffers.
  bool disable_custom_all_reduce = false;
  // Speculative decoding (vLLM's --speculative-config): "" (off), "ngram" (prompt lookup: up to
  // num_speculative_tokens drafted after the longest recurring n-gram of prompt_lookup_min to
  // prompt_lookup_max tokens), "draft_model" (speculative_model, a smaller model of the same
  // vocabulary, drafts them greedily) or "eagle" / "eagle3" (speculative_model, an EAGLE-1 /
  // EAGLE-3 head over the target's hidden states, drafts them greedily); the drafts are verified
  // in one forward pass.
  std::string speculative_method;
  std::string speculative_model;  // a config.json directory or a .gguf file (an EAGLE head: a directory)
  // The draft's quantization (vLLM's speculative_config "quantization"; "" unset): checked
  // against the draft checkpoint as --quantization is against the target's ("fp8" quantizes a
  // float draft at load). The draft computes in the target's dtype, with its own weight formats.
  std::string speculative_quantization;
  int num_speculative_tokens = 0;
  int prompt_lookup_min = 0;
  int prompt_lookup_max = 0;
  // vLLM's disable_by_batch_size: no drafts while more requests than this run (0: no limit).
  int speculative_disable_by_batch_size = 0;
  // Drafts are verified only while the measured step times and acceptance say they raise the
  // output tokens per second (false: always, as vLLM).
  bool speculative_auto_disable = true;
  // Optional: told (done, total) as the weights load, for a progress bar.
  std::function<void(int64_t done, int64_t total)> load_progress;
};

// Ranks of the engine's parallel group: tensor_parallel_size x pipeline_parallel_size.
inline int parallel_group_size(const EngineConfig& c) {
  return (c.tensor_parallel_size > 1 ? c.tensor_parallel_size : 1) *
         (c.pipeline_parallel_size > 1 ? c.pipeline_parallel_size : 1);
}

// Facts about the loaded model and cache that front ends need.
struct ModelInfo {
  std::string architecture;
  int64_t vocab_size = 0;
  int64_t max_model_len = 0;
  std::vector<int64_t> eos_token_ids;
  int64_t bos_token_id = -1;
  std::string dtype;
  std::string backend;  // e.g. "cpu (avx512_bf16)", "cuda:0 (NVIDIA H100 80GB HBM3, sm_90)"
  int num_cuda_graphs = 0;  // decode sizes captured as CUDA graphs (0: eager)
  int64_t num_kv_blocks = 0;
  int block_size = 0;
  int64_t kv_cache_tokens = 0;
  double max_concurrency = 0;  // kv_cache_tokens / max_model_len
  int max_num_seqs = 0;        // as resolved: the most sequences (all n completions count) per step
  std::string speculative_method;  // "" (no speculative decoding), "ngram", "draft_model", "eagle" or "eagle3"
  int num_speculative_tokens = 0;
  double load_seconds = 0, kv_alloc_seconds = 0, warmup_seconds = 0;
  // Both count a draft model's (speculative_method "draft_model") with the target's.
  int64_t weight_bytes = 0, kv_cache_bytes = 0;
};

}  // namespace cserve
