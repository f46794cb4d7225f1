#include "cserve/engine.h"
#include "cserve/grammar.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "backend/backend.h"
#include "engine/engine_setup.h"
#include "engine/group_communicator.h"
#include "engine/model_loading.h"
#include "engine/model_runner.h"
#include "engine/rank_link.h"
#include "kv/kv_cache_manager.h"
#include "loader/gguf.h"
#include "loader/gguf_model.h"
#include "loader/model_config.h"
#include "loader/safetensors.h"
#include "sched/scheduler.h"
#include "util/logging.h"

namespace cserve {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string fixed(double v, int digits) {
  std::ostringstream s;
  s.precision(digits);
  s << std::fixed << v;
  return s.str();
}

// After this many failed steps in a row the error is taken to be sticky (a device fault): the
// engine fails every request and stops taking new ones, as vLLM's dead-engine handling does.
constexpr int kMaxConsecutiveStepFailures = 3;

// A test hook (CSERVE_TEST_FAIL_STEPS): "token:<id>" fails every step that schedules a request
// whose prompt holds that token id; "from_step:<k>" fails every step from the k-th on.
struct StepFailureInjection {
  int64_t token = -1;
  int64_t from_step = -1;

  static StepFailureInjection from_env() {
    StepFailureInjection f;
    const char* v = std::getenv("CSERVE_TEST_FAIL_STEPS");
    if (!v || !*v) return f;
    const std::string spec(v);
    const auto colon = spec.find(':');
    const std::string kind = spec.substr(0, colon);
    const int64_t value = colon == std::string::npos ? -1 : std::atoll(spec.c_str() + colon + 1);
    if (kind == "token") f.token = value;
    else if (kind == "from_step") f.from_step = value;
    else throw InvalidArgument("CSERVE_TEST_FAIL_STEPS must be token:<id> or from_step:<k>, got " + spec);
    log_warning("test hook CSERVE_TEST_FAIL_STEPS=" + spec + ": engine steps will fail on purpose");
    return f;
  }
  void check(const SchedulerOutput& so, int64_t step) const {
    if (from_step >= 0 && step >= from_step) throw Error("injected step failure (CSERVE_TEST_FAIL_STEPS)");
    if (token < 0) return;
    for (const ScheduledRequest& s : so.scheduled) {
      const auto& p = s.request->prompt_token_ids;
      if (std::find(p.begin(), p.end(), static_cast<int32_t>(token)) != p.end())
        throw Error("injected step failure (CSERVE_TEST_FAIL_STEPS)");
    }
  }
};

struct PendingAdd {
  std::string id;
  std::vector<int32_t> prompt;
  SamplingParams params;
  int priority;
  std::string cache_salt;
};

}  // namespace

struct Engine::Impl {
  EngineConfig config;
  ModelConfig model_config;
  ModelInfo info;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<SafetensorsCheckpoint> checkpoint;  // outlives the model: weights may point into it
  std::unique_ptr<GgufFile> gguf;
  // Tensor parallelism: the group's communicator and the step protocol to ranks 1..N-1 (null
  // with one rank). Declared before the runner, which uses them, so they outlive it.
  std::unique_ptr<Communicator> comm;
  std::unique_ptr<RankLink> link;
  std::vector<std::unique_ptr<Communicator>> groups;  // -tp with -pp: this rank's stage and pipeline groups
  std::unique_ptr<ModelRunner> runner;
  std::unique_ptr<KVCacheManager> kv;
  std::unique_ptr<Scheduler> scheduler;

  // Inputs from any thread, applied at the start of a step.
  std::mutex in_mu;
  std::condition_variable in_cv;
  std::vector<PendingAdd> pending_adds;
  std::vector<std::string> pending_aborts;
  std::set<std::string> live_ids;  // ids added and not yet finished

  // Outputs for the loop mode, signalled through an eventfd.
  std::mutex out_mu;
  std::vector<RequestOutput> outputs;
  int event_fd = -1;

  std::mutex stats_mu;
  EngineStats stats;

  std::thread loop;
  std::atomic<bool> stop{false};
  int64_t num_steps = 0;
  std::vector<int64_t> steps_by_tokens_log2 = std::vector<int64_t>(32, 0);  // EngineStats' histogram
  int64_t scheduled_tokens = 0;
  int consecutive_failures = 0;
  std::atomic<bool> dead{false};
  std::string dead_reason;  // under in_mu
  StepFailureInjection inject = StepFailureInjection::from_env();

  explicit Impl(const EngineConfig& c);
  // One step; never throws: a failure ends the requests it touched with FinishReason::Error.
  std::vector<RequestOutput> step();
  std::vector<RequestOutput> apply_inputs();  // adds and aborts; returns their final outputs
  void on_step_failure(const std::string& what, const SchedulerOutput* so, std::vector<RequestOutput>& outs);
  void refresh_stats();
  void count_step_tokens(int64_t tokens) {
    size_t k = 0;
    while (k + 1 < steps_by_tokens_log2.size() && (int64_t{1} << k) < tokens) ++k;
    ++steps_by_tokens_log2[k];
    scheduled_tokens += tokens;
  }
  void run_loop();
};

Engine::Impl::Impl(const EngineConfig& c) : config(c) {
  config.load_progress = nullptr;  // used only while loading, from `c`; not kept
  auto t0 = std::chrono::steady_clock::now();
  const NgramProposer proposer = resolve_speculation(c);  // refuses a bad config before loading
  const int group = parallel_group_size(c);
  if (group > 1) {
    comm = make_group_communicator(c, c.tensor_parallel_group, 0, group, true);
    link = std::make_unique<RankLink>(*comm);
  }
  LoadedModel loaded = load_model(c, 0, comm.get());
  groups = std::move(loaded.groups);
  for (auto& g : loaded.device_groups) groups.push_back(std::move(g));  // destroyed before the backend
  model_config = loaded.config;
  gguf = std::move(loaded.gguf);
  checkpoint = std::move(loaded.checkpoint);
  backend = std::move(loaded.backend);
  auto model = std::move(loaded.model);
  const ModelConfig rank_model = model->config();  // this rank's shapes: its KV heads size the cache
  const DType dtype = loaded.dtype, kv_dtype = loaded.kv_dtype;
  int64_t weight_bytes = loaded.weight_bytes;
  const std::vector<int64_t> eos = loaded.eos_token_ids;
  const bool on_device = loaded.on_device;
  size_t free_at_start = loaded.free_at_start, total_bytes = loaded.total_bytes;
  const int64_t max_model_len = resolve_max_model_len(c, model_config);
  const SchedulerConfig sched_config = resolve_scheduler_config(c, max_model_len);
  // A draft model loads before the KV cache is sized: its weights (in the profiling run's memory
  // on a device) and its cache come out of the same memory settings as the target's.
  std::unique_ptr<DraftProposer> draft;
  ExtraKVCache draft_kv;
  if (c.speculative_method == "draft_model") {
    DraftModel d = load_draft_model(c, *backend, dtype, model_config.vocab_size);
    log_info("Draft model " + c.speculative_model + ": " + d.model->config().architecture + ", " +
             fixed(d.weight_bytes / 1048576.0, 1) + " MiB of weights");
    weight_bytes += d.weight_bytes;
    draft = std::make_unique<DraftProposer>(*backend, std::move(d), c.block_size, kv_dtype);
    draft_kv.bytes_per_block = draft->bytes_per_block();
    draft_kv.num_own_blocks =
        DraftProposer::num_scratch_blocks(c.num_speculative_tokens, c.block_size, sched_config.max_num_seqs);
  }
  // An EAGLE head likewise: its weights and its cache (addressed like a draft model's).
  std::unique_ptr<EagleProposer> eagle;
  if (c.speculative_method == "eagle" || c.speculative_method == "eagle3") {
    eagle = std::make_unique<EagleProposer>(*backend, load_eagle_proposer_head(c, *model, *backend, dtype),
                                            c.num_speculative_tokens, c.block_size, kv_dtype);
    log_info("EAGLE head (" + c.speculative_method + ") " + c.speculative_model + ": " +
             fixed(eagle->weight_bytes() / 1048576.0, 1) + " MiB of weights");
    weight_bytes += static_cast<int64_t>(eagle->weight_bytes());
    draft_kv.bytes_per_block = eagle->bytes_per_block();
    draft_kv.num_own_blocks =
        EagleProposer::num_scratch_blocks(c.num_speculative_tokens, c.block_size, sched_config.max_num_seqs);
  }
  info.load_seconds = seconds_since(t0);

  auto t1 = std::chrono::steady_clock::now();
  // Graphs where the backend has them (the CPU only as a test emulation); none with enforce_eager.
  const std::vector<int> sizes = resolve_cudagraph_sizes(c, sched_config.max_num_seqs);
  // Not with parallel ranks on a device yet: the other ranks run each step eagerly at its real
  // size, while a graph would run rank 0's padded one (collectives of other sizes).
  const bool graphs_possible = backend->graphs_supported() && !(on_device && group > 1);
  const std::vector<int> graph_sizes = graphs_possible ? sizes : std::vector<int>{};
  KVCachePlan plan;
  if (on_device) {
    // A profiling run, as vLLM's: the largest step the scheduler can make, over a KV cache just
    // big enough for it, brings the activation buffers to their peak; the KV cache then gets
    // gpu_memory_utilization of the device less everything in use at that point.
    const int64_t tokens = std::min<int64_t>(sched_config.max_num_batched_tokens, max_model_len);
    const int64_t profile_blocks = (tokens + c.block_size - 1) / c.block_size;
    runner = std::make_unique<ModelRunner>(*backend, std::move(model), profile_blocks, c.block_size, kv_dtype, eos);
    if (link) runner->set_rank_link(link.get());  // the other ranks run the profiling step too
    if (draft) runner->set_draft_proposer(std::move(draft), sched_config.max_num_seqs, tokens);  // profiled with the target
    if (eagle) runner->set_eagle_proposer(std::move(eagle), sched_config.max_num_seqs);
    // Logits rows: one per sequence, and one more per draft token with speculative decoding.
    const int64_t rows = int64_t{sched_config.max_num_seqs} * (1 + proposer.num_speculative_tokens);
    runner->warm_up(tokens, std::min<int64_t>(tokens, rows));
    size_t free_bytes = 0;
    backend->device_memory(free_bytes, total_bytes);
    DeviceMemoryUse use;
    use.total_bytes = static_cast<int64_t>(total_bytes);
    use.used_bytes = static_cast<int64_t>(free_at_start) - static_cast<int64_t>(free_bytes) -
                     static_cast<int64_t>(runner->kv_cache_bytes());
    log_info("Memory profiling: " + fixed(use.used_bytes / 1073741824.0, 2) + " GiB in use of " +
             fixed(use.total_bytes / 1073741824.0, 2) + " GiB after a " + std::to_string(tokens) + "-token forward");
    plan = plan_kv_cache(c, rank_model, kv_dtype, max_model_len, weight_bytes, &use, draft_kv);
  } else {
    plan = plan_kv_cache(c, rank_model, kv_dtype, max_model_len, weight_bytes, nullptr, draft_kv);
    runner = std::make_unique<ModelRunner>(*backend, std::move(model), plan.num_blocks, c.block_size, kv_dtype, eos);
  }
  if (link && !on_device) runner->set_rank_link(link.get());  // the other ranks allocate the same cache now
  // The final cache: the planned blocks, plus the graphs' spare block.
  if (!graph_sizes.empty()) runner->enable_graphs(graph_sizes, max_model_len);
  if (on_device || !graph_sizes.empty()) runner->resize_kv_cache(plan.num_blocks);
  runner->set_ngram_proposer(proposer);
  if (draft)
    runner->set_draft_proposer(std::move(draft), sched_config.max_num_seqs,
                               std::min<int64_t>(sched_config.max_num_batched_tokens, max_model_len));
  if (eagle) runner->set_eagle_proposer(std::move(eagle), sched_config.max_num_seqs);
  kv = std::make_unique<KVCacheManager>(plan.num_blocks, c.block_size, c.enable_prefix_caching,
                                        c.prefix_caching_hash_algo);
  scheduler = std::make_unique<Scheduler>(sched_config, *kv, eos, static_cast<uint64_t>(c.seed));
  info.kv_alloc_seconds = seconds_since(t1);

  auto t2 = std::chrono::steady_clock::now();
  runner->warm_up(std::min<int64_t>(64, max_model_len));
  info.warmup_seconds = seconds_since(t2);
  if (backend->graphs_supported()) {
    if (!graphs_possible) {
      log_info("CUDA graphs: off (not yet with tensor or pipeline parallelism on GPUs)");
    } else if (sizes.empty()) {
      log_info("CUDA graphs: off (enforce_eager)");
    } else {
      auto t3 = std::chrono::steady_clock::now();
      std::string why;
      const int captured = runner->capture_graphs(why);
      info.num_cuda_graphs = captured;
      if (captured > 0)
        log_info("CUDA graphs: captured " + std::to_string(captured) + " decode sizes (" + std::to_string(sizes.front()) +
                 " to " + std::to_string(sizes.back()) + " requests) in " + fixed(seconds_since(t3), 2) + " s");
      else
        log_warning("CUDA graphs: capture failed, running eagerly: " + why);
    }
  }

  event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (event_fd < 0) throw Error("eventfd failed");

  info.architecture = model_config.architecture;
  info.vocab_size = model_config.vocab_size;
  info.max_model_len = max_model_len;
  info.eos_token_ids = eos;
  info.bos_token_id = model_config.bos_token_id;
  info.dtype = dtype_name(dtype);
  info.backend = backend->name();
  info.num_kv_blocks = plan.num_blocks;
  info.block_size = c.block_size;
  info.kv_cache_tokens = plan.num_blocks * c.block_size;
  info.max_concurrency = static_cast<double>(info.kv_cache_tokens) / static_cast<double>(max_model_len);
  info.max_num_seqs = sched_config.max_num_seqs;
  info.speculative_method = proposer.num_speculative_tokens > 0 ? c.speculative_method : "";
  info.num_speculative_tokens = proposer.num_speculative_tokens;
  info.weight_bytes = weight_bytes;
  info.kv_cache_bytes = static_cast<int64_t>(runner->kv_cache_bytes());
  log_info("Model " + info.architecture + " loaded in " + fixed(info.load_seconds, 2) + " s (" +
           fixed(weight_bytes / 1048576.0, 1) + " MiB of " + info.dtype + " weights, backend " + backend->name() + ", " +
           std::to_string(backend->num_threads()) + " threads)");
  log_info("KV cache: " + std::to_string(plan.num_blocks) + " blocks of " + std::to_string(c.block_size) +
           " tokens (" + std::to_string(info.kv_cache_tokens) + " tokens, " + fixed(info.kv_cache_bytes / 1048576.0, 1) +
           " MiB of " + dtype_name(kv_dtype) + ", sized by " + plan.source + ") allocated in " + fixed(info.kv_alloc_seconds, 3) + " s");
  log_info("Maximum concurrency for " + std::to_string(max_model_len) + " tokens per request: " +
           fixed(info.max_concurrency, 2) + "x; warm-up took " + fixed(info.warmup_seconds, 3) + " s");
  refresh_stats();
}

std::vector<RequestOutput> Engine::Impl::apply_inputs() {
  std::vector<PendingAdd> adds;
  std::vector<std::string> aborts;
  {
    std::lock_guard<std::mutex> lk(in_mu);
    adds.swap(pending_adds);
    aborts.swap(pending_aborts);
  }
  std::vector<RequestOutput> finished;
  for (auto& a : adds) {
    try {
      scheduler->add_request(a.id, a.prompt, a.params, a.priority, a.cache_salt);
    } catch (const std::exception& e) {
      // Validated at add_request, so this is an engine fault: the request ends with an error
      // its caller sees, and the other adds still go in.
      RequestOutput o;
      o.request_id = a.id;
      o.finish_reason = FinishReason::Error;
      o.error = e.what();
      o.num_prompt_tokens = static_cast<int64_t>(a.prompt.size());
      for (int i = 0; i < a.params.n; ++i) {
        o.index = i;
        finished.push_back(o);
      }
    }
  }
  for (const auto& id : aborts)
    for (auto& o : scheduler->abort(id)) finished.push_back(std::move(o));
  return finished;
}

void Engine::Impl::refresh_stats() {
  std::lock_guard<std::mutex> lk(stats_mu);
  stats.num_running = scheduler->num_running();
  stats.num_waiting = scheduler->num_waiting();
  stats.kv_cache_usage = kv->usage();
  stats.prefix_cache_queries = kv->prefix_cache_queries();
  stats.prefix_cache_hits = kv->prefix_cache_hits();
  stats.prompt_tokens = scheduler->counters().prompt_tokens;
  stats.generation_tokens = scheduler->counters().generation_tokens;
  stats.num_preemptions = scheduler->counters().num_preemptions;
  stats.num_steps = num_steps;
  stats.num_free_blocks = kv->pool().num_free_blocks();
  stats.steps_by_tokens_log2 = steps_by_tokens_log2;
  stats.scheduled_tokens = scheduled_tokens;
  const SchedulerCounters& sc = scheduler->counters();
  stats.spec_decode_num_drafts = sc.num_drafts;
  stats.spec_decode_num_draft_tokens = sc.num_draft_tokens;
  stats.spec_decode_num_accepted_tokens = sc.num_accepted_tokens;
  stats.spec_decode_num_accepted_tokens_per_pos = sc.num_accepted_tokens_per_pos;
  stats.spec_decode_num_accepted_tokens_per_pos.resize(
      std::max<size_t>(stats.spec_decode_num_accepted_tokens_per_pos.size(), static_cast<size_t>(info.num_speculative_tokens)), 0);
}

std::vector<RequestOutput> Engine::Impl::step() {
  // The step's own outputs only: `outputs` belongs to the consumer (drain_outputs) while the
  // loop thread runs, and taking it here would hold undrained outputs back a step. Adds and
  // aborts come first, so their outputs survive a failure of the rest of the step.
  std::vector<RequestOutput> outs;
  try {
    outs = apply_inputs();
    if (dead.load()) {
      // Adds queued before the engine died.
      for (auto& o : scheduler->fail_all("the engine is dead")) outs.push_back(std::move(o));
    } else if (scheduler->has_unfinished()) {
      const auto t0 = std::chrono::steady_clock::now();
      SchedulerOutput so = scheduler->schedule();
      count_step_tokens(so.num_scheduled_tokens);
      try {
        inject.check(so, num_steps);
        RunnerOutput ro = runner->execute(so);
        for (auto& o : scheduler->update(so, ro)) outs.push_back(std::move(o));
        scheduler->record_step_seconds(so, seconds_since(t0));
        consecutive_failures = 0;
      } catch (const CommTimeout& e) {
        // A tensor-parallel rank is gone: the group cannot run another step.
        consecutive_failures = kMaxConsecutiveStepFailures - 1;
        on_step_failure(e.what(), &so, outs);
      } catch (const std::exception& e) {
        on_step_failure(e.what(), &so, outs);
      }
      ++num_steps;
    }
  } catch (const std::exception& e) {
    on_step_failure(e.what(), nullptr, outs);  // outside execute: no step state to trust
  }
  {
    std::lock_guard<std::mutex> lk(in_mu);
    for (const auto& o : outs)
      if (o.finished() && !scheduler->has_request(o.request_id)) live_ids.erase(o.request_id);
  }
  refresh_stats();
  return outs;
}

void Engine::Impl::on_step_failure(const std::string& what, const SchedulerOutput* so,
                                   std::vector<RequestOutput>& outs) {
  ++consecutive_failures;
  log(LogLevel::Error, "engine step failed: " + what);
  const std::string error = "engine step failed: " + what;
  for (auto& o : so ? scheduler->fail(*so, error) : scheduler->fail_all(error)) outs.push_back(std::move(o));
  if (consecutive_failures < kMaxConsecutiveStepFailures) return;
  dead = true;
  {
    std::lock_guard<std::mutex> lk(in_mu);
    dead_reason = std::to_string(consecutive_failures) + " engine steps failed in a row; the last: " + what;
  }
  log(LogLevel::Error, "the engine is dead: " + dead_reason);
  for (auto& o : scheduler->fail_all("the engine is dead: " + what)) outs.push_back(std::move(o));
}

void Engine::Impl::run_loop() {
  while (!stop.load()) {
    {
      std::unique_lock<std::mutex> lk(in_mu);
      in_cv.wait(lk, [&] {
        return stop.load() || !pending_adds.empty() || !pending_aborts.empty() || scheduler->has_unfinished();
      });
    }
    if (stop.load()) break;
    std::vector<RequestOutput> outs = step();
    if (outs.empty()) continue;
    {
      std::lock_guard<std::mutex> lk(out_mu);
      for (auto& o : outs) outputs.push_back(std::move(o));
    }
    uint64_t one = 1;
    ssize_t n = write(event_fd, &one, sizeof(one));
    (void)n;
  }
}

Engine::Engine(const EngineConfig& config) : impl_(std::make_unique<Impl>(config)) {}

Engine::~Engine() {
  shutdown();
  if (impl_ && impl_->event_fd >= 0) close(impl_->event_fd);
}

void Engine::add_request(const std::string& request_id, const std::vector<int32_t>& prompt,
                         const SamplingParams& params, int priority, const std::string& cache_salt) {
  const ModelInfo& info = impl_->info;
  params.validate(info.vocab_size, impl_->config.max_logprobs);
  if (params.n > info.max_num_seqs)
    throw InvalidArgument("n must be at most max_num_seqs (" + std::to_string(info.max_num_seqs) + "), got " +
                          std::to_string(params.n));
  if (params.min_tokens > 0 && !params.allowed_token_ids.empty()) {
    // Under min_tokens every stop id and EOS is masked: allowed ids that are all of those leave
    // no token to generate.
    auto masked = [&](int32_t t) {
      return std::find(info.eos_token_ids.begin(), info.eos_token_ids.end(), t) != info.eos_token_ids.end() ||
             std::find(params.stop_token_ids.begin(), params.stop_token_ids.end(), t) != params.stop_token_ids.end();
    };
    if (std::all_of(params.allowed_token_ids.begin(), params.allowed_token_ids.end(), masked))
      throw InvalidArgument("allowed_token_ids holds only stop or EOS token ids, which min_tokens masks: "
                            "no token could be generated");
  }
  if (params.grammar && grammar_vocab_size(*params.grammar) != info.vocab_size)
    throw InvalidArgument("The grammar was compiled for a vocabulary of " +
                          std::to_string(grammar_vocab_size(*params.grammar)) + " tokens; the model has " +
                          std::to_string(info.vocab_size));
  if (prompt.empty()) throw InvalidArgument("The prompt cannot be empty");
  for (int32_t t : prompt)
    if (t < 0 || t >= info.vocab_size)
      throw InvalidArgument("Token id " + std::to_string(t) + " is out of vocabulary (vocab_size " +
                            std::to_string(info.vocab_size) + ")");
  const int64_t len = static_cast<int64_t>(prompt.size());
  if (len >= info.max_model_len)
    throw InvalidArgument("This model's maximum context length is " + std::to_string(info.max_model_len) +
                          " tokens. However, your request has " + std::to_string(len) +
                          " input tokens. Please reduce the length of the input.");
  const int64_t blocks = (len + info.block_size) / info.block_size;
  if (blocks > info.num_kv_blocks)
    throw InvalidArgument("The prompt needs " + std::to_string(blocks) + " KV blocks but the cache has only " +
                          std::to_string(info.num_kv_blocks));
  {
    std::lock_guard<std::mutex> lk(impl_->in_mu);
    if (impl_->dead.load()) throw EngineDead("the engine is dead: " + impl_->dead_reason);
    if (!impl_->live_ids.insert(request_id).second)
      throw InvalidArgument("request id " + request_id + " is already in use");
    impl_->pending_adds.push_back(PendingAdd{request_id, prompt, params, priority, cache_salt});
  }
  impl_->in_cv.notify_one();
}

void Engine::abort(const std::string& request_id) {
  {
    std::lock_guard<std::mutex> lk(impl_->in_mu);
    if (!impl_->live_ids.count(request_id)) return;
    impl_->pending_aborts.push_back(request_id);
  }
  impl_->in_cv.notify_one();
}

std::vector<RequestOutput> Engine::step() {
  if (impl_->loop.joinable()) throw Error("step() cannot be called while the engine loop runs");
  return impl_->step();
}

bool Engine::has_unfinished_requests() const {
  std::lock_guard<std::mutex> lk(impl_->in_mu);
  return !impl_->live_ids.empty();
}

void Engine::start_loop() {
  if (impl_->loop.joinable()) return;
  impl_->stop = false;
  impl_->loop = std::thread([this] { impl_->run_loop(); });
}

void Engine::shutdown() {
  stop_loop();
  if (!impl_ || !impl_->link || impl_->dead.load()) return;  // a dead group takes no message
  try {
    impl_->link->send_stop();  // the other ranks return from run_tensor_parallel_rank
  } catch (const std::exception& e) {
    log_warning(std::string("tensor parallelism: the other ranks did not take the stop: ") + e.what());
  }
  impl_->link.reset();
}

void Engine::kill(const std::string& reason) {
  {
    std::lock_guard<std::mutex> lk(impl_->in_mu);
    if (impl_->dead.exchange(true)) return;
    impl_->dead_reason = reason;
  }
  log(LogLevel::Error, "the engine is dead: " + reason);
  if (impl_->comm) impl_->comm->abort(reason);
  for (auto& g : impl_->groups) g->abort(reason);
  impl_->in_cv.notify_all();
}

void Engine::stop_loop() {
  if (!impl_ || !impl_->loop.joinable()) return;
  {
    std::lock_guard<std::mutex> lk(impl_->in_mu);
    impl_->stop = true;
  }
  impl_->in_cv.notify_all();
  impl_->loop.join();
}

int Engine::output_fd() const { return impl_->event_fd; }

std::vector<RequestOutput> Engine::drain_outputs() {
  uint64_t value;
  ssize_t n = read(impl_->event_fd, &value, sizeof(value));  // resets the counter; EAGAIN when already zero
  (void)n;
  std::vector<RequestOutput> outs;
  std::lock_guard<std::mutex> lk(impl_->out_mu);
  outs.swap(impl_->outputs);
  return outs;
}

bool Engine::is_dead() const { return impl_->dead.load(); }

std::string Engine::dead_reason() const {
  std::lock_guard<std::mutex> lk(impl_->in_mu);
  return impl_->dead_reason;
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lk(impl_->stats_mu);
  return impl_->stats;
}

const ModelInfo& Engine::model_info() const { return impl_->info; }

bool Engine::reset_prefix_cache() {
  if (impl_->loop.joinable()) return false;
  return impl_->kv->reset_prefix_cache();
}

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Abort: return "abort";
    case FinishReason::Error: return "error";
    default: return "";
  }
}

}  // namespace cserve
