// The cserve engine: load a model, add requests, step, read outputs.
//
//   cserve::EngineConfig config;
//   config.model = "/path/to/model";
//   cserve::Engine engine(config);
//   engine.add_request("r1", {1, 2, 3}, params);
//   while (engine.has_unfinished_requests())
//     for (auto& out : engine.step()) ...
//
// Either call step() yourself, or start_loop() a background thread and read
// outputs with drain_outputs() when output_fd() becomes readable (an eventfd,
// so asyncio can wait on it without polling). add_request and abort are
// thread-safe; they take effect at the start of the next step.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cserve/engine_config.h"
#include "cserve/error.h"
#include "cserve/request_output.h"
#include "cserve/sampling_params.h"

namespace cserve {

struct EngineStats {
  int64_t num_running = 0;
  int64_t num_waiting = 0;
  double kv_cache_usage = 0;  // fraction of blocks in use
  int64_t prefix_cache_queries = 0;  // tokens looked up
  int64_t prefix_cache_hits = 0;     // tokens found
  int64_t prompt_tokens = 0;         // prompt tokens computed (not from cache)
  int64_t generation_tokens = 0;
  int64_t num_preemptions = 0;
  int64_t num_steps = 0;
  int64_t num_free_blocks = 0;
  // Steps by tokens scheduled: entry k counts steps of t tokens with 2^(k-1) < t <= 2^k
  // (entry 0: t <= 1); `scheduled_tokens` is their sum.
  std::vector<int64_t> steps_by_tokens_log2;
  int64_t scheduled_tokens = 0;
  // Speculative decoding (vLLM's vllm:spec_decode_* counters): drafts verified, their tokens,
  // the accepted ones, and per draft position how many were accepted.
  int64_t spec_decode_num_drafts = 0;
  int64_t spec_decode_num_draft_tokens = 0;
  int64_t spec_decode_num_accepted_tokens = 0;
  std::vector<int64_t> spec_decode_num_accepted_tokens_per_pos;
};

class Engine {
 public:
  // Loads the model and allocates the KV cache. Throws cserve::Error subclasses.
  explicit Engine(const EngineConfig& config);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Validates and queues a request. Throws InvalidArgument for bad parameters,
  // an empty prompt, a prompt at or over max_model_len, or a duplicate id.
  void add_request(const std::string& request_id, const std::vector<int32_t>& prompt_token_ids,
                   const SamplingParams& params, int priority = 0, const std::string& cache_salt = "");
  // Aborts a request if it is known; its blocks are freed on the next step.
  void abort(const std::string& request_id);

  // One scheduling step (schedule, execute, update); returns this step's outputs.
  // Must not be called while the loop thread runs.
  std::vector<RequestOutput> step();
  bool has_unfinished_requests() const;

  void start_loop();
  void stop_loop();
  int output_fd() const;
  std::vector<RequestOutput> drain_outputs();

  // A step that throws ends the requests it touched with FinishReason::Error (their outputs
  // say why); after several failed steps in a row the engine is dead: every request ends with
  // an error and add_request throws EngineDead.
  bool is_dead() const;
  std::string dead_reason() const;
  // Declares the engine dead now (e.g. a tensor-parallel rank exited): a step waiting on the
  // other ranks stops waiting, every request ends with an error, add_request throws EngineDead.
  void kill(const std::string& reason);
  // Stops the loop and, with tensor parallelism, tells the other ranks to return. Idempotent;
  // the destructor calls it.
  void shutdown();

  EngineStats stats() const;
  const ModelInfo& model_info() const;
  // Resets the prefix cache (only free cached blocks are dropped). Returns true on success.
  bool reset_prefix_cache();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Tensor or pipeline parallelism: the life of rank `rank` (1 .. the group's size - 1) of the
// engine started with `config`: loads its shard, then runs each step rank 0 sends until that engine stops.
// Blocks; throws when rank 0 goes silent for tensor_parallel_timeout seconds (CommTimeout).
void run_tensor_parallel_rank(const EngineConfig& config, int rank);

}  // namespace cserve
