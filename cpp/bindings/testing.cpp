// cserve._core.testing: the block pool, the KV cache manager with the scheduler,
// and the CPU kernels, exposed so pytest can test them against references.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <tuple>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/qgemm.h"
#include "core/quant.h"
#include "cserve/engine.h"
#include "engine/engine_setup.h"
#include "engine/ngram_proposer.h"
#include "kv/block_pool.h"
#include "kv/kv_cache_manager.h"
#include "loader/gguf.h"
#include "loader/gguf_model.h"
#include "loader/safetensors.h"
#include "model/llama_model.h"
#include "model/model_weights.h"
#include "sample/sampler.h"
#include "sched/scheduler.h"
#include "sched/speculation_governor.h"
#include "util/thread_pool.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using Array = nb::ndarray<float, nb::numpy, nb::c_contig, nb::device::cpu>;
using ArrayIn = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;

Array make_array(std::vector<int64_t> shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  float* data = new float[n]();
  nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  std::vector<size_t> s(shape.begin(), shape.end());
  return Array(data, s.size(), s.data(), owner);
}

cserve::Tensor view(const ArrayIn& a) {
  cserve::Tensor t{const_cast<float*>(a.data()), cserve::DType::F32, {}};
  for (size_t i = 0; i < a.ndim(); ++i) t.shape.push_back(static_cast<int64_t>(a.shape(i)));
  return t;
}

// A scheduler over a real KV cache manager, driven step by step with chosen tokens.
class SchedulerHarness {
 public:
  SchedulerHarness(const cserve::SchedulerConfig& config, int64_t num_blocks, int block_size, bool prefix_caching,
                   const std::string& hash_algo, std::vector<int64_t> eos)
      : kv_(num_blocks, block_size, prefix_caching, hash_algo), sched_(config, kv_, std::move(eos), 0) {}
  SchedulerHarness(const SchedulerHarness&) = delete;
  SchedulerHarness& operator=(const SchedulerHarness&) = delete;

  void add_request(const std::string& id, const std::vector<int32_t>& prompt, const cserve::SamplingParams& p,
                   int priority) {
    sched_.add_request(id, prompt, p, priority, "");
  }
  // [(request id, start, num_new_tokens, sample, block ids)]
  std::vector<std::tuple<std::string, int64_t, int64_t, bool, std::vector<int32_t>>> schedule() {
    last_ = sched_.schedule();
    propose_drafts_ = last_.propose_drafts;
    num_finished_ids_ = static_cast<int64_t>(last_.finished_req_ids.size());
    std::vector<std::tuple<std::string, int64_t, int64_t, bool, std::vector<int32_t>>> out;
    for (const auto& s : last_.scheduled)
      out.emplace_back(name(*s.request), s.start, s.num_new_tokens, s.sample, *s.block_ids);
    return out;
  }
  // Tests name a completion "<id>" (n = 1) or "<id>#<index>"; the scheduler's own ids are opaque.
  static std::string name(const cserve::Request& r) {
    return r.params.n == 1 ? r.external_id : r.external_id + "#" + std::to_string(r.index);
  }
  std::vector<std::pair<int32_t, int32_t>> block_copies() const { return last_.block_copies; }
  // Completes the last scheduled step; `tokens` gives the sampled token per completion name.
  std::vector<cserve::RequestOutput> update(const std::map<std::string, int32_t>& tokens) {
    std::map<std::string, std::vector<int32_t>> many;
    for (const auto& [id, t] : tokens) many[id] = {t};
    return update_speculative(many, {});
  }
  // The same with several tokens per completion (accepted drafts, then the target's own) and
  // the draft tokens each proposes for its next step; step_seconds > 0: the step took that long
  // (for the speculation governor).
  std::vector<cserve::RequestOutput> update_speculative(const std::map<std::string, std::vector<int32_t>>& tokens,
                                                        const std::map<std::string, std::vector<int32_t>>& drafts,
                                                        double step_seconds = 0) {
    cserve::RunnerOutput r;
    for (const auto& s : last_.scheduled) {
      auto it = tokens.find(name(*s.request));
      r.sampled_token_ids.push_back(!s.sample ? std::vector<int32_t>{}
                                    : it == tokens.end() ? std::vector<int32_t>{0} : it->second);
      auto d = drafts.find(name(*s.request));
      r.draft_token_ids.push_back(d == drafts.end() ? std::vector<int32_t>{} : d->second);
    }
    r.logprobs.resize(last_.scheduled.size());
    r.prompt_logprobs.resize(last_.scheduled.size());
    auto outs = sched_.update(last_, r);
    if (step_seconds > 0) sched_.record_step_seconds(last_, step_seconds);
    last_ = cserve::SchedulerOutput{};
    return outs;
  }
  std::vector<cserve::RequestOutput> abort(const std::string& id) { return sched_.abort(id); }
  // The draft tokens each completion of the last schedule() verifies.
  std::map<std::string, std::vector<int32_t>> scheduled_drafts() const {
    std::map<std::string, std::vector<int32_t>> out;
    for (const auto& s : last_.scheduled) out[name(*s.request)] = s.draft_token_ids;
    return out;
  }
  // (drafts, draft tokens, accepted tokens, accepted per position)
  std::tuple<int64_t, int64_t, int64_t, std::vector<int64_t>> spec_counters() const {
    const auto& c = sched_.counters();
    return {c.num_drafts, c.num_draft_tokens, c.num_accepted_tokens, c.num_accepted_tokens_per_pos};
  }
  int64_t num_running() const { return sched_.num_running(); }
  int64_t num_waiting() const { return sched_.num_waiting(); }
  int64_t num_free_blocks() const { return kv_.pool().num_free_blocks(); }
  int64_t num_preemptions() const { return sched_.counters().num_preemptions; }
  // The last schedule()'s SchedulerOutput::propose_drafts and how many finished_req_ids it had.
  bool propose_drafts() const { return propose_drafts_; }
  int64_t num_finished_ids() const { return num_finished_ids_; }
  int64_t prefix_cache_queries() const { return kv_.prefix_cache_queries(); }
  int64_t prefix_cache_hits() const { return kv_.prefix_cache_hits(); }
  bool has_unfinished() const { return sched_.has_unfinished(); }

 private:
  cserve::KVCacheManager kv_;
  cserve::Scheduler sched_;
  cserve::SchedulerOutput last_;
  bool propose_drafts_ = true;
  int64_t num_finished_ids_ = 0;
};

cserve::DType dtype_of(const std::string& name) { return cserve::parse_dtype(name); }

}  // namespace

void bind_testing_tp(nb::module_& m);
void bind_testing_eagle(nb::module_& m);

void bind_testing(nb::module_& m) {
  bind_testing_tp(m);
  bind_testing_eagle(m);
  nb::class_<cserve::BlockPool>(m, "BlockPool")
      .def(nb::init<int64_t>(), "num_blocks"_a)
      .def_prop_ro("num_free_blocks", &cserve::BlockPool::num_free_blocks)
      .def_prop_ro("usage", &cserve::BlockPool::usage)
      .def("allocate", &cserve::BlockPool::allocate, "n"_a)
      .def("touch", &cserve::BlockPool::touch, "block_ids"_a)
      .def("release", &cserve::BlockPool::release, "block_ids"_a)
      .def("lookup", [](const cserve::BlockPool& p, nb::bytes h) { return p.lookup(std::string(h.c_str(), h.size())); })
      .def("set_cached", [](cserve::BlockPool& p, int32_t id, nb::bytes h) { p.set_cached(id, std::string(h.c_str(), h.size())); })
      .def("ref_count", &cserve::BlockPool::ref_count)
      .def("reset_prefix_cache", &cserve::BlockPool::reset_prefix_cache);

  m.def("block_hash", [](const std::string& algo, nb::bytes parent, const std::vector<int32_t>& tokens,
                         const std::string& extra) {
    cserve::BlockHasher h(algo);
    auto out = h.hash(std::string(parent.c_str(), parent.size()), tokens.data(), tokens.size(), extra);
    return nb::bytes(out.data(), out.size());
  });

  nb::class_<cserve::SchedulerConfig>(m, "SchedulerConfig")
      .def(nb::init<>())
      .def_rw("max_num_seqs", &cserve::SchedulerConfig::max_num_seqs)
      .def_rw("max_num_batched_tokens", &cserve::SchedulerConfig::max_num_batched_tokens)
      .def_rw("max_model_len", &cserve::SchedulerConfig::max_model_len)
      .def_rw("enable_chunked_prefill", &cserve::SchedulerConfig::enable_chunked_prefill)
      .def_rw("long_prefill_token_threshold", &cserve::SchedulerConfig::long_prefill_token_threshold)
      .def_rw("max_num_partial_prefills", &cserve::SchedulerConfig::max_num_partial_prefills)
      .def_rw("max_long_partial_prefills", &cserve::SchedulerConfig::max_long_partial_prefills)
      .def_rw("priority_policy", &cserve::SchedulerConfig::priority_policy)
      .def_rw("speculative_disable_by_batch_size", &cserve::SchedulerConfig::speculative_disable_by_batch_size)
      .def_rw("speculative_auto_disable", &cserve::SchedulerConfig::speculative_auto_disable)
      .def_rw("speculative_proposals_cost", &cserve::SchedulerConfig::speculative_proposals_cost)
      .def_rw("num_speculative_tokens", &cserve::SchedulerConfig::num_speculative_tokens);

  // The speculation governor fed synthetic step times and acceptance; a candidate is
  // (num_drafts, its accepted, its trials).
  nb::class_<cserve::SpeculationGovernor>(m, "SpeculationGovernor")
      .def("__init__", [](cserve::SpeculationGovernor* g, bool automatic, int disable_by_batch_size, int64_t expiry_steps,
                          bool proposals_cost) {
        cserve::SpeculationGovernorConfig c;
        c.automatic = automatic;
        c.disable_by_batch_size = disable_by_batch_size;
        c.expiry_steps = expiry_steps;
        c.proposals_cost = proposals_cost;
        new (g) cserve::SpeculationGovernor(c);
      }, "automatic"_a = true, "disable_by_batch_size"_a = 0, "expiry_steps"_a = 256, "proposals_cost"_a = false)
      .def("plan", [](const cserve::SpeculationGovernor& g, int64_t num_running,
                      const std::vector<std::tuple<int64_t, int64_t, int64_t>>& candidates) {
        std::vector<cserve::DraftCandidate> c;
        for (const auto& [d, accepted, trials] : candidates) c.push_back({d, {accepted, trials}});
        return g.plan(num_running, c);
      }, "num_running"_a, "candidates"_a)
      .def("record_step", &cserve::SpeculationGovernor::record_step, "num_tokens"_a, "seconds"_a,
           "speculative"_a = false)
      .def("record_draft", &cserve::SpeculationGovernor::record_draft, "num_drafts"_a, "num_accepted"_a)
      .def("acceptance_rate", [](const cserve::SpeculationGovernor& g, int64_t accepted, int64_t trials) {
        return g.acceptance_rate({accepted, trials});
      }, "accepted"_a = 0, "trials"_a = 0)
      .def("step_seconds", &cserve::SpeculationGovernor::step_seconds, "num_tokens"_a);

  m.def("ngram_propose", [](const std::vector<int32_t>& tokens, int k, int min_n, int max_n) {
    return cserve::NgramProposer{k, min_n, max_n}.propose(tokens);
  }, "tokens"_a, "num_speculative_tokens"_a, "prompt_lookup_min"_a, "prompt_lookup_max"_a);

  nb::class_<SchedulerHarness>(m, "SchedulerHarness")
      .def(nb::init<const cserve::SchedulerConfig&, int64_t, int, bool, const std::string&, std::vector<int64_t>>(),
           "config"_a, "num_blocks"_a, "block_size"_a = 16, "enable_prefix_caching"_a = true,
           "hash_algo"_a = "sha256", "eos_token_ids"_a = std::vector<int64_t>{})
      .def("add_request", &SchedulerHarness::add_request, "request_id"_a, "prompt"_a, "params"_a, "priority"_a = 0)
      .def("schedule", &SchedulerHarness::schedule)
      .def("block_copies", &SchedulerHarness::block_copies)
      .def("update", &SchedulerHarness::update, "tokens"_a = std::map<std::string, int32_t>{})
      .def("update_speculative", &SchedulerHarness::update_speculative, "tokens"_a, "drafts"_a, "step_seconds"_a = 0.0)
      .def("scheduled_drafts", &SchedulerHarness::scheduled_drafts)
      .def_prop_ro("spec_counters", &SchedulerHarness::spec_counters)
      .def("abort", &SchedulerHarness::abort)
      .def_prop_ro("num_running", &SchedulerHarness::num_running)
      .def_prop_ro("num_waiting", &SchedulerHarness::num_waiting)
      .def_prop_ro("num_free_blocks", &SchedulerHarness::num_free_blocks)
      .def_prop_ro("num_preemptions", &SchedulerHarness::num_preemptions)
      .def_prop_ro("propose_drafts", &SchedulerHarness::propose_drafts)
      .def_prop_ro("num_finished_ids", &SchedulerHarness::num_finished_ids)
      .def_prop_ro("prefix_cache_queries", &SchedulerHarness::prefix_cache_queries)
      .def_prop_ro("prefix_cache_hits", &SchedulerHarness::prefix_cache_hits)
      .def("has_unfinished", &SchedulerHarness::has_unfinished);

  // What the engine does with a model's files before it plans the KV cache: the config, the
  // headers, every tensor checked and packed on a one-thread CPU backend, the model built.
  m.def("load_model", [](const std::string& path) {
    std::unique_ptr<cserve::GgufFile> gguf;
    std::unique_ptr<cserve::SafetensorsCheckpoint> ckpt;
    cserve::ModelConfig config;
    if (cserve::is_gguf_path(path)) {
      gguf = std::make_unique<cserve::GgufFile>(path);
      config = cserve::gguf_model_config(*gguf);
    } else {
      config = cserve::load_model_config(path);
      ckpt = std::make_unique<cserve::SafetensorsCheckpoint>(path);
    }
    std::unique_ptr<cserve::Backend> backend = cserve::make_cpu_backend(1);
    cserve::ModelWeights w = cserve::load_weights(config, ckpt.get(), cserve::DType::F32, *backend, 0, {}, gguf.get());
    const size_t bytes = w.total_bytes;
    cserve::LlamaModel model(config, *backend, std::move(w));
    return bytes;
  }, "path"_a, "Loads a model directory or .gguf file as the engine does (no KV cache); returns the weight bytes.");

  m.def("isa", [] { return std::string(cserve::cpu::isa_name(cserve::cpu::cpu_isa())); });
  m.def("qgemm_kernel", [] { return std::string(cserve::cpu::qgemm_kernel_name()); });
  m.def("cpu_has_avx_vnni", [] { return cserve::cpu::cpu_detects_avx_vnni(); },
        "Whether the CPU has AVX-VNNI, whatever CSERVE_ISA says.");
  m.def("cpu_has_amx", [] { return cserve::cpu::cpu_detects_amx(); }, "Whether the CPU has AMX-BF16, whatever CSERVE_ISA says.");
  m.def("amx_in_use", [] { return cserve::cpu::cpu_has_amx(); }, "Whether the GEMMs use AMX tiles in this process.");
  m.def("round_to_dtype", [](ArrayIn x, const std::string& dtype) {
    const cserve::DType t = cserve::parse_kv_cache_dtype(dtype);
    const size_t n = x.size();
    std::vector<char> stored(n * cserve::dtype_size(t));
    cserve::convert_from_f32(x.data(), stored.data(), t, n);
    Array out = make_array({n});
    cserve::convert_to_f32(stored.data(), t, out.data(), n);
    return out;
  }, "x"_a, "dtype"_a, "float32 -> dtype -> float32 through the core conversions (fp8 included).");
  m.def("cudagraph_sizes", [](const cserve::EngineConfig& c) { return cserve::resolve_cudagraph_sizes(c, c.max_num_seqs); },
        "config"_a);
  m.def("kv_cache_plan", [](const cserve::EngineConfig& c, int64_t num_layers, int64_t num_kv_heads, int64_t head_dim,
                            const std::string& kv_dtype, int64_t max_model_len, int64_t weight_bytes) {
    cserve::ModelConfig model;
    model.num_hidden_layers = num_layers;
    model.num_key_value_heads = num_kv_heads;
    model.head_dim = head_dim;
    auto plan = cserve::plan_kv_cache(c, model, cserve::parse_dtype(kv_dtype), max_model_len, weight_bytes);
    return std::make_tuple(plan.num_blocks, plan.bytes_per_block, std::string(plan.source));
  }, "config"_a, "num_layers"_a, "num_kv_heads"_a, "head_dim"_a, "kv_dtype"_a, "max_model_len"_a, "weight_bytes"_a = 0,
        "The CPU KV cache plan (num_blocks, bytes_per_block, source) for a model of this shape.");

  m.def("parallel_walk", [](int64_t n, int64_t grain, int num_threads) {
    // Every chunk as (thread, begin, end, descending), each thread's in the order it ran them.
    std::mutex mu;
    std::map<std::thread::id, int> ids;
    std::vector<std::tuple<int, int64_t, int64_t, bool>> chunks;
    cserve::ThreadPool pool(num_threads);
    pool.parallel_walk(n, grain, [&](int64_t begin, int64_t end, bool descending) {
      std::lock_guard<std::mutex> lk(mu);
      const int id = ids.emplace(std::this_thread::get_id(), static_cast<int>(ids.size())).first->second;
      chunks.emplace_back(id, begin, end, descending);
    });
    return chunks;
  }, "n"_a, "grain"_a, "num_threads"_a);

  m.def("gemm", [](ArrayIn w, ArrayIn x, const std::string& dtype, std::optional<ArrayIn> bias, int num_threads) {
    std::vector<cserve::Tensor> biases;
    if (bias) biases.push_back(view(*bias));
    cserve::cpu::PackedMatrix p = cserve::cpu::pack_matrix({view(w)}, biases, dtype_of(dtype));
    int64_t m_rows = static_cast<int64_t>(x.shape(0)), n = static_cast<int64_t>(w.shape(0));
    Array y = make_array({m_rows, n});
    cserve::ThreadPool pool(num_threads);
    cserve::cpu::gemm(p, x.data(), m_rows, static_cast<int64_t>(x.shape(1)), y.data(), n, false, pool);
    return y;
  }, "w"_a, "x"_a, "dtype"_a, "bias"_a.none() = nb::none(), "num_threads"_a = 2);

  // A backend's gated MLP over float weights packed as `dtype`: (out, whether the gate_up scratch
  // was left untouched, whether the activation's was: what the backend fused).
  m.def("backend_mlp", [](const std::string& device, ArrayIn w_gate_up, ArrayIn w_down, ArrayIn x,
                          const std::string& dtype, std::optional<ArrayIn> bias, std::optional<ArrayIn> down_bias,
                          const std::string& act) {
    if (act != "silu" && act != "gelu_tanh") throw cserve::InvalidArgument("act: silu or gelu_tanh");
    std::unique_ptr<cserve::Backend> backend = cserve::make_backend(device, 2);
    auto pack = [&](ArrayIn w, const std::optional<ArrayIn>& b) {
      std::vector<cserve::Tensor> biases;
      if (b) biases.push_back(view(*b));
      return backend->pack_linear({view(w)}, biases, dtype_of(dtype));
    };
    std::unique_ptr<cserve::LinearWeight> gate_up = pack(w_gate_up, bias), down = pack(w_down, down_bias);
    const int64_t m_rows = static_cast<int64_t>(x.shape(0)), k = static_cast<int64_t>(x.shape(1));
    const int64_t n = gate_up->n(), n_out = down->n();
    auto buffer = [&](int64_t cols, float fill) {
      cserve::Buffer b = backend->allocate(static_cast<size_t>(m_rows * cols) * 4);
      const std::vector<float> host(static_cast<size_t>(m_rows * cols), fill);
      backend->upload(b.data(), host.data(), b.size());
      return b;
    };
    auto untouched = [&](const cserve::Buffer& b, float fill) {
      std::vector<float> host(b.size() / 4);
      backend->download(host.data(), b.data(), b.size());
      return std::all_of(host.begin(), host.end(), [&](float v) { return v == fill; });
    };
    cserve::Buffer dx = backend->allocate(static_cast<size_t>(m_rows * k) * 4);
    backend->upload(dx.data(), x.data(), dx.size());
    cserve::Buffer dgu = buffer(n, 12345.0f), dact = buffer(n / 2, 12345.0f), dout = buffer(n_out, 0.0f);
    cserve::Tensor tx{dx.data(), cserve::DType::F32, {m_rows, k}}, tgu{dgu.data(), cserve::DType::F32, {m_rows, n}};
    cserve::Tensor tact{dact.data(), cserve::DType::F32, {m_rows, n / 2}};
    cserve::Tensor tout{dout.data(), cserve::DType::F32, {m_rows, n_out}};
    const auto a = act == "silu" ? cserve::GatedActivation::Silu : cserve::GatedActivation::GeluTanh;
    backend->mlp(*gate_up, *down, tx, k, a, tgu, tact, tout, n_out, false);
    Array out = make_array({m_rows, n_out});
    backend->download(out.data(), dout.data(), dout.size());
    return nb::make_tuple(out, untouched(dgu, 12345.0f), untouched(dact, 12345.0f));
  }, "device"_a, "w_gate_up"_a, "w_down"_a, "x"_a, "dtype"_a, "bias"_a.none() = nb::none(),
     "down_bias"_a.none() = nb::none(), "act"_a = "silu");

  // Quantized weights given as raw ggml blocks (bytes of n rows of k values of ggml type `type`).
  m.def("dequantize", [](uint32_t type, nb::bytes data, int64_t n, int64_t k) {
    const auto t = static_cast<cserve::GgmlType>(type);
    if (!cserve::ggml_type_supported(t)) throw cserve::NotSupported("ggml type " + std::to_string(type));
    const size_t row = cserve::ggml_row_bytes(t, k);
    if (data.size() != row * static_cast<size_t>(n)) throw cserve::InvalidArgument("dequantize: wrong byte count");
    Array out = make_array({n, k});
    for (int64_t r = 0; r < n; ++r)
      cserve::dequantize_row(t, static_cast<const uint8_t*>(data.data()) + r * row, out.data() + r * k, k);
    return out;
  }, "type"_a, "data"_a, "n"_a, "k"_a);

  m.def("quant_linear", [](uint32_t type, nb::bytes data, int64_t n, int64_t k, ArrayIn x, int num_threads) {
    const auto t = static_cast<cserve::GgmlType>(type);
    cserve::QuantPart part;
    part.type = t;
    part.data = static_cast<const uint8_t*>(data.data());
    part.rows = n;
    part.cols = k;
    part.row_stride = cserve::ggml_row_bytes(t, k);
    if (data.size() != part.row_stride * static_cast<size_t>(n))
      throw cserve::InvalidArgument("quant_linear: wrong byte count");
    cserve::ThreadPool pool(num_threads);
    cserve::cpu::QuantMatrix w = cserve::cpu::pack_quant_matrix({part}, pool);
    const int64_t m_rows = static_cast<int64_t>(x.shape(0));
    Array y = make_array({m_rows, n});
    cserve::cpu::qgemm(w, x.data(), m_rows, static_cast<int64_t>(x.shape(1)), y.data(), n, false, pool);
    return nb::make_tuple(y, w.bits);
  }, "type"_a, "data"_a, "n"_a, "k"_a, "x"_a, "num_threads"_a = 2);

  // The same through a backend of `device` ("cpu", "cuda"): pack_linear_quantized, linear
  // (y = x W^T + bias) and the packed weight's embedding rows `ids`.
  m.def("backend_quant_linear", [](const std::string& device, uint32_t type, nb::bytes data, int64_t n, int64_t k,
                                   ArrayIn x, std::optional<ArrayIn> bias, std::optional<std::vector<int32_t>> k_order,
                                   const std::vector<int32_t>& ids) {
    cserve::QuantPart part;
    part.type = static_cast<cserve::GgmlType>(type);
    part.data = static_cast<const uint8_t*>(data.data());
    part.rows = n;
    part.cols = k;
    part.row_stride = cserve::ggml_row_bytes(part.type, k);
    if (data.size() != part.row_stride * static_cast<size_t>(n))
      throw cserve::InvalidArgument("backend_quant_linear: wrong byte count");
    if (bias) part.bias = bias->data();
    if (k_order) part.k_order = k_order->data();
    std::unique_ptr<cserve::Backend> backend = cserve::make_backend(device, 2);
    std::unique_ptr<cserve::LinearWeight> w = backend->pack_linear_quantized({part});
    const int64_t m_rows = static_cast<int64_t>(x.shape(0)), num_ids = static_cast<int64_t>(ids.size());
    cserve::Buffer dx = backend->allocate(static_cast<size_t>(m_rows * k) * 4);
    cserve::Buffer dy = backend->allocate(static_cast<size_t>(m_rows * n) * 4);
    cserve::Buffer de = backend->allocate(static_cast<size_t>(std::max<int64_t>(num_ids, 1) * k) * 4);
    backend->upload(dx.data(), x.data(), dx.size());
    cserve::Tensor tx{dx.data(), cserve::DType::F32, {m_rows, k}}, ty{dy.data(), cserve::DType::F32, {m_rows, n}};
    cserve::Tensor te{de.data(), cserve::DType::F32, {num_ids, k}};
    backend->linear(*w, tx, k, ty, n, false);
    backend->embedding(*w, ids.data(), num_ids, te);
    Array y = make_array({m_rows, n}), rows = make_array({num_ids, k});
    backend->download(y.data(), dy.data(), dy.size());
    backend->download(rows.data(), de.data(), static_cast<size_t>(num_ids * k) * 4);
    return nb::make_tuple(y, rows);
  }, "device"_a, "type"_a, "data"_a, "n"_a, "k"_a, "x"_a, "bias"_a.none() = nb::none(), "k_order"_a.none() = nb::none(),
     "ids"_a = std::vector<int32_t>{});

  m.def("gather_rows", [](ArrayIn w, const std::string& dtype, const std::vector<int32_t>& ids) {
    cserve::cpu::PackedMatrix p = cserve::cpu::pack_matrix({view(w)}, {}, dtype_of(dtype));
    Array y = make_array({static_cast<int64_t>(ids.size()), static_cast<int64_t>(w.shape(1))});
    cserve::cpu::gather_rows(p, ids.data(), static_cast<int64_t>(ids.size()), y.data());
    return y;
  });

  m.def("rms_norm", [](ArrayIn x, ArrayIn w, float eps) {
    int64_t rows = static_cast<int64_t>(x.shape(0)), dim = static_cast<int64_t>(x.shape(1));
    Array y = make_array({rows, dim});
    cserve::ThreadPool pool(2);
    cserve::cpu::rms_norm(x.data(), w.data(), rows, dim, dim, eps, y.data(), pool);
    return y;
  });

  // `draws` tokens sampled from one row of logits by one request's generator (seeded), each draw
  // from a fresh copy of the row (the sampler works in place).
  m.def("sample_draws", [](ArrayIn logits, double temperature, double top_p, int draws, uint64_t seed) {
    const int64_t vocab = static_cast<int64_t>(logits.size());
    cserve::Sampler sampler(vocab, {});
    cserve::Request r;
    r.params.temperature = temperature;
    r.params.top_p = top_p;
    r.rng.seed(seed);
    std::vector<float> row(static_cast<size_t>(vocab));
    std::vector<int32_t> out;
    for (int i = 0; i < draws; ++i) {
      std::copy(logits.data(), logits.data() + vocab, row.begin());
      out.push_back(sampler.sample(row.data(), r));
    }
    return out;
  }, "logits"_a, "temperature"_a, "top_p"_a = 1.0, "draws"_a = 1, "seed"_a = 0);

  m.def("silu_mul", [](ArrayIn gu) {
    int64_t t = static_cast<int64_t>(gu.shape(0)), inter = static_cast<int64_t>(gu.shape(1)) / 2;
    Array y = make_array({t, inter});
    cserve::ThreadPool pool(2);
    cserve::cpu::silu_mul(gu.data(), t, inter, y.data(), pool);
    return y;
  });

  m.def("gelu_tanh_mul", [](ArrayIn gu) {
    int64_t t = static_cast<int64_t>(gu.shape(0)), inter = static_cast<int64_t>(gu.shape(1)) / 2;
    Array y = make_array({t, inter});
    cserve::ThreadPool pool(2);
    cserve::cpu::gelu_tanh_mul(gu.data(), t, inter, y.data(), pool);
    return y;
  });

  m.def("softcap", [](ArrayIn x, float cap) {
    const int64_t n = static_cast<int64_t>(x.size());
    Array y = make_array({n});
    std::copy(x.data(), x.data() + n, y.data());
    cserve::ThreadPool pool(2);
    cserve::cpu::softcap(y.data(), n, cap, pool);
    return y;
  });

  m.def("rope", [](ArrayIn x, ArrayIn cos, ArrayIn sin, int64_t rotary_dim) {
    int64_t t = static_cast<int64_t>(x.shape(0)), h = static_cast<int64_t>(x.shape(1)), d = static_cast<int64_t>(x.shape(2));
    Array y = make_array({t, h, d});
    std::copy(x.data(), x.data() + t * h * d, y.data());
    cserve::ThreadPool pool(2);
    cserve::cpu::rope(y.data(), t, h, d, h * d, cos.data(), sin.data(), rotary_dim, pool);
    return y;
  });

  // Attention of one sequence's new tokens over a paged cache built from k and v
  // ([seq_len][kv_heads][head_dim]); blocks are laid out in the given (shuffled) order. With
  // write_new, the queries' own rows of k and v (the last ones) are the step's new keys and
  // values, written by the attention call (as the model's forward does).
  m.def("paged_attention", [](ArrayIn q, ArrayIn k, ArrayIn v, int block_size, const std::vector<int32_t>& block_ids,
                              const std::string& kv_dtype, float scale, int64_t sliding_window, float softcap,
                              std::optional<ArrayIn> sinks, bool write_new) {
    int64_t nq = static_cast<int64_t>(q.shape(0)), nh = static_cast<int64_t>(q.shape(1)), d = static_cast<int64_t>(q.shape(2));
    int64_t len = static_cast<int64_t>(k.shape(0)), nkv = static_cast<int64_t>(k.shape(1));
    int64_t num_blocks = 0;
    for (int32_t b : block_ids) num_blocks = std::max<int64_t>(num_blocks, b + 1);
    cserve::DType dt = dtype_of(kv_dtype);
    size_t layer = static_cast<size_t>(num_blocks * nkv * block_size * d) * cserve::dtype_size(dt);
    cserve::Buffer mem(2 * layer);
    std::vector<int64_t> shape{num_blocks, nkv, block_size, d};
    cserve::cpu::KVLayer cache{{mem.data(), dt, shape}, {mem.as<char>() + layer, dt, shape}};
    cserve::AttentionMetadata meta;
    meta.num_seqs = 1;
    meta.num_tokens = static_cast<int32_t>(nq);
    meta.block_size = block_size;
    meta.query_start = {0, static_cast<int32_t>(nq)};
    meta.seq_lens = {static_cast<int32_t>(len)};
    meta.block_tables = block_ids;
    meta.max_blocks_per_seq = static_cast<int32_t>(block_ids.size());
    std::vector<int64_t> slots;
    for (int64_t p = 0; p < len; ++p) slots.push_back(int64_t{block_ids[p / block_size]} * block_size + p % block_size);
    cserve::ThreadPool pool(2);
    if (nq > len) throw std::invalid_argument("more queries than keys");
    cserve::cpu::write_kv(k.data(), v.data(), write_new ? len - nq : len, nkv * d, slots.data(), cache, pool);
    meta.slot_mapping.assign(slots.end() - nq, slots.end());
    const cserve::cpu::NewKV fresh{k.data() + (len - nq) * nkv * d, v.data() + (len - nq) * nkv * d, nkv * d};
    for (int64_t j = 0; j < nq; ++j) meta.positions.push_back(static_cast<int32_t>(len - nq + j));
    Array out = make_array({nq, nh * d});
    if (sinks && static_cast<int64_t>(sinks->size()) != nh) throw std::invalid_argument("sinks: one per head");
    cserve::cpu::paged_attention(q.data(), nh * d, nh, cache, meta, scale, sliding_window, out.data(), pool, softcap,
                                 sinks ? sinks->data() : nullptr, write_new ? &fresh : nullptr);
    return out;
  }, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("block_size"), nb::arg("block_ids"), nb::arg("kv_dtype"),
     nb::arg("scale"), nb::arg("sliding_window"), nb::arg("softcap") = 0.0f, nb::arg("sinks") = nb::none(),
     nb::arg("write_new") = false);
}
