#include "sched/scheduler.h"

#include <algorithm>
#include <chrono>

#include "cserve/error.h"

namespace cserve {

namespace {
// Seconds on the steady clock (CLOCK_MONOTONIC on Linux: Python's time.monotonic()).
double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

SpeculationGovernorConfig governor_config(const SchedulerConfig& c) {
  SpeculationGovernorConfig g;
  g.automatic = c.speculative_auto_disable;
  g.disable_by_batch_size = c.speculative_disable_by_batch_size;
  g.proposals_cost = c.speculative_proposals_cost;
  return g;
}
}  // namespace

Scheduler::Scheduler(const SchedulerConfig& config, KVCacheManager& kv, std::vector<int64_t> eos_token_ids,
                     uint64_t seed)
    : config_(config),
      governor_(governor_config(config)),
      kv_(kv),
      eos_(std::move(eos_token_ids)),
      seed_rng_(seed) {}

int64_t Scheduler::num_waiting() const {
  int64_t n = static_cast<int64_t>(waiting_.size());
  for (const auto& [id, sibs] : pending_forks_) n += static_cast<int64_t>(sibs.size());
  return n;
}

void Scheduler::add_request(const std::string& id, const std::vector<int32_t>& prompt,
                            const SamplingParams& params, int priority, const std::string& cache_salt) {
  if (children_.count(id)) throw InvalidArgument("request id " + id + " is already in use");
  uint64_t arrival = next_arrival_++;
  std::vector<Request*> made;
  for (int i = 0; i < params.n; ++i) {
    auto r = std::make_unique<Request>();
    // Internal ids come from a counter, so no client-chosen id ("c#1", say) can name another
    // request's completion.
    r->id = std::to_string(next_internal_id_++);
    r->external_id = id;
    r->index = i;
    r->prompt_token_ids = prompt;
    r->all_token_ids = prompt;
    r->params = params;
    if (i > 0) r->params.prompt_logprobs.reset();  // reported once, by the first completion
    r->priority = priority;
    r->arrival = arrival;
    r->cache_salt = cache_salt;
    // vLLM gives completion i of a seeded request the seed + i.
    r->rng.seed(params.seed ? static_cast<uint64_t>(*params.seed + i) : seed_rng_());
    kv_.update_block_hashes(*r);
    made.push_back(r.get());
    children_[id].push_back(r->id);
    requests_[r->id] = std::move(r);
  }
  waiting_.push_back(made[0]);
  if (made.size() > 1) pending_forks_[made[0]->id] = std::vector<Request*>(made.begin() + 1, made.end());
}

Request* Scheduler::pick_waiting() {
  if (waiting_.empty()) return nullptr;
  if (!config_.priority_policy) return waiting_.front();
  return *std::min_element(waiting_.begin(), waiting_.end(), [](Request* a, Request* b) {
    return a->priority != b->priority ? a->priority < b->priority : a->arrival < b->arrival;
  });
}

void Scheduler::erase_waiting(Request* r) { waiting_.remove(r); }

Request* Scheduler::choose_victim() const {
  if (!config_.priority_policy) return running_.back();
  return *std::max_element(running_.begin(), running_.end(), [](Request* a, Request* b) {
    return a->priority != b->priority ? a->priority < b->priority : a->arrival < b->arrival;
  });
}

void Scheduler::preempt(Request* victim) {
  running_.erase(std::find(running_.begin(), running_.end(), victim));
  kv_.free(*victim);
  ended_ids_.push_back(victim->id);
  victim->num_computed_tokens = 0;
  victim->draft_token_ids.clear();
  victim->unverified_draft.clear();
  victim->status = RequestStatus::Preempted;
  victim->num_preemptions++;
  // Prompt logprobs of a recomputed prefill are produced again from the start.
  if (!victim->prompt_logprobs_sent) victim->prompt_logprobs.clear();
  ++counters_.num_preemptions;
  waiting_.push_front(victim);
}

bool Scheduler::is_long(const Request& r) const {
  return config_.long_prefill_token_threshold > 0 && r.num_prompt_tokens() > config_.long_prefill_token_threshold;
}

bool Scheduler::is_partial_after(const Request& r, int64_t num_new) const {
  return r.num_computed_tokens + num_new < r.num_prompt_tokens();
}

SchedulerOutput Scheduler::schedule() {
  SchedulerOutput out;
  out.block_copies = std::move(pending_copies_);
  pending_copies_.clear();
  int64_t budget = config_.max_num_batched_tokens;
  int num_partial = 0, num_long_partial = 0;
  bool preempted = false;

  // Prompt logprobs need a vocabulary-wide logits row per prompt token: their rows per step are
  // capped, so the runner's logits buffer stays bounded whatever the prompt length.
  int64_t prompt_logprob_rows = kMaxPromptLogprobRowsPerStep;
  auto wants_rows = [](const Request& r) {
    return r.wants_prompt_logprobs() && !r.prompt_logprobs_sent && r.num_computed_tokens < r.num_prompt_tokens();
  };
  auto cap = [&](const Request& r, int64_t num_new) {
    if (config_.long_prefill_token_threshold > 0) num_new = std::min(num_new, config_.long_prefill_token_threshold);
    if (wants_rows(r)) num_new = std::min(num_new, prompt_logprob_rows);
    return std::min(num_new, budget);
  };
  auto charge_rows = [&](const Request& r, int64_t num_new) {
    if (wants_rows(r)) prompt_logprob_rows -= num_new;
  };

  const std::unordered_map<const Request*, int64_t> planned_drafts = plan_drafts();
  // Running requests first, in order (over a snapshot: preemption removes entries).
  const std::vector<Request*> running_before = running_;
  for (Request* r : running_before) {
    if (budget <= 0) break;
    if (r->status != RequestStatus::Running) continue;  // preempted earlier in this step
    const int64_t num_known = r->num_tokens() - r->num_computed_tokens;
    // In decode, the request's draft tokens are computed with its last token (the budget counts them).
    const auto planned = planned_drafts.find(r);
    int64_t num_new = cap(*r, num_known + (planned != planned_drafts.end() ? planned->second : 0));
    if (num_new <= 0) continue;
    int64_t num_drafts = std::max<int64_t>(0, num_new - num_known);
    bool scheduled = false;
    while (true) {
      if (kv_.allocate_slots(*r, num_new, {})) { scheduled = true; break; }
      if (num_drafts > 0) {  // short of blocks: no drafts this step rather than a preemption
        num_new -= num_drafts;
        num_drafts = 0;
        continue;
      }
      if (running_.size() == 1) {
        // Alone and still short of blocks: it can never fit, so end it instead of preempting forever.
        r->finish_reason = FinishReason::Length;
        r->status = RequestStatus::Finished;
        out_of_blocks_.push_back(r);
        running_.erase(running_.begin());
        break;
      }
      Request* victim = choose_victim();
      // Give back what the victim had been given this step.
      auto it = std::find_if(out.scheduled.begin(), out.scheduled.end(),
                             [&](const ScheduledRequest& s) { return s.request == victim; });
      if (it != out.scheduled.end()) {
        budget += it->num_new_tokens;
        out.num_scheduled_tokens -= it->num_new_tokens;
        out.scheduled.erase(it);
      }
      preempt(victim);
      preempted = true;
      if (victim == r) break;
    }
    if (!scheduled) continue;  // r itself was preempted or ended
    charge_rows(*r, num_new);
    if (is_partial_after(*r, num_new)) {
      ++num_partial;
      if (is_long(*r)) ++num_long_partial;
    }
    out.scheduled.push_back({r, r->num_computed_tokens, num_new, r->num_computed_tokens + num_new >= r->num_tokens(),
                             &kv_.block_ids(r->id), {}});
    out.scheduled.back().draft_token_ids.assign(r->draft_token_ids.begin(), r->draft_token_ids.begin() + num_drafts);
    if (num_drafts == 0 && !r->draft_token_ids.empty() && r->unverified_draft.empty()) {
      r->unverified_draft = r->draft_token_ids;  // compared with the tokens to come instead
      r->unverified_draft_at = r->output_token_ids.size();
    }
    out.num_scheduled_tokens += num_new;
    budget -= num_new;
  }

  // Then waiting ones, unless this step had to preempt.
  while (!preempted && budget > 0 && static_cast<int>(running_.size()) < config_.max_num_seqs) {
    Request* r = pick_waiting();
    if (!r) break;
    ComputedBlocks computed;
    if (r->num_computed_tokens == 0) computed = kv_.find_computed_blocks(*r);
    int64_t remaining = r->num_tokens() - r->num_computed_tokens - computed.num_tokens;
    if (!config_.enable_chunked_prefill && remaining > budget) break;
    int64_t num_new = cap(*r, remaining);
    if (num_new <= 0) break;  // no prompt-logprob rows left this step
    bool partial = r->num_computed_tokens + computed.num_tokens + num_new < r->num_prompt_tokens();
    if (partial && (num_partial >= config_.max_num_partial_prefills ||
                    (is_long(*r) && num_long_partial >= config_.max_long_partial_prefills)))
      break;
    if (!kv_.allocate_slots(*r, num_new, computed)) break;
    charge_rows(*r, num_new);
    erase_waiting(r);
    if (r->num_cached_tokens < 0) r->num_cached_tokens = computed.num_tokens;
    if (r->first_scheduled_time == 0) r->first_scheduled_time = now_seconds();
    r->num_computed_tokens += computed.num_tokens;
    r->status = RequestStatus::Running;
    running_.push_back(r);
    if (partial) {
      ++num_partial;
      if (is_long(*r)) ++num_long_partial;
    }
    out.scheduled.push_back({r, r->num_computed_tokens, num_new, r->num_computed_tokens + num_new >= r->num_tokens(),
                             &kv_.block_ids(r->id), {}});
    out.num_scheduled_tokens += num_new;
    budget -= num_new;
  }
  out.propose_drafts = worth_proposing(out);
  out.finished_req_ids = std::move(ended_ids_);
  ended_ids_.clear();
  return out;
}

bool Scheduler::worth_proposing(const SchedulerOutput& out) const {
  const int by_batch = config_.speculative_disable_by_batch_size;
  if (by_batch > 0 && static_cast<int64_t>(running_.size()) > by_batch) return false;
  if (!config_.speculative_proposals_cost || !config_.speculative_auto_disable) return true;
  // The requests that sample this step are those in decode next step: the rule's plan for them,
  // as if each had its full draft, says whether any draft would be verified.
  std::vector<DraftCandidate> candidates;
  for (const ScheduledRequest& s : out.scheduled) {
    const Request& r = *s.request;
    if (!s.sample || r.grammar || r.params.grammar) continue;
    // Its full draft, after the token it samples this step.
    candidates.push_back({num_drafts_allowed(r, config_.num_speculative_tokens, 1), r.draft_acceptance});
  }
  for (const int64_t count : governor_.plan(static_cast<int64_t>(running_.size()), candidates))
    if (count > 0) return true;
  return false;
}

void Scheduler::fork_siblings(Request& first, std::vector<std::pair<int32_t, int32_t>>& copies) {
  auto it = pending_forks_.find(first.id);
  if (it == pending_forks_.end()) return;
  int64_t n = first.num_prompt_tokens() - 1;  // each sibling recomputes the last prompt token itself
  for (Request* s : it->second) {
    if (n > 0 && static_cast<int>(running_.size()) < config_.max_num_seqs && kv_.fork(first, *s, n, copies)) {
      s->num_computed_tokens = n;
      s->num_cached_tokens = first.num_cached_tokens;
      s->first_scheduled_time = first.first_scheduled_time;
      s->status = RequestStatus::Running;
      running_.push_back(s);
    } else {
      waiting_.push_back(s);  // no room now: it will find the prompt in the prefix cache
    }
  }
  pending_forks_.erase(it);
}

int64_t Scheduler::num_drafts_allowed(const Request& r, int64_t num_drafts, int64_t num_pending) const {
  // Verifying d drafts yields up to d + 1 tokens, after the num_pending still to be appended.
  const int64_t used = static_cast<int64_t>(r.output_token_ids.size()) + num_pending + 1;
  const int64_t by_max_tokens = r.params.max_tokens - used;
  const int64_t by_model_len = config_.max_model_len - (r.num_tokens() + num_pending + 1);
  return std::max<int64_t>(0, std::min({num_drafts, by_max_tokens, by_model_len}));
}

void Scheduler::count_draft(size_t num_draft_tokens, size_t num_accepted) {
  ++counters_.num_drafts;
  counters_.num_draft_tokens += static_cast<int64_t>(num_draft_tokens);
  counters_.num_accepted_tokens += static_cast<int64_t>(num_accepted);
  auto& per_pos = counters_.num_accepted_tokens_per_pos;
  if (per_pos.size() < num_draft_tokens) per_pos.resize(num_draft_tokens, 0);
  for (size_t k = 0; k < num_accepted; ++k) ++per_pos[k];
}

std::unordered_map<const Request*, int64_t> Scheduler::plan_drafts() const {
  std::vector<DraftCandidate> candidates;
  std::vector<const Request*> who;
  bool any_drafts = false;
  for (const Request* r : running_) {
    if (r->num_tokens() - r->num_computed_tokens != 1) continue;  // not in decode
    candidates.push_back({num_drafts_allowed(*r, static_cast<int64_t>(r->draft_token_ids.size()), 0),
                          r->draft_acceptance});
    who.push_back(r);
    any_drafts = any_drafts || candidates.back().num_drafts > 0;
  }
  if (!any_drafts) return {};
  const std::vector<int64_t> counts = governor_.plan(static_cast<int64_t>(running_.size()), candidates);
  std::unordered_map<const Request*, int64_t> planned;
  for (size_t i = 0; i < who.size(); ++i)
    if (counts[i] > 0) planned[who[i]] = counts[i];
  return planned;
}

void Scheduler::compare_unverified_draft(Request& r) {
  const auto& draft = r.unverified_draft;
  const size_t from = r.unverified_draft_at;
  const size_t num_new = r.output_token_ids.size() - from;
  size_t matched = 0;
  while (matched < std::min(num_new, draft.size()) && r.output_token_ids[from + matched] == draft[matched]) ++matched;
  // Known once a token differs or every draft token has its counterpart.
  if (matched < std::min(num_new, draft.size()) || num_new >= draft.size()) {
    r.draft_acceptance.add(static_cast<int64_t>(draft.size()), static_cast<int64_t>(matched));
    governor_.record_draft(static_cast<int64_t>(draft.size()), static_cast<int64_t>(matched));
    r.unverified_draft.clear();
  }
}

void Scheduler::record_step_seconds(const SchedulerOutput& out, double seconds) {
  if (out.scheduled.empty()) return;
  size_t num_drafts = 0;
  for (const ScheduledRequest& s : out.scheduled) {  // decode only: each request's last token and its drafts
    if (!s.sample || s.num_new_tokens != 1 + static_cast<int64_t>(s.draft_token_ids.size())) return;
    num_drafts += s.draft_token_ids.size();
  }
  // Where proposing costs forwards, a step's time counts them exactly when it verifies drafts:
  // a step that proposes and verifies none (speculation switching on, the draft catching up) or
  // verifies drafts and proposes none would skew the figures.
  if (config_.speculative_proposals_cost && out.propose_drafts != (num_drafts > 0)) return;
  governor_.record_step(out.num_scheduled_tokens, seconds, num_drafts > 0);
}

bool Scheduler::append_sampled(Request& r, const std::vector<int32_t>& tokens, size_t& num_appended) {
  num_appended = 0;
  for (int32_t t : tokens) {
    r.append_output(t);
    ++num_appended;
    ++counters_.generation_tokens;
    if (check_stop(r)) break;  // tokens after a stop are dropped
  }
  kv_.update_block_hashes(r);
  return r.finish_reason != FinishReason::None;
}

bool Scheduler::check_stop(Request& r) const {
  int32_t t = r.output_token_ids.back();
  int64_t num_out = static_cast<int64_t>(r.output_token_ids.size());
  if (num_out >= r.params.min_tokens) {
    if (!r.params.ignore_eos && std::find(eos_.begin(), eos_.end(), t) != eos_.end()) {
      r.finish_reason = FinishReason::Stop;
      r.stop_token_id = t;
      return true;
    }
    const auto& stops = r.params.stop_token_ids;
    if (std::find(stops.begin(), stops.end(), t) != stops.end()) {
      r.finish_reason = FinishReason::Stop;
      r.stop_token_id = t;
      return true;
    }
  }
  if (num_out >= r.params.max_tokens || r.num_tokens() >= config_.max_model_len) {
    r.finish_reason = FinishReason::Length;
    return true;
  }
  return false;
}

RequestOutput Scheduler::make_output(Request& r) {
  RequestOutput o;
  o.request_id = r.external_id;
  o.index = r.index;
  o.new_token_ids.assign(r.output_token_ids.begin() + r.num_sent_tokens, r.output_token_ids.end());
  r.num_sent_tokens = static_cast<int64_t>(r.output_token_ids.size());
  if (r.params.prompt_logprobs && !r.prompt_logprobs_sent &&
      (r.num_computed_tokens >= r.num_prompt_tokens() || r.finish_reason != FinishReason::None)) {
    o.prompt_logprobs = std::move(r.prompt_logprobs);
    o.has_prompt_logprobs = true;
    r.prompt_logprobs_sent = true;
  }
  o.finish_reason = r.finish_reason;
  o.stop_token_id = r.stop_token_id;
  o.num_prompt_tokens = r.num_prompt_tokens();
  o.num_cached_tokens = std::max<int64_t>(0, r.num_cached_tokens);
  o.scheduled_time = r.first_scheduled_time;
  o.time = now_seconds();
  o.error = r.error;
  return o;
}

void Scheduler::finish(Request& r, FinishReason reason) {
  if (r.finish_reason == FinishReason::None) r.finish_reason = reason;
  r.status = RequestStatus::Finished;
  kv_.free(r);
  ended_ids_.push_back(r.id);
  auto rit = std::find(running_.begin(), running_.end(), &r);
  if (rit != running_.end()) running_.erase(rit);
  erase_waiting(&r);
}

std::vector<RequestOutput> Scheduler::update(const SchedulerOutput& out, const RunnerOutput& result) {
  std::vector<RequestOutput> outputs;
  std::vector<Request*> done = std::move(out_of_blocks_);
  out_of_blocks_.clear();
  for (Request* r : done) outputs.push_back(make_output(*r));
  for (size_t i = 0; i < out.scheduled.size(); ++i) {
    const ScheduledRequest& s = out.scheduled[i];
    Request& r = *s.request;
    bool was_prefill = r.num_computed_tokens < r.num_prompt_tokens();
    r.num_computed_tokens = s.start + s.num_new_tokens;
    if (was_prefill)
      counters_.prompt_tokens += std::min(r.num_computed_tokens, r.num_prompt_tokens()) - s.start;
    if (i < result.prompt_logprobs.size())
      for (const auto& p : result.prompt_logprobs[i]) r.prompt_logprobs.push_back(p);
    if (was_prefill && r.num_computed_tokens >= r.num_prompt_tokens())
      fork_siblings(r, pending_copies_);
    const std::vector<int32_t>& tokens = result.sampled_token_ids[i];
    if (tokens.empty()) continue;
    if (!s.draft_token_ids.empty()) {
      // The KV of draft tokens after the first rejected one is void: the request's length
      // rolls back to its last accepted token, and wholly unused blocks go back to the pool.
      const size_t num_accepted = tokens.size() - 1;
      r.num_computed_tokens -= static_cast<int64_t>(s.draft_token_ids.size() - num_accepted);
      count_draft(s.draft_token_ids.size(), num_accepted);
      r.draft_acceptance.add(static_cast<int64_t>(s.draft_token_ids.size()), static_cast<int64_t>(num_accepted));
      governor_.record_draft(static_cast<int64_t>(s.draft_token_ids.size()), static_cast<int64_t>(num_accepted));
      kv_.release_beyond_computed(r);
    }
    size_t num_appended = 0;
    bool stop = append_sampled(r, tokens, num_appended);
    if (!r.unverified_draft.empty()) compare_unverified_draft(r);
    const int32_t t = r.output_token_ids.back();
    if (i < result.errors.size() && !result.errors[i].empty()) {
      r.finish_reason = FinishReason::Error;
      r.error = result.errors[i];
      stop = true;
    } else if (!stop && i < result.grammar_ended.size() && result.grammar_ended[i]) {
      // The grammar ended: on an EOS that ignore_eos let through (not text, like any EOS), or on
      // its last token of text (llguidance stops where nothing but EOS could follow).
      r.finish_reason = FinishReason::Stop;
      if (std::find(eos_.begin(), eos_.end(), t) != eos_.end()) r.stop_token_id = t;
      stop = true;
    }
    RequestOutput o = make_output(r);
    if (r.params.logprobs && i < result.logprobs.size()) {
      const auto& lps = result.logprobs[i];
      o.new_logprobs.assign(lps.begin(), lps.begin() + static_cast<std::ptrdiff_t>(std::min(num_appended, lps.size())));
    }
    outputs.push_back(std::move(o));
    if (stop) done.push_back(&r);
    else if (i < result.draft_token_ids.size()) r.draft_token_ids = result.draft_token_ids[i];
    else r.draft_token_ids.clear();
  }
  for (Request* r : done) {
    finish(*r, r->finish_reason);
    std::string ext = r->external_id, id = r->id;
    auto& kids = children_[ext];
    kids.erase(std::find(kids.begin(), kids.end(), id));
    if (kids.empty()) children_.erase(ext);
    requests_.erase(id);
  }
  return outputs;
}

std::vector<RequestOutput> Scheduler::abort(const std::string& external_id) {
  return end(external_id, FinishReason::Abort, "");
}

std::vector<RequestOutput> Scheduler::end(const std::string& external_id, FinishReason reason,
                                          const std::string& error) {
  std::vector<RequestOutput> outputs;
  auto it = children_.find(external_id);
  if (it == children_.end()) return outputs;
  for (const std::string& id : it->second) {
    Request& r = *requests_.at(id);
    if (reason == FinishReason::Error) {
      r.finish_reason = FinishReason::Error;
      r.error = error;
    }
    finish(r, reason);
    outputs.push_back(make_output(r));
    pending_forks_.erase(id);
    out_of_blocks_.erase(std::remove(out_of_blocks_.begin(), out_of_blocks_.end(), &r), out_of_blocks_.end());
    requests_.erase(id);
  }
  children_.erase(it);
  return outputs;
}

std::vector<RequestOutput> Scheduler::fail(const SchedulerOutput& out, const std::string& error) {
  std::vector<std::string> ids;
  for (const ScheduledRequest& s : out.scheduled) ids.push_back(s.request->external_id);
  for (const Request* r : out_of_blocks_) ids.push_back(r->external_id);
  // Block copies of the failed step (siblings forked by the previous one) never happened: the
  // running requests they were for cannot trust their KV cache.
  if (!out.block_copies.empty())
    for (const Request* r : running_) ids.push_back(r->external_id);
  std::vector<RequestOutput> outputs;
  for (const std::string& id : ids)
    for (auto& o : end(id, FinishReason::Error, error)) outputs.push_back(std::move(o));
  return outputs;
}

std::vector<RequestOutput> Scheduler::fail_all(const std::string& error) {
  std::vector<std::string> ids;
  for (const auto& [id, kids] : children_) ids.push_back(id);
  std::vector<RequestOutput> outputs;
  for (const std::string& id : ids)
    for (auto& o : end(id, FinishReason::Error, error)) outputs.push_back(std::move(o));
  pending_copies_.clear();
  return outputs;
}

}  // namespace cserve
