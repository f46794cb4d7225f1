// Tensor parallelism inside one process, for tests: N ranks as threads, each with its own CPU
// backend, weight shard, KV cache and model, meeting in a shared-memory communicator. A prefill
// of the prompt then one decode step; returns rank 0's logits of both.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <atomic>
#include <exception>
#include <thread>

#include "comm/communicator.h"
#include "engine/model_loading.h"

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

// One rank: its shard of `path` in float32, a KV cache for the whole prompt, prefill + decode.
std::vector<float> run_rank(const std::string& path, int rank, int tp, int pp, const std::string& group,
                            const std::vector<int32_t>& prompt) {
  std::unique_ptr<cserve::Communicator> comm;
  if (tp * pp > 1) comm = cserve::make_shm_communicator(group, rank, tp * pp, 30.0);
  cserve::EngineConfig config;
  config.model = path;
  config.dtype = "float32";
  config.device = "cpu";
  config.num_threads = 1;
  config.tensor_parallel_size = tp;
  config.pipeline_parallel_size = pp;
  config.tensor_parallel_group = group;
  cserve::LoadedModel loaded = cserve::load_model(config, rank, comm.get());
  cserve::LlamaModel& model = *loaded.model;
  const cserve::ModelConfig& local = model.config();
  cserve::Backend* backend = loaded.backend.get();
  const int64_t block = 16, blocks = (static_cast<int64_t>(prompt.size()) + block) / block;
  const std::vector<int64_t> shape{blocks, local.num_key_value_heads, block, local.head_dim};
  const size_t layer_bytes = static_cast<size_t>(blocks * local.num_key_value_heads * block * local.head_dim) * 4;
  cserve::Buffer kv_memory = backend->allocate(layer_bytes * 2 * static_cast<size_t>(local.num_hidden_layers));
  std::vector<cserve::KVCacheLayer> kv;
  for (int64_t l = 0; l < local.num_hidden_layers; ++l) {
    char* base = kv_memory.as<char>() + 2 * l * layer_bytes;
    kv.push_back({cserve::Tensor{base, cserve::DType::F32, shape}, cserve::Tensor{base + layer_bytes, cserve::DType::F32, shape}});
  }
  const int64_t V = local.vocab_size, T = static_cast<int64_t>(prompt.size());
  std::vector<float> logits(static_cast<size_t>(T * V));
  std::vector<int32_t> head(prompt.begin(), prompt.end() - 1);
  model.forward(batch_of(head, 0, block, blocks), kv, logits.data());
  model.forward(batch_of({prompt.back()}, T - 1, block, blocks), kv, logits.data() + (T - 1) * V);
  return logits;
}

}  // namespace

void bind_testing_tp(nb::module_& m) {
  m.def(
      "tensor_parallel_logits",
      [](const std::string& path, int tp, const std::vector<int32_t>& prompt, const std::string& group, int pp) {
        if (prompt.size() < 2) throw cserve::InvalidArgument("the prompt needs at least two tokens");
        const int size = tp * pp;
        std::vector<std::vector<float>> out(static_cast<size_t>(size));
        std::vector<std::exception_ptr> errors(static_cast<size_t>(size));
        {
          nb::gil_scoped_release unlocked;
          std::vector<std::thread> ranks;
          for (int r = 0; r < size; ++r)
            ranks.emplace_back([&, r] {
              try {
                out[r] = run_rank(path, r, tp, pp, group, prompt);
              } catch (...) {
                errors[r] = std::current_exception();
              }
            });
          for (auto& t : ranks) t.join();
        }
        for (auto& e : errors)
          if (e) std::rethrow_exception(e);
        return out[0];
      },
      "path"_a, "tp"_a, "prompt"_a, "group"_a, "pp"_a = 1,
      "Rank 0's logits [len(prompt) x vocab] of a prefill of prompt[:-1] then a decode of prompt[-1], with the "
      "model split tp ways in each of pp pipeline stages (ranks as threads meeting in shared memory named "
      "`group`).");
}
