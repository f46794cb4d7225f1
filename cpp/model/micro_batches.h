// Pipeline parallelism's micro-batches: a step's batch cut into consecutive groups of whole
// sequences, so that stage s works on micro-batch m + 1 while stage s + 1 works on micro-batch m.
// A sequence's tokens only attend to its own KV, so each group is a batch of its own.
#pragma once
#include <cstdint>
#include <vector>

#include "model/llama_model.h"

namespace cserve {

struct MicroBatch {
  ForwardBatch batch;       // the group's tokens, sequences and logits rows (rows rebased to it)
  int64_t first_token = 0;  // its first token in the step's batch
  int64_t first_logit = 0;  // its first logits row in the step's logits
};

// At most `count` groups of about equal token counts (never splitting a sequence, never empty);
// one group when count <= 1 or there is one sequence.
std::vector<MicroBatch> split_micro_batches(const ForwardBatch& batch, int count);

}  // namespace cserve
