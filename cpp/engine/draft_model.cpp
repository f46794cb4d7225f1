#include "engine/draft_model.h"

#include <algorithm>
#include <string>

#include "cserve/error.h"
#include "loader/gguf.h"
#include "loader/gguf_model.h"
#include "loader/model_config.h"
#include "loader/quantization_config.h"
#include "model/model_weights.h"
#include "util/first_largest.h"

namespace cserve {

DraftModel load_draft_model(const EngineConfig& c, Backend& backend, DType dtype, int64_t target_vocab_size) {
  const std::string& path = c.speculative_model;
  if (parallel_group_size(c) > 1)
    throw NotSupported("speculative decoding with a draft model is not supported yet with tensor or pipeline "
                       "parallelism");
  DraftModel d;
  const bool from_gguf = is_gguf_path(path);
  ModelConfig mc;
  if (from_gguf) {
    d.gguf = std::make_unique<GgufFile>(path);
    mc = gguf_model_config(*d.gguf);
  } else {
    mc = load_model_config(path);
  }
  if (mc.vocab_size != target_vocab_size)
    throw InvalidArgument("speculative_config: the draft model " + path + " has a vocabulary of " +
                          std::to_string(mc.vocab_size) + " tokens, the target model " +
                          std::to_string(target_vocab_size) + ": they must be the same");
  try {
    apply_quantization_flag(mc.quantization, c.speculative_quantization, from_gguf);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(std::string("speculative_config: the draft model: ") + e.what());
  } catch (const NotSupported& e) {
    throw NotSupported(std::string("speculative_config: the draft model: ") + e.what());
  }
  if (mc.quantization.enabled() && mc.residual_multiplier != mc.embedding_multiplier)
    throw NotSupported(path + ": quantized checkpoints of models with residual / embedding multipliers (Granite) "
                       "are not supported yet");
  if (!from_gguf) d.checkpoint = std::make_unique<SafetensorsCheckpoint>(path);
  ModelWeights weights = load_weights(mc, d.checkpoint.get(), dtype, backend, static_cast<uint64_t>(c.seed), {},
                                      d.gguf.get());
  d.weight_bytes = static_cast<int64_t>(weights.total_bytes);
  d.model = std::make_unique<LlamaModel>(mc, backend, std::move(weights));
  d.num_speculative_tokens = c.num_speculative_tokens;
  return d;
}

DraftProposer::DraftProposer(Backend& backend, DraftModel draft, int block_size, DType kv_dtype)
    : backend_(backend),
      draft_(std::move(draft)),
      block_size_(block_size),
      kv_dtype_(kv_dtype),
      cache_(backend, draft_.model->config(), block_size, kv_dtype, draft_.num_speculative_tokens,
             "draft model KV cache") {}

int64_t DraftProposer::num_scratch_blocks(int num_speculative_tokens, int block_size, int64_t max_num_seqs) {
  return ProposerKVCache::num_scratch_blocks(num_speculative_tokens, block_size, max_num_seqs);
}

int64_t DraftProposer::bytes_per_block() const { return cache_.bytes_per_block(); }

void DraftProposer::resize_kv_cache(int64_t num_blocks, int64_t max_num_seqs) {
  cache_.resize(num_blocks, max_num_seqs);
  valid_.clear();
}

void DraftProposer::copy_blocks(const std::vector<std::pair<int32_t, int32_t>>& copies) {
  cache_.copy_blocks(copies);
}

void DraftProposer::warm_up(const ForwardBatch& batch, int64_t logits_rows) {
  if (batch.token_ids.empty()) return;
  valid_.clear();
  ForwardBatch b = batch;
  const int64_t n = static_cast<int64_t>(b.token_ids.size());
  logits_rows = std::clamp<int64_t>(logits_rows, 1, n);
  b.logits_rows.clear();
  for (int64_t r = n - logits_rows; r < n; ++r) b.logits_rows.push_back(static_cast<int32_t>(r));
  logits_.resize(static_cast<size_t>(logits_rows * draft_.model->config().vocab_size));
  draft_.model->forward(b, cache_.layers(), logits_.data());
}

void DraftProposer::forget(const std::vector<std::string>& ids) {
  for (const std::string& id : ids) valid_.erase(id);
}

int64_t DraftProposer::valid_prefix(const DraftRequest& r) const {
  const auto it = valid_.find(*r.id);
  // A preempted request's blocks were freed (and maybe reused and cached again for the same
  // tokens by a request that never proposed): nothing it wrote can be trusted.
  if (it == valid_.end() || it->second.num_preemptions != r.num_preemptions) return 0;
  const Valid& v = it->second;
  const std::vector<int32_t>& now = *r.block_ids;
  size_t same = 0;
  while (same < v.block_ids.size() && same < now.size() && now[same] == v.block_ids[same]) ++same;
  const int64_t known = static_cast<int64_t>(r.tokens->size()) - 1;  // committed positions with the target's KV
  return std::min({v.num_positions, static_cast<int64_t>(same) * block_size_, known});
}

std::vector<std::vector<int32_t>> DraftProposer::propose(const std::vector<DraftRequest>& requests) {
  const int k = draft_.num_speculative_tokens;
  const int64_t V = draft_.model->config().vocab_size;
  const int64_t bs = block_size_;
  const size_t group = static_cast<size_t>(cache_.max_num_seqs());
  std::vector<std::vector<int32_t>> drafts(requests.size());
  for (size_t first = 0; first < requests.size(); first += group) {
    const size_t n = std::min(requests.size() - first, group);
    // Per request: its block table for the positions up to L - 1 + k - 1 (L: its tokens; L - 1,
    // the token sampled last, is the first one the target has not computed): the target's blocks
    // while they hold computed tokens, then scratch.
    std::vector<const std::vector<int32_t>*> blocks, tokens;
    std::vector<int64_t> computed, from(n), length(n);
    for (size_t q = 0; q < n; ++q) {
      const DraftRequest& r = requests[first + q];
      blocks.push_back(r.block_ids);
      tokens.push_back(r.tokens);
      length[q] = static_cast<int64_t>(r.tokens->size());
      computed.push_back(length[q] - 1);
      from[q] = valid_prefix(r);
    }
    const ProposerKVCache::Tables tables = cache_.proposal_tables(blocks, computed);
    // Catch-up: positions [from, L) of every request, at most max_batch_tokens_ per forward; the
    // forward that reaches a request's last token (L - 1) gives its first draft token.
    std::vector<int32_t> next(n);
    while (true) {
      std::vector<int64_t> begin(n), end(n);
      int64_t budget = max_batch_tokens_;
      bool any = false;
      for (size_t q = 0; q < n; ++q) {
        begin[q] = end[q] = from[q];
        if (from[q] >= length[q] || budget <= 0) continue;
        end[q] = from[q] + std::min(length[q] - from[q], budget);
        budget -= end[q] - begin[q];
        any = true;
      }
      if (!any) break;
      ForwardBatch b = cache_.span_batch(tables, tokens, begin, end);
      const bool no_rows = b.logits_rows.empty();
      if (no_rows) b.logits_rows.assign(1, static_cast<int32_t>(b.token_ids.size()) - 1);  // the forward needs one
      logits_.resize(b.logits_rows.size() * static_cast<size_t>(V));
      draft_.model->forward(b, cache_.layers(), logits_.data());
      size_t row = 0;
      for (size_t q = 0; q < n; ++q) {
        if (begin[q] < end[q] && end[q] == length[q] && !no_rows) {
          next[q] = greedy_token(logits_.data() + row++ * V, V);
          drafts[first + q].push_back(next[q]);
        }
        from[q] = end[q];
      }
    }
    std::vector<int64_t> positions(n);
    for (int j = 1; j < k; ++j) {
      for (size_t q = 0; q < n; ++q) positions[q] = computed[q] + j;
      logits_.resize(n * static_cast<size_t>(V));
      draft_.model->forward(cache_.one_token_batch(tables, next, positions), cache_.layers(), logits_.data());
      for (size_t q = 0; q < n; ++q) {
        next[q] = greedy_token(logits_.data() + q * V, V);
        drafts[first + q].push_back(next[q]);
      }
    }
    // The committed positions now hold the draft's keys and values: up to L - 1, and L - 1 itself
    // where it lies in one of the target's blocks (the first position of a block goes to scratch).
    for (size_t q = 0; q < n; ++q) {
      const DraftRequest& r = requests[first + q];
      Valid& v = valid_[*r.id];
      v.num_positions = computed[q] % bs == 0 ? computed[q] : length[q];
      v.num_preemptions = r.num_preemptions;
      const size_t num_blocks = static_cast<size_t>((v.num_positions + bs - 1) / bs);
      v.block_ids.assign(r.block_ids->begin(), r.block_ids->begin() + num_blocks);
    }
  }
  return drafts;
}

}  // namespace cserve
