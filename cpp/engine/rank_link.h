// Tensor parallelism's step protocol. Rank 0 (the engine's process, where the scheduler and the
// sampler live) tells the other ranks each model operation before it runs its own part: a
// forward pass over a ForwardBatch (with the KV block copies of that step), a new KV cache
// size, or the end. The message is one broadcast through the group's communicator; every rank
// then runs the same forward on its shard, and the ranks meet again in its all-reduces.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "comm/communicator.h"
#include "model/llama_model.h"

namespace cserve {

class RankLink {
 public:
  explicit RankLink(Communicator& comm) : comm_(comm) {}
  // Rank 0.
  void send_forward(const ForwardBatch& batch, const std::vector<std::pair<int32_t, int32_t>>& block_copies);
  void send_resize_kv_cache(int64_t num_blocks);
  void send_stop();

  // Ranks 1..N-1: the next operation.
  enum class Op : int32_t { Forward = 1, ResizeKV = 2, Stop = 3 };
  struct Message {
    Op op = Op::Stop;
    ForwardBatch batch;
    std::vector<std::pair<int32_t, int32_t>> block_copies;
    int64_t num_blocks = 0;
  };
  Message receive();

 private:
  void send(std::vector<uint8_t>& bytes, bool untimed);
  Communicator& comm_;
  std::vector<uint8_t> buf_;
};

}  // namespace cserve
