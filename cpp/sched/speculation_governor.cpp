#include "sched/speculation_governor.h"

#include <algorithm>
#include <iterator>

namespace cserve {

double SpeculationGovernor::acceptance_rate(const DraftAcceptance& own) const {
  // Laplace's rule for the engine-wide rate (one half before any draft), then the request's own
  // counts on top of it as prior_weight pseudo-trials.
  const double engine_wide = (static_cast<double>(engine_wide_.accepted) + 1.0) /
                             (static_cast<double>(engine_wide_.trials) + 2.0);
  return (static_cast<double>(own.accepted) + config_.prior_weight * engine_wide) /
         (static_cast<double>(own.trials) + config_.prior_weight);
}

std::vector<std::pair<int64_t, double>> SpeculationGovernor::fresh_step_times(
    const std::map<int64_t, StepTime>& times) const {
  std::vector<std::pair<int64_t, double>> out;
  for (const auto& [tokens, t] : times)
    if (fresh(t)) out.emplace_back(tokens, t.seconds);
  return out;
}

double SpeculationGovernor::interpolate(const std::vector<std::pair<int64_t, double>>& figures, int64_t num_tokens) {
  // The nearest figures at or below and above num_tokens.
  auto above = std::upper_bound(figures.begin(), figures.end(), num_tokens,
                                [](int64_t t, const std::pair<int64_t, double>& f) { return t < f.first; });
  if (above == figures.begin()) return -1;
  const auto below = std::prev(above);
  if (below->first == num_tokens || above == figures.end())
    return below->second;  // beyond the largest figure, optimistic: no dearer than it
  const double f = static_cast<double>(num_tokens - below->first) / static_cast<double>(above->first - below->first);
  return below->second + f * (above->second - below->second);
}

double SpeculationGovernor::step_seconds(int64_t num_tokens) const {
  return interpolate(fresh_step_times(), num_tokens);
}

void SpeculationGovernor::record_step(int64_t num_tokens, double seconds, bool speculative) {
  ++steps_;
  auto& times = config_.proposals_cost && speculative ? speculative_times_ : step_times_;
  auto [it, inserted] = times.try_emplace(num_tokens);
  StepTime& t = it->second;
  if (inserted || !fresh(t)) t.seconds = seconds;  // an expired figure starts over
  else t.seconds += config_.smoothing * (seconds - t.seconds);
  t.measured_at = steps_;
}

std::vector<int64_t> SpeculationGovernor::plan(int64_t num_running, const std::vector<DraftCandidate>& candidates) const {
  std::vector<int64_t> counts(candidates.size(), 0);
  if (config_.disable_by_batch_size > 0 && num_running > config_.disable_by_batch_size) return counts;
  if (!config_.automatic) {
    for (size_t i = 0; i < candidates.size(); ++i) counts[i] = candidates[i].num_drafts;
    return counts;
  }
  const auto n = static_cast<int64_t>(candidates.size());
  const auto figures = fresh_step_times();
  const double base_seconds = interpolate(figures, n);
  // A step with d drafts: where proposals cost, the drafting steps' own figures (below the
  // smallest one, that one: the draft's forwards dominate; none at all, the plain figures, so
  // speculation is tried and measured), else the plain figures (drafts are just more tokens).
  const auto drafting = config_.proposals_cost ? fresh_step_times(speculative_times_) : figures;
  auto drafting_seconds = [&](int64_t num_tokens) {
    if (drafting.empty()) return interpolate(figures, num_tokens);
    if (num_tokens < drafting.front().first) return drafting.front().second;
    return interpolate(drafting, num_tokens);
  };
  if (base_seconds <= 0) return counts;  // the plain step is measured first: it is the yardstick
  // Every draft token's expected accepted tokens (the j-th of a request: a^j), best first; the
  // first D of them are the best D drafts to verify (a request's own come in order, as a^j falls).
  struct Gain {
    double tokens;
    size_t candidate;
  };
  std::vector<Gain> gains;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const double a = acceptance_rate(candidates[i].acceptance);
    double p = 1;
    for (int64_t j = 0; j < candidates[i].num_drafts; ++j) gains.push_back({p *= a, i});
  }
  std::stable_sort(gains.begin(), gains.end(), [](const Gain& x, const Gain& y) { return x.tokens > y.tokens; });
  // The number of drafts D with the most expected tokens per second: (n + gains) / T(n + D).
  double best_rate = static_cast<double>(n) / base_seconds, tokens = static_cast<double>(n);
  size_t best = 0;
  for (size_t d = 1; d <= gains.size(); ++d) {
    tokens += gains[d - 1].tokens;
    const double rate = tokens / drafting_seconds(n + static_cast<int64_t>(d));
    if (rate > best_rate) {
      best_rate = rate;
      best = d;
    }
  }
  for (size_t d = 0; d < best; ++d) ++counts[gains[d].candidate];
  return counts;
}

}  // namespace cserve
