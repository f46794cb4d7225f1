#include "engine/proposer_kv_cache.h"

#include <algorithm>

#include "engine/kv_cache_memory.h"

namespace cserve {

ProposerKVCache::ProposerKVCache(Backend& backend, const ModelConfig& layout, int block_size, DType kv_dtype,
                                 int num_speculative_tokens, std::string what)
    : backend_(backend),
      layout_(layout),
      block_size_(block_size),
      kv_dtype_(kv_dtype),
      num_speculative_tokens_(num_speculative_tokens),
      what_(std::move(what)) {}

namespace {
// A proposal writes k positions from the first uncomputed one: at most this many new blocks.
int64_t scratch_blocks_per_seq(int num_speculative_tokens, int block_size) {
  return (num_speculative_tokens + block_size - 1) / block_size + 1;
}
}  // namespace

int64_t ProposerKVCache::num_scratch_blocks(int num_speculative_tokens, int block_size, int64_t max_num_seqs) {
  return std::max<int64_t>(1, max_num_seqs) * scratch_blocks_per_seq(num_speculative_tokens, block_size);
}

int64_t ProposerKVCache::bytes_per_block() const {
  return kv_cache_bytes_per_block(layout_, kv_dtype_, block_size_);
}

void ProposerKVCache::resize(int64_t num_blocks, int64_t max_num_seqs) {
  layers_.clear();
  memory_ = Buffer();
  scratch_per_seq_ = scratch_blocks_per_seq(num_speculative_tokens_, block_size_);
  scratch_first_ = num_blocks;
  max_num_seqs_ = std::max<int64_t>(1, max_num_seqs);
  const int64_t total = num_blocks + num_scratch_blocks(num_speculative_tokens_, block_size_, max_num_seqs_);
  layers_ = allocate_kv_cache(backend_, layout_, kv_dtype_, total, block_size_, what_, memory_);
}

void ProposerKVCache::copy_blocks(const std::vector<std::pair<int32_t, int32_t>>& copies) {
  if (copies.empty()) return;
  for (auto& layer : layers_) backend_.copy_blocks(layer, copies);
}

ProposerKVCache::Tables ProposerKVCache::proposal_tables(const std::vector<const std::vector<int32_t>*>& block_ids,
                                                         const std::vector<int64_t>& computed) const {
  const int64_t bs = block_size_, k = num_speculative_tokens_;
  Tables t;
  for (int64_t c : computed) t.width = std::max(t.width, (c + k - 1) / bs + 1);
  t.ids.assign(computed.size() * static_cast<size_t>(t.width), 0);
  for (size_t q = 0; q < computed.size(); ++q) {
    const int64_t first_scratch = (computed[q] + bs - 1) / bs;
    for (int64_t b = 0; b < t.width; ++b)
      t.ids[q * t.width + b] =
          b < first_scratch ? (*block_ids[q])[b]
                            : static_cast<int32_t>(scratch_first_ + static_cast<int64_t>(q) * scratch_per_seq_ +
                                                   (b - first_scratch));
  }
  return t;
}

ForwardBatch ProposerKVCache::one_token_batch(const Tables& tables, const std::vector<int32_t>& tokens,
                                              const std::vector<int64_t>& positions) const {
  const size_t n = tokens.size();
  const int64_t bs = block_size_;
  ForwardBatch b;
  AttentionMetadata& m = b.attn;
  m.block_size = block_size_;
  m.num_seqs = static_cast<int32_t>(n);
  m.num_tokens = static_cast<int32_t>(n);
  m.max_blocks_per_seq = static_cast<int32_t>(tables.width);
  m.block_tables = tables.ids;
  m.query_start.push_back(0);
  for (size_t q = 0; q < n; ++q) {
    const int64_t pos = positions[q];
    b.token_ids.push_back(tokens[q]);
    b.token_seq_len.push_back(static_cast<int32_t>(pos + 1));
    b.logits_rows.push_back(static_cast<int32_t>(q));
    m.positions.push_back(static_cast<int32_t>(pos));
    m.slot_mapping.push_back(static_cast<int64_t>(tables.ids[q * tables.width + pos / bs]) * bs + pos % bs);
    m.seq_lens.push_back(static_cast<int32_t>(pos + 1));
    m.query_start.push_back(static_cast<int32_t>(q + 1));
  }
  return b;
}

ForwardBatch ProposerKVCache::span_batch(const Tables& tables, const std::vector<const std::vector<int32_t>*>& tokens,
                                         const std::vector<int64_t>& begin, const std::vector<int64_t>& end) const {
  const int64_t bs = block_size_;
  ForwardBatch b;
  AttentionMetadata& m = b.attn;
  m.block_size = block_size_;
  m.max_blocks_per_seq = static_cast<int32_t>(tables.width);
  m.query_start.push_back(0);
  for (size_t q = 0; q < tokens.size(); ++q) {
    if (begin[q] >= end[q]) continue;
    const int32_t* row = tables.ids.data() + q * tables.width;
    m.block_tables.insert(m.block_tables.end(), row, row + tables.width);
    for (int64_t pos = begin[q]; pos < end[q]; ++pos) {
      b.token_ids.push_back((*tokens[q])[pos]);
      b.token_seq_len.push_back(static_cast<int32_t>(end[q]));
      m.positions.push_back(static_cast<int32_t>(pos));
      m.slot_mapping.push_back(static_cast<int64_t>(row[pos / bs]) * bs + pos % bs);
    }
    if (end[q] == static_cast<int64_t>(tokens[q]->size()))
      b.logits_rows.push_back(static_cast<int32_t>(b.token_ids.size()) - 1);
    m.query_start.push_back(static_cast<int32_t>(b.token_ids.size()));
    m.seq_lens.push_back(static_cast<int32_t>(end[q]));
    ++m.num_seqs;
  }
  m.num_tokens = static_cast<int32_t>(b.token_ids.size());
  return b;
}

}  // namespace cserve
