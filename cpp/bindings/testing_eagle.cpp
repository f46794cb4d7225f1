// An EAGLE head beside its target on a one-process CPU engine loop (schedule, execute, update),
// for tests: each step returns the drafts the head proposed and the tokens they follow, so a
// reference forward of the head can be compared with them.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "cserve/error.h"
#include "engine/eagle_proposer.h"
#include "engine/model_loading.h"
#include "engine/model_runner.h"
#include "kv/kv_cache_manager.h"
#include "sched/scheduler.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

class EagleHarness {
 public:
  EagleHarness(const std::string& target, const std::string& head, const std::string& method, int k,
               int64_t num_blocks, int block_size, int64_t max_num_batched_tokens, bool prefix_caching,
               const std::vector<int>& graph_sizes) {
    cserve::EngineConfig c;
    c.model = target;
    c.dtype = "float32";
    c.device = "cpu";
    c.num_threads = 2;
    c.speculative_method = method;
    c.speculative_model = head;
    c.num_speculative_tokens = k;
    loaded_ = cserve::load_model(c);
    cserve::Backend& backend = *loaded_.backend;
    auto eagle = std::make_unique<cserve::EagleProposer>(
        backend, cserve::load_eagle_proposer_head(c, *loaded_.model, backend, cserve::DType::F32), k, block_size,
        cserve::DType::F32);
    runner_ = std::make_unique<cserve::ModelRunner>(backend, std::move(loaded_.model), num_blocks, block_size,
                                                    cserve::DType::F32, loaded_.eos_token_ids);
    cserve::SchedulerConfig sc;
    sc.max_num_seqs = 8;
    sc.max_num_batched_tokens = max_num_batched_tokens;
    sc.max_model_len = 256;
    if (!graph_sizes.empty()) {  // as the engine: graphs (the CPU's emulation) with a spare block
      runner_->enable_graphs(graph_sizes, sc.max_model_len);
      runner_->resize_kv_cache(num_blocks);
    }
    runner_->set_eagle_proposer(std::move(eagle), sc.max_num_seqs);
    if (!graph_sizes.empty()) {
      std::string why;
      if (runner_->capture_graphs(why) == 0) throw cserve::NotSupported("graphs: " + why);
    }
    kv_ = std::make_unique<cserve::KVCacheManager>(num_blocks, block_size, prefix_caching, "sha256");
    sched_ = std::make_unique<cserve::Scheduler>(sc, *kv_, loaded_.eos_token_ids, 0);
  }

  void add_request(const std::string& id, const std::vector<int32_t>& prompt, int64_t max_tokens) {
    cserve::SamplingParams p;
    p.temperature = 0.0;
    p.max_tokens = max_tokens;
    p.ignore_eos = true;
    sched_->add_request(id, prompt, p, 0, "");
  }

  // One step: (request id, the tokens its drafts follow, the drafts) for each request with drafts.
  std::vector<std::tuple<std::string, std::vector<int32_t>, std::vector<int32_t>>> step() {
    cserve::SchedulerOutput out = sched_->schedule();
    cserve::RunnerOutput r = runner_->execute(out);
    std::vector<std::tuple<std::string, std::vector<int32_t>, std::vector<int32_t>>> drafts;
    for (size_t i = 0; i < out.scheduled.size(); ++i) {
      if (r.draft_token_ids[i].empty()) continue;
      const cserve::Request& req = *out.scheduled[i].request;
      std::vector<int32_t> tokens = req.all_token_ids;
      tokens.insert(tokens.end(), r.sampled_token_ids[i].begin(), r.sampled_token_ids[i].end());
      drafts.emplace_back(req.external_id, std::move(tokens), r.draft_token_ids[i]);
    }
    sched_->update(out, r);
    return drafts;
  }
  bool has_unfinished() const { return sched_->has_unfinished(); }
  int64_t num_preemptions() const { return sched_->counters().num_preemptions; }
  int64_t prefix_cache_hits() const { return kv_->prefix_cache_hits(); }

 private:
  cserve::LoadedModel loaded_;
  std::unique_ptr<cserve::ModelRunner> runner_;
  std::unique_ptr<cserve::KVCacheManager> kv_;
  std::unique_ptr<cserve::Scheduler> sched_;
};

}  // namespace

void bind_testing_eagle(nb::module_& m) {
  nb::class_<EagleHarness>(m, "EagleHarness")
      .def(nb::init<const std::string&, const std::string&, const std::string&, int, int64_t, int, int64_t, bool,
                    const std::vector<int>&>(),
           "target"_a, "head"_a, "method"_a, "num_speculative_tokens"_a, "num_blocks"_a = 64, "block_size"_a = 16,
           "max_num_batched_tokens"_a = 512, "enable_prefix_caching"_a = true,
           "graph_sizes"_a = std::vector<int>{})
      .def("add_request", &EagleHarness::add_request, "request_id"_a, "prompt"_a, "max_tokens"_a)
      .def("step", &EagleHarness::step)
      .def("has_unfinished", &EagleHarness::has_unfinished)
      .def_prop_ro("num_preemptions", &EagleHarness::num_preemptions)
      .def_prop_ro("prefix_cache_hits", &EagleHarness::prefix_cache_hits);
}
