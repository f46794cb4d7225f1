#include "sample/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_map>

namespace cserve {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int32_t argmax(const float* x, int64_t n) {
  return static_cast<int32_t>(std::max_element(x, x + n) - x);
}
}  // namespace

void Sampler::apply_processors(float* logits, const Request& r) const {
  const SamplingParams& p = r.params;
  if (!p.allowed_token_ids.empty()) {
    std::vector<float> keep(p.allowed_token_ids.size());
    for (size_t i = 0; i < keep.size(); ++i) keep[i] = logits[p.allowed_token_ids[i]];
    std::fill(logits, logits + vocab_, kNegInf);
    for (size_t i = 0; i < keep.size(); ++i) logits[p.allowed_token_ids[i]] = keep[i];
  }
  for (const auto& [t, b] : p.logit_bias) logits[t] += b;
  if (static_cast<int64_t>(r.output_token_ids.size()) < p.min_tokens) {
    if (!p.ignore_eos)
      for (int64_t t : eos_) if (t >= 0 && t < vocab_) logits[t] = kNegInf;
    for (int32_t t : p.stop_token_ids) logits[t] = kNegInf;
  }
}

void Sampler::apply_penalties(float* logits, const Request& r) const {
  const SamplingParams& p = r.params;
  if (p.repetition_penalty != 1.0) {
    // Over prompt and output tokens, as vLLM: divide positive logits, multiply negative ones.
    std::vector<char> seen(static_cast<size_t>(vocab_), 0);
    for (int32_t t : r.all_token_ids) seen[t] = 1;
    float rp = static_cast<float>(p.repetition_penalty);
    for (int64_t t = 0; t < vocab_; ++t)
      if (seen[t]) logits[t] = logits[t] > 0 ? logits[t] / rp : logits[t] * rp;
  }
  if (p.frequency_penalty != 0.0 || p.presence_penalty != 0.0) {
    std::unordered_map<int32_t, int> counts;
    for (int32_t t : r.output_token_ids) ++counts[t];
    for (const auto& [t, c] : counts)
      logits[t] -= static_cast<float>(p.frequency_penalty * c + p.presence_penalty);
  }
}

int32_t Sampler::sample(float* logits, Request& r) const {
  apply_processors(logits, r);
  apply_penalties(logits, r);
  const SamplingParams& p = r.params;
  if (p.greedy()) return argmax(logits, vocab_);

  float inv_t = static_cast<float>(1.0 / p.temperature);
  float mx = kNegInf;
  for (int64_t i = 0; i < vocab_; ++i) mx = std::max(mx, logits[i] *= inv_t);
  // Candidates with their probabilities (unnormalized), most likely first after filtering.
  std::vector<std::pair<float, int32_t>> cand;
  cand.reserve(static_cast<size_t>(vocab_));
  double total = 0;
  for (int64_t i = 0; i < vocab_; ++i) {
    float e = std::exp(logits[i] - mx);
    if (e > 0) {
      cand.emplace_back(e, static_cast<int32_t>(i));
      total += e;
    }
  }
  if (p.min_p > 0) {
    float floor = static_cast<float>(p.min_p);  // the max has e = 1
    auto keep = std::remove_if(cand.begin(), cand.end(), [&](const auto& c) { return c.first < floor; });
    cand.erase(keep, cand.end());
  }
  auto by_prob = [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; };
  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < cand.size()) {
    std::nth_element(cand.begin(), cand.begin() + p.top_k, cand.end(), by_prob);
    cand.resize(static_cast<size_t>(p.top_k));
  }
  total = 0;
  for (const auto& c : cand) total += c.first;
  if (p.top_p < 1.0) {
    // Only the head of the distribution needs sorting: grow it until it holds top_p of the mass.
    const double target = p.top_p * total;
    size_t head = std::min<size_t>(64, cand.size());
    while (true) {
      std::partial_sort(cand.begin(), cand.begin() + head, cand.end(), by_prob);
      double mass = 0;
      size_t k = 0;
      while (k < head && mass < target) mass += cand[k++].first;
      if (mass >= target || head == cand.size()) {
        cand.resize(std::max<size_t>(k, 1));
        total = 0;
        for (const auto& c : cand) total += c.first;
        break;
      }
      head = std::min(cand.size(), head * 8);
    }
  }
  double u = std::generate_canonical<double, 53>(r.rng) * total;
  double acc = 0;
  for (const auto& c : cand) {
    acc += c.first;
    if (u < acc) return c.second;
  }
  return cand.back().second;
}

void Sampler::logprobs(const float* logits, int32_t token, int n, PositionLogprobs& out) const {
  float mx = *std::max_element(logits, logits + vocab_);
  double sum = 0;
  for (int64_t i = 0; i < vocab_; ++i) sum += std::exp(static_cast<double>(logits[i] - mx));
  float lse = mx + static_cast<float>(std::log(sum));
  float chosen = logits[token];
  int64_t rank = 1;
  for (int64_t i = 0; i < vocab_; ++i) rank += logits[i] > chosen;
  out.token_ids.assign(1, token);
  out.logprobs.assign(1, chosen - lse);
  out.ranks.assign(1, rank);
  if (n <= 0) return;
  n = static_cast<int>(std::min<int64_t>(n, vocab_));
  std::vector<int32_t> idx(static_cast<size_t>(vocab_));
  std::iota(idx.begin(), idx.end(), 0);
  auto better = [&](int32_t a, int32_t b) { return logits[a] != logits[b] ? logits[a] > logits[b] : a < b; };
  std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), better);
  for (int i = 0; i < n; ++i) {
    out.token_ids.push_back(idx[i]);
    out.logprobs.push_back(logits[idx[i]] - lse);
    out.ranks.push_back(i + 1);
  }
}

}  // namespace cserve
