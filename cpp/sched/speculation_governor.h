// Decides, each step, how many of their draft tokens the requests in decode verify, so that
// speculative decoding runs only where it pays: the expected output tokens per second with
// drafts must beat those without. Both sides are measured, not guessed:
// - the time of a decode-only step as a function of its token count (requests plus drafts),
//   smoothed per token count and interpolated between the counts seen;
// - each request's chance that a draft token is accepted (geometric: the j-th draft token
//   counts with a^j), from its own drafts with the engine-wide rate as a prior. Drafts that
//   are not verified are still compared with the tokens that followed, so the rate keeps
//   learning while speculation is off.
// A token count never measured (or measured too long ago) is assumed to cost no more than the
// largest fresh count below it: that optimism makes the step try it, which measures it, so
// speculation switched off is tried again once its cost figures expire.
#pragma once
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

namespace cserve {

// Drafts verified (or compared after the fact) and how many of their tokens matched, as a
// geometric model sees them: `accepted` successes out of `trials` (a draft of d tokens with m
// accepted is m successes and, when m < d, one failure).
struct DraftAcceptance {
  int64_t accepted = 0;
  int64_t trials = 0;
  void add(int64_t num_drafts, int64_t num_accepted) {
    accepted += num_accepted;
    trials += num_accepted + (num_accepted < num_drafts ? 1 : 0);
  }
};

// One request in decode this step: the draft tokens it may verify and its acceptance so far.
struct DraftCandidate {
  int64_t num_drafts = 0;
  DraftAcceptance acceptance;
};

struct SpeculationGovernorConfig {
  bool automatic = false;         // the rule above; false: every proposed draft is verified
  int disable_by_batch_size = 0;  // vLLM's: no drafts while more requests than this run (0: no limit)
  int64_t expiry_steps = 256;     // a step-time figure older than this many decode-only steps is retried
  double smoothing = 0.25;        // weight of a new step-time measurement
  double prior_weight = 4;        // the engine-wide acceptance rate counts as this many trials of a request
  // Proposing costs forwards of its own (a draft model): steps that verify drafts (and propose)
  // are timed apart from plain ones, and a plain step is the yardstick only where measured at or
  // above its token count.
  bool proposals_cost = false;
};

class SpeculationGovernor {
 public:
  explicit SpeculationGovernor(const SpeculationGovernorConfig& config) : config_(config) {}

  // The draft tokens each candidate verifies this step (one entry per candidate, at most its
  // num_drafts); num_running: the requests running this step.
  std::vector<int64_t> plan(int64_t num_running, const std::vector<DraftCandidate>& candidates) const;
  // A decode-only step of num_tokens tokens (every request's last token and its drafts) took
  // `seconds`.
  // `speculative`: it verified drafts (where proposals cost, their step times are kept apart).
  void record_step(int64_t num_tokens, double seconds, bool speculative = false);
  // A draft of num_drafts tokens of which the first num_accepted matched the target's tokens.
  void record_draft(int64_t num_drafts, int64_t num_accepted) { engine_wide_.add(num_drafts, num_accepted); }

  // A request's estimated chance that its next draft token is accepted.
  double acceptance_rate(const DraftAcceptance& own) const;
  // The estimated seconds of a decode-only step of num_tokens tokens; negative where no fresh
  // figure lies at or below it.
  double step_seconds(int64_t num_tokens) const;

 private:
  struct StepTime {
    double seconds = 0;
    int64_t measured_at = 0;  // decode-only steps recorded when it was last measured
  };
  bool fresh(const StepTime& t) const { return steps_ - t.measured_at < config_.expiry_steps; }
  // (token count, seconds) of the fresh figures, by token count.
  std::vector<std::pair<int64_t, double>> fresh_step_times(const std::map<int64_t, StepTime>& times) const;
  std::vector<std::pair<int64_t, double>> fresh_step_times() const { return fresh_step_times(step_times_); }
  // The figures' estimate for num_tokens: linear between the nearest ones, that of the largest
  // one beyond it; negative below the smallest.
  static double interpolate(const std::vector<std::pair<int64_t, double>>& figures, int64_t num_tokens);

  SpeculationGovernorConfig config_;
  std::map<int64_t, StepTime> step_times_;  // by token count
  std::map<int64_t, StepTime> speculative_times_;  // steps that verified drafts, where proposals cost
  int64_t steps_ = 0;                       // decode-only steps recorded
  DraftAcceptance engine_wide_;
};

}  // namespace cserve
