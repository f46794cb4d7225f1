#include "model/micro_batches.h"

#include <algorithm>

namespace cserve {

namespace {

// Sequences [s0, s1) of `b` as a batch of their own.
MicroBatch slice(const ForwardBatch& b, int32_t s0, int32_t s1, int64_t first_logit) {
  const AttentionMetadata& a = b.attn;
  const int32_t t0 = a.query_start[s0], t1 = a.query_start[s1];
  MicroBatch m;
  m.first_token = t0;
  m.first_logit = first_logit;
  ForwardBatch& out = m.batch;
  out.token_ids.assign(b.token_ids.begin() + t0, b.token_ids.begin() + t1);
  out.token_seq_len.assign(b.token_seq_len.begin() + t0, b.token_seq_len.begin() + t1);
  AttentionMetadata& o = out.attn;
  o.num_seqs = s1 - s0;
  o.num_tokens = t1 - t0;
  o.block_size = a.block_size;
  o.max_blocks_per_seq = a.max_blocks_per_seq;
  for (int32_t s = s0; s <= s1; ++s) o.query_start.push_back(a.query_start[s] - t0);
  o.seq_lens.assign(a.seq_lens.begin() + s0, a.seq_lens.begin() + s1);
  const auto row = static_cast<ptrdiff_t>(a.max_blocks_per_seq);
  o.block_tables.assign(a.block_tables.begin() + s0 * row, a.block_tables.begin() + s1 * row);
  o.slot_mapping.assign(a.slot_mapping.begin() + t0, a.slot_mapping.begin() + t1);
  o.positions.assign(a.positions.begin() + t0, a.positions.begin() + t1);
  // logits_rows are token indices in increasing order (one per sequence that samples).
  for (size_t i = static_cast<size_t>(first_logit); i < b.logits_rows.size(); ++i) {
    if (b.logits_rows[i] >= t1) break;
    out.logits_rows.push_back(b.logits_rows[i] - t0);
  }
  return m;
}

}  // namespace

std::vector<MicroBatch> split_micro_batches(const ForwardBatch& batch, int count) {
  const AttentionMetadata& a = batch.attn;
  const int32_t seqs = a.num_seqs, tokens = a.num_tokens;
  count = std::max(1, std::min(count, seqs));
  std::vector<MicroBatch> out;
  if (count == 1) {
    out.push_back(MicroBatch{batch, 0, 0});
    return out;
  }
  int32_t s0 = 0;
  int64_t logit = 0;
  for (int g = 0; g < count && s0 < seqs; ++g) {
    // End this group at the first sequence boundary at or past its share of the tokens, leaving
    // at least one sequence for each group still to come.
    const int64_t target = static_cast<int64_t>(tokens) * (g + 1) / count;
    int32_t s1 = s0 + 1;
    while (s1 < seqs - (count - g - 1) && a.query_start[s1] < target) ++s1;
    if (g == count - 1) s1 = seqs;
    out.push_back(slice(batch, s0, s1, logit));
    logit += static_cast<int64_t>(out.back().batch.logits_rows.size());
    s0 = s1;
  }
  return out;
}

}  // namespace cserve
