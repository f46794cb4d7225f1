#include "model/moe_routing.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace cserve {

void route_top_k(const float* logits, int64_t tokens, int64_t num_experts, int64_t ld, int64_t k, bool renormalize,
                 int64_t shared_gate_column, ExpertRouting& out) {
  const bool shared = shared_gate_column >= 0;
  out.tokens = tokens;
  out.k = k;
  out.slots = k + (shared ? 1 : 0);
  out.rows.resize(static_cast<size_t>(tokens * out.slots));
  out.weights.resize(static_cast<size_t>(tokens * out.slots));
  std::vector<int32_t> chosen(static_cast<size_t>(tokens * k));
  std::vector<int32_t> order(static_cast<size_t>(num_experts));
  std::vector<double> probs(static_cast<size_t>(num_experts));
  for (int64_t t = 0; t < tokens; ++t) {
    const float* l = logits + t * ld;
    const float top = *std::max_element(l, l + num_experts);
    double sum = 0;
    for (int64_t e = 0; e < num_experts; ++e) sum += probs[e] = std::exp(static_cast<double>(l[e]) - top);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int32_t a, int32_t b) { return probs[a] > probs[b] || (probs[a] == probs[b] && a < b); });
    double chosen_sum = 0;
    for (int64_t j = 0; j < k; ++j) chosen_sum += probs[order[j]];
    for (int64_t j = 0; j < k; ++j) {
      chosen[t * k + j] = order[j];
      const double p = probs[order[j]] / sum;
      out.weights[t * out.slots + j] = static_cast<float>(renormalize ? probs[order[j]] / chosen_sum : p);
    }
    if (shared) {
      out.rows[t * out.slots + k] = static_cast<int32_t>(tokens * k + t);
      out.weights[t * out.slots + k] = 1.0f / (1.0f + std::exp(-l[shared_gate_column]));
    }
  }
  // Counting sort of the (token, expert) pairs by expert.
  out.expert_begin.assign(static_cast<size_t>(num_experts + 1), 0);
  for (int32_t e : chosen) ++out.expert_begin[e + 1];
  for (int64_t e = 0; e < num_experts; ++e) out.expert_begin[e + 1] += out.expert_begin[e];
  std::vector<int64_t> next(out.expert_begin.begin(), out.expert_begin.end() - 1);
  out.source_token.resize(static_cast<size_t>(tokens * k));
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t r = next[chosen[t * k + j]]++;
      out.source_token[r] = static_cast<int32_t>(t);
      out.rows[t * out.slots + j] = static_cast<int32_t>(r);
    }
}

}  // namespace cserve
