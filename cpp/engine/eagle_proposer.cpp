#include "engine/eagle_proposer.h"

#include <algorithm>
#include <string>

#include "cserve/error.h"
#include "loader/gguf.h"

namespace cserve {

std::unique_ptr<EagleHead> load_eagle_proposer_head(const EngineConfig& c, const LlamaModel& target, Backend& backend,
                                                    DType dtype) {
  const std::string& method = c.speculative_method;
  if (parallel_group_size(c) > 1)
    throw NotSupported("speculative decoding method " + method +
                       " is not supported yet with tensor or pipeline parallelism");
  if (c.speculative_model.empty())
    throw InvalidArgument("speculative decoding method " + method + " needs the head's directory in 'model'");
  if (is_gguf_path(c.speculative_model))
    throw NotSupported("speculative_config: a GGUF " + method + " head (" + c.speculative_model +
                       ") is not supported (a directory with config.json and safetensors is)");
  // The Llama family as vLLM's EAGLE heads read it: the residual stream of plain pre-norm layers.
  const ModelConfig& t = target.config();
  static const char* const kTargets[] = {"llama", "mistral", "qwen2", "qwen3"};
  const bool llama_family = std::find(std::begin(kTargets), std::end(kTargets), t.model_type) != std::end(kTargets);
  if (!llama_family || t.num_experts > 0)
    throw NotSupported("speculative decoding method " + method + " is supported for Llama-family targets (llama, "
                       "mistral, qwen2, qwen3), not " + t.architecture + " yet");
  return load_eagle_head(c.speculative_model, method, target, dtype, backend);
}

EagleProposer::EagleProposer(Backend& backend, std::unique_ptr<EagleHead> head, int num_speculative_tokens,
                             int block_size, DType kv_dtype)
    : backend_(backend),
      head_(std::move(head)),
      num_speculative_tokens_(num_speculative_tokens),
      block_size_(block_size),
      cache_(backend, head_->config(), block_size, kv_dtype, num_speculative_tokens, "EAGLE head KV cache") {}

void EagleProposer::capture_on(LlamaModel& target) const {
  if (head_->spec().eagle3)
    target.capture_hidden_states(head_->spec().aux_layers, false);
  else
    target.capture_hidden_states({}, true);  // the last layer's output after the final norm, as vLLM's model returns
}

void EagleProposer::warm_up(const ForwardBatch& batch, const Tensor& hidden) {
  std::vector<int32_t> drafts;
  head_->forward(batch, hidden, hidden.dim(1), true, cache_.layers(), drafts);
}

void EagleProposer::step(const SchedulerOutput& out, const ForwardBatch& batch, const Tensor& hidden,
                         RunnerOutput& result) {
  const AttentionMetadata& tm = batch.attn;
  const int64_t W = hidden.dim(1), H = head_->config().hidden_size;
  // The head's batch: per request, the positions from its first this step to its last computed
  // for good (the accepted drafts', not the rejected ones'), each with the next token.
  ForwardBatch b;
  AttentionMetadata& m = b.attn;
  m.block_size = block_size_;
  m.max_blocks_per_seq = tm.max_blocks_per_seq;
  m.query_start.push_back(0);
  std::vector<int32_t> rows;        // the target's batch row of each head token
  std::vector<size_t> proposing;    // scheduled index of each logits row
  std::vector<int64_t> computed;    // their first uncomputed position
  for (size_t i = 0; i < out.scheduled.size(); ++i) {
    const ScheduledRequest& s = out.scheduled[i];
    const Request& r = *s.request;
    const auto& sampled = result.sampled_token_ids[i];
    const int64_t known = r.num_tokens(), m_sampled = static_cast<int64_t>(sampled.size());
    const int64_t stop = std::min(s.start + s.num_new_tokens, known + m_sampled - 1);
    if (stop <= s.start) continue;
    const int32_t row0 = tm.query_start[i];
    for (int64_t p = s.start; p < stop; ++p) {
      const int64_t next = p + 1;
      b.token_ids.push_back(next < known ? r.all_token_ids[next] : sampled[next - known]);
      b.token_seq_len.push_back(static_cast<int32_t>(stop));
      m.positions.push_back(static_cast<int32_t>(p));
      m.slot_mapping.push_back(tm.slot_mapping[row0 + (p - s.start)]);
      rows.push_back(static_cast<int32_t>(row0 + (p - s.start)));
    }
    m.block_tables.insert(m.block_tables.end(), tm.block_tables.begin() + i * tm.max_blocks_per_seq,
                          tm.block_tables.begin() + (i + 1) * tm.max_blocks_per_seq);
    m.query_start.push_back(static_cast<int32_t>(b.token_ids.size()));
    m.seq_lens.push_back(static_cast<int32_t>(stop));
    ++m.num_seqs;
    // As the draft model: every request that sampled proposes, but for grammars (one token at a time),
    // unless the scheduler wants no drafts this step (disable_by_batch_size, the automatic rule):
    // the head still runs over the positions, its cache must hold them all.
    if (out.propose_drafts && !sampled.empty() && !r.grammar && !r.params.grammar) {
      b.logits_rows.push_back(static_cast<int32_t>(b.token_ids.size()) - 1);
      proposing.push_back(i);
      computed.push_back(stop);
    }
  }
  m.num_tokens = static_cast<int32_t>(b.token_ids.size());
  if (b.token_ids.empty()) return;
  const int64_t T = static_cast<int64_t>(rows.size());
  const size_t bytes = static_cast<size_t>(T * W) * sizeof(float);
  if (gathered_.size() < bytes) gathered_ = backend_.allocate(bytes + bytes / 2);
  Tensor in{gathered_.data(), DType::F32, {T, W}};
  backend_.gather_rows(hidden, rows.data(), T, W, in);
  std::vector<int32_t> first;
  head_->forward(b, in, W, true, cache_.layers(), first);
  if (proposing.empty()) return;

  // k - 1 more steps, one token per request: the last draft at the next position, with the
  // head's own output of the step before as its hidden state.
  const size_t group = static_cast<size_t>(cache_.max_num_seqs());
  Buffer carried;  // the rows of the requests in groups after the first: their first step's output
  const Tensor& first_hidden = head_->next_hidden();
  const size_t n_all = proposing.size();
  if (n_all > group && num_speculative_tokens_ > 1) {
    carried = backend_.allocate(n_all * static_cast<size_t>(H) * sizeof(float));
    Tensor dst{carried.data(), DType::F32, {static_cast<int64_t>(n_all), H}};
    backend_.copy_rows_strided(first_hidden, H, dst, H, static_cast<int64_t>(n_all), H);
  }
  for (size_t q = 0; q < n_all; ++q) result.draft_token_ids[proposing[q]].assign(1, first[q]);
  for (size_t g0 = 0; g0 < n_all && num_speculative_tokens_ > 1; g0 += group) {
    const size_t n = std::min(group, n_all - g0);
    std::vector<const std::vector<int32_t>*> blocks;
    std::vector<int64_t> first_pos(computed.begin() + g0, computed.begin() + g0 + n);
    for (size_t q = 0; q < n; ++q) blocks.push_back(out.scheduled[proposing[g0 + q]].block_ids);
    const ProposerKVCache::Tables tables = cache_.proposal_tables(blocks, first_pos);
    Tensor prev = carried.size() ? Tensor{carried.as<float>() + g0 * H, DType::F32, {static_cast<int64_t>(n), H}}
                                 : first_hidden;
    std::vector<int32_t> tokens(n), drafts;
    std::vector<int64_t> positions(n);
    for (int j = 1; j < num_speculative_tokens_; ++j) {
      for (size_t q = 0; q < n; ++q) {
        tokens[q] = result.draft_token_ids[proposing[g0 + q]].back();
        positions[q] = first_pos[q] + (j - 1);
      }
      head_->forward(cache_.one_token_batch(tables, tokens, positions), prev, H, false, cache_.layers(), drafts);
      prev = head_->next_hidden();
      for (size_t q = 0; q < n; ++q) result.draft_token_ids[proposing[g0 + q]].push_back(drafts[q]);
    }
  }
}

}  // namespace cserve
