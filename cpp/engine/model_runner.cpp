#include "engine/model_runner.h"

#include <algorithm>
#include <cstring>

#include "engine/kv_cache_memory.h"

namespace cserve {

namespace {
// While the row after `count` draft tokens is sampled, the request holds those tokens as output,
// as it would had it sampled them one step at a time: penalties and min_tokens see the same tokens.
class DraftsAsOutput {
 public:
  DraftsAsOutput(Request& r, const std::vector<int32_t>& drafts, int32_t count) : r_(r), count_(count) {
    for (int32_t j = 0; j < count; ++j) r_.append_output(drafts[j]);
  }
  ~DraftsAsOutput() {
    r_.output_token_ids.resize(r_.output_token_ids.size() - count_);
    r_.all_token_ids.resize(r_.all_token_ids.size() - count_);
  }
  DraftsAsOutput(const DraftsAsOutput&) = delete;
  DraftsAsOutput& operator=(const DraftsAsOutput&) = delete;

 private:
  Request& r_;
  size_t count_;
};

// Whether the token sampled after `row.num_drafts_before` drafts rejects the next draft (later
// rows of the request are then void). Sampling the target and keeping a draft token where the
// target drew it is rejection sampling for a draft that is certain (n-gram): the draft is
// accepted with probability p(draft), and on rejection the token drawn is distributed as
// p without the draft, renormalized; so the output follows the target model exactly.
bool rejects_draft(const std::vector<int32_t>& drafts, int32_t num_drafts_before, int32_t token) {
  return static_cast<size_t>(num_drafts_before) < drafts.size() && drafts[num_drafts_before] != token;
}
}  // namespace

ModelRunner::ModelRunner(Backend& backend, std::unique_ptr<LlamaModel> model, int64_t num_blocks, int block_size,
                         DType kv_dtype, std::vector<int64_t> eos_token_ids)
    : backend_(backend),
      model_(std::move(model)),
      block_size_(block_size),
      kv_dtype_(kv_dtype),
      eos_token_ids_(eos_token_ids),
      sampler_(model_->config().vocab_size, std::move(eos_token_ids)),
      grammar_masks_(model_->config().vocab_size) {
  resize_kv_cache(num_blocks);
}

void ModelRunner::set_draft_proposer(std::unique_ptr<DraftProposer> draft, int64_t max_num_seqs,
                                     int64_t max_batch_tokens) {
  draft_ = std::move(draft);
  draft_max_num_seqs_ = max_num_seqs;
  draft_->set_max_batch_tokens(max_batch_tokens);
  draft_->resize_kv_cache(kv_layers_.empty() ? 0 : kv_layers_[0].k.dim(0), max_num_seqs);
}

void ModelRunner::set_eagle_proposer(std::unique_ptr<EagleProposer> eagle, int64_t max_num_seqs) {
  eagle_ = std::move(eagle);
  draft_max_num_seqs_ = max_num_seqs;
  eagle_->capture_on(*model_);
  eagle_->resize_kv_cache(kv_layers_.empty() ? 0 : kv_layers_[0].k.dim(0), max_num_seqs);
}

void ModelRunner::set_rank_link(RankLink* link) {
  link_ = link;
  if (link_) link_->send_resize_kv_cache(kv_layers_.empty() ? 0 : kv_layers_[0].k.dim(0));
}

void ModelRunner::run_forward(const ForwardBatch& batch, const std::vector<std::pair<int32_t, int32_t>>& block_copies) {
  if (!block_copies.empty())
    for (auto& layer : kv_layers_) backend_.copy_blocks(layer, block_copies);
  if (batch.token_ids.empty()) return;
  logits_.resize(batch.logits_rows.size() * static_cast<size_t>(model_->config().vocab_size));
  model_->forward(batch, kv_layers_, logits_.data());
}

void ModelRunner::resize_kv_cache(int64_t num_blocks) {
  if (link_) link_->send_resize_kv_cache(num_blocks);
  const ModelConfig& c = model_->config();
  const DType kv_dtype = kv_dtype_;
  kv_layers_.clear();
  kv_memory_ = Buffer();  // the old cache is freed before the new one is allocated
  // With graphs, one more block than the scheduler knows of: the padding tokens' keys go there.
  pad_block_ = graph_sizes_.empty() ? -1 : static_cast<int32_t>(num_blocks);
  if (!graph_sizes_.empty()) ++num_blocks;
  // In host memory every page is committed now: the size logged at start is what the process holds.
  kv_layers_ = allocate_kv_cache(backend_, c, kv_dtype, num_blocks, block_size_, "KV cache", kv_memory_);
  if (draft_) draft_->resize_kv_cache(num_blocks, draft_max_num_seqs_);
  if (eagle_) eagle_->resize_kv_cache(num_blocks, draft_max_num_seqs_);
}

void ModelRunner::build_batch(const SchedulerOutput& out) {
  ForwardBatch& b = batch_;
  AttentionMetadata& m = b.attn;
  b.token_ids.clear();
  b.token_seq_len.clear();
  b.logits_rows.clear();
  row_owner_.clear();
  m = AttentionMetadata{};
  m.block_size = block_size_;
  m.num_seqs = static_cast<int32_t>(out.scheduled.size());
  for (const auto& s : out.scheduled)
    m.max_blocks_per_seq = std::max(m.max_blocks_per_seq, static_cast<int32_t>(s.block_ids->size()));
  m.block_tables.assign(static_cast<size_t>(m.num_seqs) * m.max_blocks_per_seq, 0);
  m.query_start.push_back(0);
  for (size_t i = 0; i < out.scheduled.size(); ++i) {
    const ScheduledRequest& s = out.scheduled[i];
    const Request& r = *s.request;
    const auto& blocks = *s.block_ids;
    std::copy(blocks.begin(), blocks.end(), m.block_tables.begin() + i * m.max_blocks_per_seq);
    const int64_t end = s.start + s.num_new_tokens;
    const bool prompt_lp = r.wants_prompt_logprobs() && !r.prompt_logprobs_sent;
    const int64_t num_known = r.num_tokens();  // draft tokens follow the known ones
    for (int64_t pos = s.start; pos < end; ++pos) {
      if (prompt_lp && pos + 1 < r.num_prompt_tokens()) {
        b.logits_rows.push_back(static_cast<int32_t>(b.token_ids.size()));
        row_owner_.push_back({static_cast<int32_t>(i), pos, 0});
      }
      b.token_ids.push_back(pos < num_known ? r.all_token_ids[pos] : s.draft_token_ids[pos - num_known]);
      b.token_seq_len.push_back(static_cast<int32_t>(end));
      m.positions.push_back(static_cast<int32_t>(pos));
      m.slot_mapping.push_back(static_cast<int64_t>(blocks[pos / block_size_]) * block_size_ + pos % block_size_);
    }
    if (s.sample) {
      // One sampling row after the last known token and after each draft token.
      const int32_t num_drafts = static_cast<int32_t>(s.draft_token_ids.size());
      for (int32_t j = 0; j <= num_drafts; ++j) {
        b.logits_rows.push_back(static_cast<int32_t>(b.token_ids.size()) - 1 - num_drafts + j);
        row_owner_.push_back({static_cast<int32_t>(i), -1, j});
      }
    }
    m.query_start.push_back(static_cast<int32_t>(b.token_ids.size()));
    m.seq_lens.push_back(static_cast<int32_t>(end));
  }
  m.num_tokens = static_cast<int32_t>(b.token_ids.size());
}

RunnerOutput ModelRunner::execute(const SchedulerOutput& out) {
  RunnerOutput result;
  const size_t n = out.scheduled.size();
  result.sampled_token_ids.resize(n);
  result.logprobs.resize(n);
  result.draft_token_ids.resize(n);
  result.prompt_logprobs.resize(n);
  if (!out.block_copies.empty())
    for (auto& layer : kv_layers_) backend_.copy_blocks(layer, out.block_copies);
  if (draft_) draft_->copy_blocks(out.block_copies);
  if (eagle_) eagle_->copy_blocks(out.block_copies);
  if (n == 0) {
    if (link_ && !out.block_copies.empty()) link_->send_forward(ForwardBatch{}, out.block_copies);
    return result;
  }

  build_batch(out);
  if (link_) link_->send_forward(batch_, out.block_copies);  // the other ranks run the same step
  std::vector<Request*> sampling(row_owner_.size(), nullptr);
  for (size_t row = 0; row < row_owner_.size(); ++row)
    if (row_owner_[row].prompt_pos < 0) sampling[row] = out.scheduled[row_owner_[row].seq].request;
  grammar_masks_.begin(sampling);  // filled while the forward pass runs
  forward_and_sample(out, result);
  advance_grammars(out, result);
  if (draft_) {
    draft_->forget(out.finished_req_ids);
    // Lazy: the draft computes nothing of a step it proposes nothing after (it catches up then).
    if (out.propose_drafts) propose_with_draft_model(out, result);
  } else if (eagle_) {
    eagle_->step(out, batch_, model_->hidden_states(), result);  // the rows of batch_ (graph padding after them)
  } else if (proposer_.num_speculative_tokens > 0 && out.propose_drafts) {
    propose_drafts(out, result);
  }
  return result;
}

void ModelRunner::propose_with_draft_model(const SchedulerOutput& out, RunnerOutput& result) {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<size_t> which;
  tokens.reserve(out.scheduled.size());
  for (size_t i = 0; i < out.scheduled.size(); ++i) {
    const Request& r = *out.scheduled[i].request;
    const auto& sampled = result.sampled_token_ids[i];
    if (sampled.empty() || r.grammar || r.params.grammar) continue;  // as propose_drafts
    tokens.push_back(r.all_token_ids);
    tokens.back().insert(tokens.back().end(), sampled.begin(), sampled.end());
    which.push_back(i);
  }
  if (which.empty()) return;
  std::vector<DraftRequest> requests;
  for (size_t q = 0; q < which.size(); ++q) {
    const Request& r = *out.scheduled[which[q]].request;
    requests.push_back({&r.id, r.num_preemptions, &tokens[q], out.scheduled[which[q]].block_ids});
  }
  std::vector<std::vector<int32_t>> drafts = draft_->propose(requests);
  for (size_t q = 0; q < which.size(); ++q) result.draft_token_ids[which[q]] = std::move(drafts[q]);
}

void ModelRunner::propose_drafts(const SchedulerOutput& out, RunnerOutput& result) const {
  for (size_t i = 0; i < out.scheduled.size(); ++i) {
    const Request& r = *out.scheduled[i].request;
    const auto& sampled = result.sampled_token_ids[i];
    // A grammar decides per token what may follow: its requests do not speculate.
    if (sampled.empty() || r.grammar || r.params.grammar) continue;
    std::vector<int32_t> tokens = r.all_token_ids;
    tokens.insert(tokens.end(), sampled.begin(), sampled.end());
    result.draft_token_ids[i] = proposer_.propose(tokens);
  }
}

void ModelRunner::advance_grammars(const SchedulerOutput& out, RunnerOutput& result) {
  const size_t n = out.scheduled.size();
  for (size_t i = 0; i < n; ++i) {
    Request& r = *out.scheduled[i].request;
    if (!r.grammar || result.sampled_token_ids[i].empty()) continue;
    result.grammar_ended.resize(n, 0);
    result.errors.resize(n);
    // One token: constrained requests never speculate.
    result.errors[i] = GrammarMasks::advance(r, result.sampled_token_ids[i].front(), result.grammar_ended[i]);
  }
}

void ModelRunner::forward_and_sample(const SchedulerOutput& out, RunnerOutput& result) {
  const size_t n = out.scheduled.size();
  const int64_t V = model_->config().vocab_size;
  if (const int64_t size = graph_size_for(out); size > 0) {
    // A decode step padded to a captured size: the graph runs the forward, the real rows'
    // logits come first.
    build_graph_batch(size);
    backend_.replay_graph(size, [&] { graph_forward(); });
    Tensor logits = model_->device_logits();
    logits.shape[0] = static_cast<int64_t>(n);
    if (backend_can_sample(out)) {
      sample_on_backend(out, logits, result);
    } else {
      logits_.resize(n * static_cast<size_t>(V));
      backend_.download(logits_.data(), logits.data, logits_.size() * sizeof(float));
      sample_on_host(out, result);
    }
    return;
  }
  if (backend_can_sample(out)) {
    model_->forward(batch_, kv_layers_, nullptr);
    sample_on_backend(out, model_->device_logits(), result);
    return;
  }
  logits_.resize(batch_.logits_rows.size() * static_cast<size_t>(V));
  model_->forward(batch_, kv_layers_, logits_.data());
  sample_on_host(out, result);
}

void ModelRunner::sample_on_host(const SchedulerOutput& out, RunnerOutput& result) {
  const int64_t V = model_->config().vocab_size;
  std::vector<uint8_t> rejected(out.scheduled.size(), 0);  // later sampling rows of the request are void
  // A request's rows are consecutive and sampled in order by one thread (its generator and its
  // drafts are its own); different requests' rows go to the backend's host threads.
  std::vector<size_t> runs;  // the first row of each request's rows, then the end
  for (size_t row = 0; row < row_owner_.size(); ++row)
    if (row == 0 || row_owner_[row].seq != row_owner_[row - 1].seq) runs.push_back(row);
  runs.push_back(row_owner_.size());
  auto sample_rows = [&](size_t first, size_t last) {
    std::vector<float> raw;
    for (size_t row = first; row < last; ++row) {
      const LogitsRow& o = row_owner_[row];
      const ScheduledRequest& s = out.scheduled[o.seq];
      Request& r = *s.request;
      float* logits = logits_.data() + row * V;
      if (o.prompt_pos >= 0) {
        int want = *r.params.prompt_logprobs < 0 ? static_cast<int>(V) : *r.params.prompt_logprobs;
        PositionLogprobs lp;
        sampler_.logprobs(logits, r.prompt_token_ids[o.prompt_pos + 1], want, lp);
        result.prompt_logprobs[o.seq].push_back(std::move(lp));
        continue;
      }
      // Rows in order, stopping at the first rejection: the request's generator draws once per
      // output token, so a seeded request samples what it would without speculation.
      if (rejected[o.seq]) continue;
      if (r.params.logprobs) raw.assign(logits, logits + V);
      int32_t token;
      {
        DraftsAsOutput drafts(r, s.draft_token_ids, o.num_drafts_before);
        token = sampler_.sample(logits, r, grammar_masks_.mask(row));
      }
      result.sampled_token_ids[o.seq].push_back(token);
      if (r.params.logprobs) {
        int want = *r.params.logprobs < 0 ? static_cast<int>(V) : *r.params.logprobs;
        result.logprobs[o.seq].emplace_back();
        sampler_.logprobs(raw.data(), token, want, result.logprobs[o.seq].back());
      }
      rejected[o.seq] = rejects_draft(s.draft_token_ids, o.num_drafts_before, token);
    }
  };
  backend_.host_parallel_for(static_cast<int64_t>(runs.size()) - 1, [&](int64_t begin, int64_t end) {
    sample_rows(runs[begin], runs[end]);
  });
}

bool ModelRunner::backend_can_sample(const SchedulerOutput& out) const {
  if (!backend_.can_sample()) return false;
  for (const LogitsRow& o : row_owner_) {
    if (o.prompt_pos >= 0) return false;  // prompt logprobs: ranks and top-N of every position, on the host
    const SamplingParams& p = out.scheduled[o.seq].request->params;
    if (p.logprobs && (*p.logprobs < 0 || *p.logprobs > kMaxDeviceTopLogprobs)) return false;
  }
  return true;
}

void ModelRunner::sample_on_backend(const SchedulerOutput& out, const Tensor& logits, RunnerOutput& result) {
  std::vector<DeviceSamplingRow> rows;
  int num_top = 0;
  for (const LogitsRow& o : row_owner_) {
    Request& r = *out.scheduled[o.seq].request;
    const SamplingParams& p = r.params;
    DeviceSamplingRow row;
    if (!p.greedy()) {
      row.temperature = static_cast<float>(p.temperature);
      row.top_k = p.top_k > 0 ? p.top_k : 0;
      row.top_p = static_cast<float>(p.top_p);
      row.min_p = static_cast<float>(p.min_p);
      row.seed = r.rng();  // the request's own generator: seeded output does not depend on the batch
    }
    rows.push_back(row);
    if (p.logprobs) num_top = std::max(num_top, *p.logprobs);
  }
  num_top = static_cast<int>(std::min<int64_t>(num_top, model_->config().vocab_size));
  DeviceProcessing processing;
  const bool process = build_processing(out, processing);
  DeviceSamplingResult s;
  backend_.sample(logits, rows, num_top, process ? &processing : nullptr, s);
  // Every row was sampled at once (each as if the drafts before it were output); the request
  // keeps its tokens up to the first one that rejects a draft.
  std::vector<uint8_t> rejected(out.scheduled.size(), 0);
  for (size_t row = 0; row < row_owner_.size(); ++row) {
    const LogitsRow& o = row_owner_[row];
    const int32_t i = o.seq;
    const Request& r = *out.scheduled[i].request;
    if (rejected[i]) continue;
    rejected[i] = rejects_draft(out.scheduled[i].draft_token_ids, o.num_drafts_before, s.ids[row]);
    result.sampled_token_ids[i].push_back(s.ids[row]);
    if (!r.params.logprobs) continue;
    PositionLogprobs& lp = result.logprobs[i].emplace_back();
    lp.token_ids.assign(1, s.ids[row]);
    lp.logprobs.assign(1, s.logprobs[row]);
    lp.ranks.assign(1, s.ranks[row]);
    for (int j = 0; j < std::min(*r.params.logprobs, num_top); ++j) {
      lp.token_ids.push_back(s.top_ids[row * num_top + j]);
      lp.logprobs.push_back(s.top_logprobs[row * num_top + j]);
      lp.ranks.push_back(j + 1);
    }
  }
}

bool ModelRunner::build_processing(const SchedulerOutput& out, DeviceProcessing& proc) {
  bool any = false;
  auto range = [&](int32_t& begin, int32_t& end, auto&& fill) {
    begin = static_cast<int32_t>(proc.ids.size());
    fill();
    end = static_cast<int32_t>(proc.ids.size());
    any = any || end > begin;
  };
  auto add = [&](int64_t id, float value) {
    proc.ids.push_back(static_cast<int32_t>(id));
    proc.values.push_back(value);
  };
  const int64_t V = model_->config().vocab_size;
  for (size_t k = 0; k < row_owner_.size(); ++k) {
    const ScheduledRequest& s = out.scheduled[row_owner_[k].seq];
    Request& r = *s.request;
    const SamplingParams& p = r.params;
    DraftsAsOutput drafts(r, s.draft_token_ids, row_owner_[k].num_drafts_before);
    DeviceProcessorRow row;
    range(row.grammar_begin, row.grammar_end, [&] {
      const uint32_t* mask = grammar_masks_.mask(k);
      if (!mask) return;
      for (int64_t w = 0; w < grammar_masks_.words(); ++w) add(static_cast<int32_t>(mask[w]), 0.0f);
    });
    range(row.allowed_begin, row.allowed_end, [&] { for (int32_t t : p.allowed_token_ids) add(t, 0.0f); });
    range(row.bias_begin, row.bias_end, [&] { for (const auto& [t, b] : p.logit_bias) add(t, b); });
    range(row.masked_begin, row.masked_end, [&] {
      if (static_cast<int64_t>(r.output_token_ids.size()) >= p.min_tokens) return;
      for (int64_t t : eos_token_ids_) if (t >= 0 && t < V) add(t, 0.0f);  // even with ignore_eos, as vLLM
      for (int32_t t : p.stop_token_ids) add(t, 0.0f);
    });
    if (p.repetition_penalty != 1.0) {
      row.repetition_penalty = static_cast<float>(p.repetition_penalty);
      range(row.seen_begin, row.seen_end, [&] {
        std::vector<int32_t> seen(r.all_token_ids.begin(), r.all_token_ids.end());
        std::sort(seen.begin(), seen.end());
        seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
        for (int32_t t : seen) add(t, 0.0f);
      });
    }
    if (p.frequency_penalty != 0.0 || p.presence_penalty != 0.0) {
      row.frequency_penalty = static_cast<float>(p.frequency_penalty);
      row.presence_penalty = static_cast<float>(p.presence_penalty);
      range(row.counts_begin, row.counts_end, [&] {
        std::vector<int32_t> outs(r.output_token_ids.begin(), r.output_token_ids.end());
        std::sort(outs.begin(), outs.end());
        for (size_t a = 0; a < outs.size();) {
          size_t b = a;
          while (b < outs.size() && outs[b] == outs[a]) ++b;
          add(outs[a], static_cast<float>(b - a));
          a = b;
        }
      });
    }
    proc.rows.push_back(row);
  }
  return any;
}

void ModelRunner::enable_graphs(std::vector<int> sizes, int64_t max_model_len) {
  std::sort(sizes.begin(), sizes.end());
  graph_sizes_ = std::move(sizes);
  graph_width_ = (max_model_len + block_size_ - 1) / block_size_;
}

int ModelRunner::capture_graphs(std::string& why) {
  graphs_on_ = false;
  if (graph_sizes_.empty()) {
    why = "no capture sizes";
    return 0;
  }
  if (!model_->graph_capturable(why)) return 0;
  // Padding-only batches, largest first (its capture sizes the graph buffers).
  batch_ = ForwardBatch{};
  batch_.attn.block_size = block_size_;
  int captured = 0;
  for (auto it = graph_sizes_.rbegin(); it != graph_sizes_.rend(); ++it) {
    build_graph_batch(*it);
    // Each size runs eagerly first (as vLLM warms up): cuBLASLt's heuristics for its shapes and
    // lazily loaded kernels then happen outside the capture. (Not with other ranks: they would
    // have to join it, and their caches have no spare block; graphs never run with them.)
    if (!link_) graph_forward();
    if (!backend_.capture_graph(*it, [&] { graph_forward(); }, why)) return 0;
    ++captured;
  }
  graphs_on_ = true;
  return captured;
}

int64_t ModelRunner::graph_size_for(const SchedulerOutput& out) const {
  if (!graphs_on_ || row_owner_.size() != out.scheduled.size()) return 0;  // prompt logprob rows
  for (const auto& s : out.scheduled)
    if (s.num_new_tokens != 1 || !s.sample) return 0;
  const auto it = std::lower_bound(graph_sizes_.begin(), graph_sizes_.end(), static_cast<int>(out.scheduled.size()));
  return it == graph_sizes_.end() ? 0 : *it;
}

void ModelRunner::graph_forward() {
  model_->forward(graph_batch_, kv_layers_, nullptr, LlamaModel::kGraphScratch);
}

void ModelRunner::build_graph_batch(int64_t size) {
  const ForwardBatch& b = batch_;
  const AttentionMetadata& a = b.attn;
  ForwardBatch& g = graph_batch_;
  AttentionMetadata& m = g.attn;
  const int64_t real = static_cast<int64_t>(b.token_ids.size()), W = graph_width_;
  g.token_ids = b.token_ids;
  g.token_seq_len = b.token_seq_len;
  m.block_size = block_size_;
  m.num_seqs = static_cast<int32_t>(size);
  m.num_tokens = static_cast<int32_t>(size);
  m.max_blocks_per_seq = static_cast<int32_t>(W);
  m.positions = a.positions;
  m.slot_mapping = a.slot_mapping;
  m.seq_lens = a.seq_lens;
  m.block_tables.assign(static_cast<size_t>(size * W), 0);
  for (int64_t s = 0; s < real; ++s)
    std::copy_n(a.block_tables.begin() + s * a.max_blocks_per_seq, a.max_blocks_per_seq,
                m.block_tables.begin() + s * W);
  // Each padding token is a sequence of its own: position 0 in the spare block.
  for (int64_t t = real; t < size; ++t) {
    g.token_ids.push_back(0);
    g.token_seq_len.push_back(1);
    m.positions.push_back(0);
    m.slot_mapping.push_back(static_cast<int64_t>(pad_block_) * block_size_);
    m.seq_lens.push_back(1);
    m.block_tables[t * W] = pad_block_;
  }
  m.query_start.resize(static_cast<size_t>(size + 1));
  for (int64_t i = 0; i <= size; ++i) m.query_start[i] = static_cast<int32_t>(i);
  g.logits_rows.resize(static_cast<size_t>(size));
  for (int64_t i = 0; i < size; ++i) g.logits_rows[i] = static_cast<int32_t>(i);
}

void ModelRunner::warm_up(int64_t num_tokens, int64_t logits_rows) {
  if (kv_layers_.empty() || num_tokens <= 0) return;
  const int64_t num_blocks = kv_layers_[0].k.dim(0);
  num_tokens = std::min<int64_t>(num_tokens, num_blocks * block_size_);
  ForwardBatch b;
  AttentionMetadata& m = b.attn;
  m.block_size = block_size_;
  m.num_seqs = 1;
  m.num_tokens = static_cast<int32_t>(num_tokens);
  m.max_blocks_per_seq = static_cast<int32_t>((num_tokens + block_size_ - 1) / block_size_);
  for (int32_t blk = 0; blk < m.max_blocks_per_seq; ++blk) m.block_tables.push_back(blk);
  m.query_start = {0, static_cast<int32_t>(num_tokens)};
  m.seq_lens = {static_cast<int32_t>(num_tokens)};
  for (int64_t t = 0; t < num_tokens; ++t) {
    b.token_ids.push_back(0);
    b.token_seq_len.push_back(static_cast<int32_t>(num_tokens));
    m.positions.push_back(static_cast<int32_t>(t));
    m.slot_mapping.push_back(t);
  }
  logits_rows = std::clamp<int64_t>(logits_rows, 1, num_tokens);
  for (int64_t r = num_tokens - logits_rows; r < num_tokens; ++r) b.logits_rows.push_back(static_cast<int32_t>(r));
  if (link_) link_->send_forward(b, {});
  // The draft's activations reach their peak in the profiling run too: its largest catch-up
  // forward (the scheduler's token budget, one logits row per request).
  if (draft_) draft_->warm_up(b, std::min<int64_t>(num_tokens, std::max<int64_t>(1, draft_max_num_seqs_)));
  if (backend_.can_sample()) {
    model_->forward(b, kv_layers_, nullptr);
    if (eagle_) eagle_->warm_up(b, model_->hidden_states());  // the head's too
    warm_up_sampling(logits_rows);
    return;
  }
  std::vector<float> logits(static_cast<size_t>(logits_rows * model_->config().vocab_size));
  model_->forward(b, kv_layers_, logits.data());
  if (eagle_) eagle_->warm_up(b, model_->hidden_states());
}

void ModelRunner::warm_up_sampling(int64_t rows) {
  // Every row processed (a zero bias) and the most top logprobs: the sampler's buffers, a
  // processed copy of every row's logits among them, reach their peak inside the profiling run.
  std::vector<DeviceSamplingRow> params(static_cast<size_t>(rows));
  DeviceProcessing processing;
  for (int64_t r = 0; r < rows; ++r) {
    DeviceProcessorRow row;
    row.bias_begin = static_cast<int32_t>(r);
    row.bias_end = static_cast<int32_t>(r + 1);
    processing.rows.push_back(row);
    processing.ids.push_back(0);
    processing.values.push_back(0.0f);
  }
  const int num_top = static_cast<int>(std::min<int64_t>(kMaxDeviceTopLogprobs, model_->config().vocab_size));
  DeviceSamplingResult result;
  backend_.sample(model_->device_logits(), params, num_top, &processing, result);
}

}  // namespace cserve
