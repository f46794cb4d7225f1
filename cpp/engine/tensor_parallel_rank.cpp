// The ranks 1..N-1 of a tensor-parallel engine: a shard of the model and of the KV cache, run
// step by step as rank 0's messages say.
#include <memory>

#include "cserve/engine.h"
#include "engine/group_communicator.h"
#include "engine/model_loading.h"
#include "engine/model_runner.h"
#include "engine/rank_link.h"
#include "util/logging.h"

namespace cserve {

void run_tensor_parallel_rank(const EngineConfig& config, int rank) {
  const int group = parallel_group_size(config);
  if (rank < 1 || rank >= group)
    throw InvalidArgument("rank must be in [1, " + std::to_string(group) + "), got " + std::to_string(rank));
  auto comm = make_group_communicator(config, config.tensor_parallel_group, rank, group, true);
  LoadedModel loaded = load_model(config, rank, comm.get());
  RankLink link(*comm);
  std::unique_ptr<ModelRunner> runner;
  std::unique_ptr<LlamaModel> model = std::move(loaded.model);
  for (;;) {
    RankLink::Message msg = link.receive();
    if (msg.op == RankLink::Op::Stop) return;
    if (msg.op == RankLink::Op::ResizeKV) {
      if (runner)
        runner->resize_kv_cache(msg.num_blocks);
      else
        runner = std::make_unique<ModelRunner>(*loaded.backend, std::move(model), msg.num_blocks, config.block_size,
                                               loaded.kv_dtype, loaded.eos_token_ids);
      continue;
    }
    if (!runner) throw Error("tensor parallelism: a forward pass from rank 0 before its KV cache size");
    runner->run_forward(msg.batch, msg.block_copies);
  }
}

}  // namespace cserve
