#include "engine/draft_model.h"

#include <algorithm>
#include <string>

#include "cserve/error.h"
#include "loader/gguf.h"
#include "loader/model_config.h"
#include "model/model_weights.h"
#include "engine/kv_cache_memory.h"

namespace cserve {

DraftModel load_draft_model(const EngineConfig& c, Backend& backend, DType dtype, int64_t target_vocab_size) {
  const std::string& path = c.speculative_model;
  if (is_gguf_path(path))
    throw NotSupported("speculative_config: a GGUF draft model (" + path + ") is not supported yet");
  if (parallel_group_size(c) > 1)
    throw NotSupported("speculative decoding with a draft model is not supported yet with tensor or pipeline "
                       "parallelism");
  ModelConfig mc = load_model_config(path);
  if (mc.vocab_size != target_vocab_size)
    throw InvalidArgument("speculative_config: the draft model " + path + " has a vocabulary of " +
                          std::to_string(mc.vocab_size) + " tokens, the target model " +
                          std::to_string(target_vocab_size) + ": they must be the same");
  DraftModel d;
  d.checkpoint = std::make_unique<SafetensorsCheckpoint>(path);
  ModelWeights weights = load_weights(mc, d.checkpoint.get(), dtype, backend, static_cast<uint64_t>(c.seed));
  d.model = std::make_unique<LlamaModel>(mc, backend, std::move(weights));
  d.num_speculative_tokens = c.num_speculative_tokens;
  return d;
}

DraftProposer::DraftProposer(Backend& backend, DraftModel draft, int block_size, DType kv_dtype)
    : backend_(backend), draft_(std::move(draft)), block_size_(block_size), kv_dtype_(kv_dtype) {}

void DraftProposer::resize_kv_cache(int64_t num_blocks, int64_t max_num_seqs) {
  const ModelConfig& c = draft_.model->config();
  kv_layers_.clear();
  kv_memory_ = Buffer();
  // A proposal writes k positions from the first uncomputed one: at most this many new blocks.
  scratch_per_seq_ = (draft_.num_speculative_tokens + block_size_ - 1) / block_size_ + 1;
  scratch_first_ = num_blocks;
  max_num_seqs_ = std::max<int64_t>(1, max_num_seqs);
  const int64_t total = num_blocks + max_num_seqs_ * scratch_per_seq_;
  kv_layers_ = allocate_kv_cache(backend_, c, kv_dtype_, total, block_size_, "draft model KV cache", kv_memory_);
}

void DraftProposer::copy_blocks(const std::vector<std::pair<int32_t, int32_t>>& copies) {
  if (copies.empty()) return;
  for (auto& layer : kv_layers_) backend_.copy_blocks(layer, copies);
}

void DraftProposer::follow(const ForwardBatch& batch) {
  if (batch.token_ids.empty()) return;
  ForwardBatch b = batch;
  b.logits_rows.assign(1, static_cast<int32_t>(b.token_ids.size()) - 1);  // one row: the forward needs some
  logits_.resize(static_cast<size_t>(draft_.model->config().vocab_size));
  draft_.model->forward(b, kv_layers_, logits_.data());
}

std::vector<std::vector<int32_t>> DraftProposer::propose(const std::vector<DraftRequest>& requests) {
  const int k = draft_.num_speculative_tokens;
  const int64_t V = draft_.model->config().vocab_size, bs = block_size_;
  std::vector<std::vector<int32_t>> drafts(requests.size());
  for (size_t first = 0; first < requests.size(); first += static_cast<size_t>(max_num_seqs_)) {
    const size_t n = std::min(requests.size() - first, static_cast<size_t>(max_num_seqs_));
    // Per request: its block table for the k positions from its first uncomputed one (L - 1,
    // the token sampled last): the target's blocks while they hold computed tokens, then scratch.
    int64_t width = 0;
    for (size_t q = 0; q < n; ++q) {
      const int64_t L = static_cast<int64_t>(requests[first + q].tokens->size());
      width = std::max(width, (L - 1 + k - 1) / bs + 1);
    }
    std::vector<int32_t> tables(n * static_cast<size_t>(width), 0);
    for (size_t q = 0; q < n; ++q) {
      const DraftRequest& r = requests[first + q];
      const int64_t computed = static_cast<int64_t>(r.tokens->size()) - 1;
      const int64_t first_scratch = (computed + bs - 1) / bs;
      for (int64_t b = 0; b < width; ++b)
        tables[q * width + b] = b < first_scratch ? (*r.block_ids)[b]
                                                  : static_cast<int32_t>(scratch_first_ + static_cast<int64_t>(q) *
                                                                         scratch_per_seq_ + (b - first_scratch));
    }
    std::vector<int32_t> next(n);
    for (size_t q = 0; q < n; ++q) next[q] = requests[first + q].tokens->back();
    for (int j = 0; j < k; ++j) {
      ForwardBatch b;
      AttentionMetadata& m = b.attn;
      m.block_size = block_size_;
      m.num_seqs = static_cast<int32_t>(n);
      m.num_tokens = static_cast<int32_t>(n);
      m.max_blocks_per_seq = static_cast<int32_t>(width);
      m.block_tables = tables;
      m.query_start.push_back(0);
      for (size_t q = 0; q < n; ++q) {
        const int64_t pos = static_cast<int64_t>(requests[first + q].tokens->size()) - 1 + j;
        b.token_ids.push_back(next[q]);
        b.token_seq_len.push_back(static_cast<int32_t>(pos + 1));
        b.logits_rows.push_back(static_cast<int32_t>(q));
        m.positions.push_back(static_cast<int32_t>(pos));
        m.slot_mapping.push_back(static_cast<int64_t>(tables[q * width + pos / bs]) * bs + pos % bs);
        m.seq_lens.push_back(static_cast<int32_t>(pos + 1));
        m.query_start.push_back(static_cast<int32_t>(q + 1));
      }
      logits_.resize(n * static_cast<size_t>(V));
      draft_.model->forward(b, kv_layers_, logits_.data());
      for (size_t q = 0; q < n; ++q) {
        const float* row = logits_.data() + q * V;
        next[q] = static_cast<int32_t>(std::max_element(row, row + V) - row);  // greedy: the first maximum
        drafts[first + q].push_back(next[q]);
      }
    }
  }
  return drafts;
}

}  // namespace cserve
