// Tensor parallelism inside one process, for tests: N ranks as threads, each with its own CPU
// backend, weight shard, KV cache and model, meeting in a shared-memory communicator. A prefill
// of the prompt then one decode step; returns rank 0's logits of both.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <atomic>
#include <utility>
#include <exception>
#include <thread>

#include "comm/communicator.h"
#include "engine/kv_cache_memory.h"
#include "engine/model_loading.h"
#include "model/micro_batches.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

cserve::ForwardBatch batch_of(const std::vector<int32_t>& ids, int64_t start, int64_t block_size, int64_t blocks) {
  cserve::ForwardBatch b;
  cserve::AttentionMetadata& m = b.attn;
  const int64_t T = static_cast<int64_t>(ids.size()), end = start + T;
  m.block_size = static_cast<int32_t>(block_size);
  m.num_seqs = 1;
  m.num_tokens = static_cast<int32_t>(T);
  m.max_blocks_per_seq = static_cast<int32_t>(blocks);
  for (int32_t blk = 0; blk < blocks; ++blk) m.block_tables.push_back(blk);
  m.query_start = {0, static_cast<int32_t>(T)};
  m.seq_lens = {static_cast<int32_t>(end)};
  for (int64_t t = 0; t < T; ++t) {
    b.token_ids.push_back(ids[t]);
    b.token_seq_len.push_back(static_cast<int32_t>(end));
    m.positions.push_back(static_cast<int32_t>(start + t));
    m.slot_mapping.push_back(start + t);
    b.logits_rows.push_back(static_cast<int32_t>(t));
  }
  return b;
}

// One rank's model: its shard of `path` in float32 (the communicator outlives it).
struct Rank {
  std::unique_ptr<cserve::Communicator> comm;
  cserve::LoadedModel loaded;
  cserve::Buffer kv_memory;
  std::vector<cserve::KVCacheLayer> kv;
};

std::unique_ptr<Rank> load_rank(const std::string& path, int rank, int tp, int pp, const std::string& group,
                                int micro_batches, int64_t kv_blocks, int64_t block) {
  auto r = std::make_unique<Rank>();
  if (tp * pp > 1) r->comm = cserve::make_shm_communicator(group, rank, tp * pp, 30.0);
  cserve::EngineConfig config;
  config.model = path;
  config.dtype = "float32";
  config.device = "cpu";
  config.num_threads = 1;
  config.tensor_parallel_size = tp;
  config.pipeline_parallel_size = pp;
  config.pipeline_micro_batches = micro_batches;
  config.tensor_parallel_group = group;
  r->loaded = cserve::load_model(config, rank, r->comm.get());
  // This rank's shapes: its KV heads size the cache.
  r->kv = cserve::allocate_kv_cache(*r->loaded.backend, r->loaded.model->config(), cserve::DType::F32, kv_blocks,
                                    block, "KV cache", r->kv_memory);
  return r;
}

// One rank: a KV cache for the whole prompt, prefill + decode.
std::vector<float> run_rank(const std::string& path, int rank, int tp, int pp, const std::string& group,
                            const std::vector<int32_t>& prompt) {
  const int64_t block = 16, blocks = (static_cast<int64_t>(prompt.size()) + block) / block;
  auto r = load_rank(path, rank, tp, pp, group, 1, blocks, block);
  cserve::LlamaModel& model = *r->loaded.model;
  std::vector<cserve::KVCacheLayer>& kv = r->kv;
  const cserve::ModelConfig& local = model.config();
  const int64_t V = local.vocab_size, T = static_cast<int64_t>(prompt.size());
  std::vector<float> logits(static_cast<size_t>(T * V));
  std::vector<int32_t> head(prompt.begin(), prompt.end() - 1);
  model.forward(batch_of(head, 0, block, blocks), kv, logits.data());
  model.forward(batch_of({prompt.back()}, T - 1, block, blocks), kv, logits.data() + (T - 1) * V);
  return logits;
}

// Several prompts prefilled in one forward (each its own blocks), as a pipeline step would hold
// them; returns every token's logits, and how many micro-batches the model cut the step into.
std::pair<std::vector<float>, int> run_rank_batch(const std::string& path, int rank, int tp, int pp,
                                                  const std::string& group,
                                                  const std::vector<std::vector<int32_t>>& prompts, int micro) {
  const int64_t block = 16;
  int64_t max_blocks = 0, total_blocks = 0;
  for (const auto& p : prompts) {
    const int64_t n = (static_cast<int64_t>(p.size()) + block - 1) / block;
    max_blocks = std::max(max_blocks, n);
    total_blocks += n;
  }
  cserve::ForwardBatch b;
  cserve::AttentionMetadata& a = b.attn;
  a.block_size = static_cast<int32_t>(block);
  a.num_seqs = static_cast<int32_t>(prompts.size());
  a.max_blocks_per_seq = static_cast<int32_t>(max_blocks);
  a.query_start.push_back(0);
  int32_t next_block = 0;
  for (const auto& p : prompts) {
    const int64_t T = static_cast<int64_t>(p.size()), n = (T + block - 1) / block;
    for (int64_t i = 0; i < max_blocks; ++i) a.block_tables.push_back(i < n ? next_block + static_cast<int32_t>(i) : 0);
    for (int64_t t = 0; t < T; ++t) {
      b.logits_rows.push_back(static_cast<int32_t>(b.token_ids.size()));
      b.token_ids.push_back(p[t]);
      b.token_seq_len.push_back(static_cast<int32_t>(T));
      a.positions.push_back(static_cast<int32_t>(t));
      a.slot_mapping.push_back(static_cast<int64_t>(next_block) * block + t);
    }
    next_block += static_cast<int32_t>(n);
    a.query_start.push_back(static_cast<int32_t>(b.token_ids.size()));
    a.seq_lens.push_back(static_cast<int32_t>(T));
  }
  a.num_tokens = static_cast<int32_t>(b.token_ids.size());
  auto r = load_rank(path, rank, tp, pp, group, micro, total_blocks, block);
  cserve::LlamaModel& model = *r->loaded.model;
  std::vector<float> logits(b.logits_rows.size() * static_cast<size_t>(model.config().vocab_size));
  const int count = model.micro_batch_count(b);
  model.forward(b, r->kv, logits.data());
  return {std::move(logits), count};
}

// Runs rank(r) for r in [0, size) on threads of their own (the GIL released), rethrows the first
// failure, and returns rank 0's result.
template <typename Rank>
auto run_ranks_as_threads(int size, Rank rank) {
  std::vector<decltype(rank(0))> out(static_cast<size_t>(size));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(size));
  {
    nb::gil_scoped_release unlocked;
    std::vector<std::thread> ranks;
    for (int r = 0; r < size; ++r)
      ranks.emplace_back([&, r] {
        try {
          out[r] = rank(r);
        } catch (...) {
          errors[r] = std::current_exception();
        }
      });
    for (auto& t : ranks) t.join();
  }
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out[0];
}

}  // namespace

void bind_testing_device_comm(nb::module_& m);  // testing_device_comm.cpp

void bind_testing_tp(nb::module_& m) {
  bind_testing_device_comm(m);
  m.def(
      "pipeline_batch_logits",
      [](const std::string& path, int tp, int pp, const std::vector<std::vector<int32_t>>& prompts,
         const std::string& group, int micro_batches) {
        return run_ranks_as_threads(
            tp * pp, [&](int r) { return run_rank_batch(path, r, tp, pp, group, prompts, micro_batches); });
      },
      "path"_a, "tp"_a, "pp"_a, "prompts"_a, "group"_a, "micro_batches"_a,
      "Rank 0's logits of every token of `prompts` prefilled in one step, and the number of pipeline "
      "micro-batches the step was cut into (ranks as threads meeting in shared memory named `group`).");
  m.def(
      "split_micro_batches",
      [](const std::vector<int32_t>& query_start, const std::vector<int32_t>& logits_rows, int count) {
        cserve::ForwardBatch b;
        cserve::AttentionMetadata& a = b.attn;
        a.num_seqs = static_cast<int32_t>(query_start.size()) - 1;
        a.num_tokens = query_start.back();
        a.max_blocks_per_seq = 1;
        a.query_start = query_start;
        for (int32_t s = 0; s < a.num_seqs; ++s) {
          a.seq_lens.push_back(query_start[s + 1] - query_start[s]);
          a.block_tables.push_back(s);
        }
        for (int32_t t = 0; t < a.num_tokens; ++t) {
          b.token_ids.push_back(t);
          b.token_seq_len.push_back(0);
          a.positions.push_back(t);
          a.slot_mapping.push_back(t);
        }
        b.logits_rows = logits_rows;
        std::vector<nb::dict> out;
        for (const cserve::MicroBatch& mb : cserve::split_micro_batches(b, count)) {
          nb::dict d;
          d["first_token"] = mb.first_token;
          d["first_logit"] = mb.first_logit;
          d["token_ids"] = mb.batch.token_ids;
          d["query_start"] = mb.batch.attn.query_start;
          d["block_tables"] = mb.batch.attn.block_tables;
          d["logits_rows"] = mb.batch.logits_rows;
          out.push_back(d);
        }
        return out;
      },
      "query_start"_a, "logits_rows"_a, "count"_a,
      "The micro-batches a step of these sequences (token t has id t, sequence s block s) is cut into.");
  m.def(
      "tensor_parallel_logits",
      [](const std::string& path, int tp, const std::vector<int32_t>& prompt, const std::string& group, int pp) {
        if (prompt.size() < 2) throw cserve::InvalidArgument("the prompt needs at least two tokens");
        return run_ranks_as_threads(tp * pp, [&](int r) { return run_rank(path, r, tp, pp, group, prompt); });
      },
      "path"_a, "tp"_a, "prompt"_a, "group"_a, "pp"_a = 1,
      "Rank 0's logits [len(prompt) x vocab] of a prefill of prompt[:-1] then a decode of prompt[-1], with the "
      "model split tp ways in each of pp pipeline stages (ranks as threads meeting in shared memory named "
      "`group`).");
}
