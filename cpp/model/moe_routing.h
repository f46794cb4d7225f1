// Mixture-of-experts routing, on the host: each token's top-k experts from the router's logits,
// and the plan the expert GEMMs run by (tokens grouped by expert, so that each expert's weights
// are read once per step whatever the number of tokens it serves).
#pragma once
#include <cstdint>
#include <vector>

namespace cserve {

struct ExpertRouting {
  int64_t tokens = 0, k = 0;   // k: the experts per token (num_experts_per_tok)
  int64_t slots = 0;           // rows of each token's combination: k, plus 1 with a shared expert
  // The expert rows, grouped by expert: row r is token source_token[r]'s input for its expert;
  // expert e's rows are [expert_begin[e], expert_begin[e + 1]).
  std::vector<int32_t> source_token;
  std::vector<int64_t> expert_begin;
  // Per token, its `slots` rows of the expert outputs (the shared expert's output rows follow
  // the tokens * k routed ones) and their weights.
  std::vector<int32_t> rows;
  std::vector<float> weights;
};

// Softmax over the first num_experts of each token's logits (row stride ld), the k largest
// probabilities (ties to the lower expert id, as torch.topk on CPU), renormalized to sum 1 when
// `renormalize` (Mixtral; Qwen's norm_topk_prob). shared_gate_column >= 0: the logit of a shared
// expert's gate in that column, its weight sigmoid(logit).
void route_top_k(const float* logits, int64_t tokens, int64_t num_experts, int64_t ld, int64_t k, bool renormalize,
                 int64_t shared_gate_column, ExpertRouting& out);

}  // namespace cserve
