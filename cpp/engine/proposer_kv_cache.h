// The KV cache of a proposer that runs beside the target model (a draft model, an EAGLE head):
// laid out as the target's (the same block count and size, so the target's block tables and
// slots address it), plus scratch blocks past them. The proposer writes the committed positions of
// a request through the target's block table (an EAGLE head after every step, a draft model
// lazily, catching up when it proposes). A proposal writes past a request's computed tokens into
// scratch blocks of its own: those positions are written again once committed.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "core/buffer.h"
#include "loader/model_config.h"
#include "model/llama_model.h"

namespace cserve {

class ProposerKVCache {
 public:
  // layout: the proposer's layers, KV heads and head_dim; k: the positions one proposal writes.
  ProposerKVCache(Backend& backend, const ModelConfig& layout, int block_size, DType kv_dtype,
                  int num_speculative_tokens, std::string what);
  // The scratch blocks resize() adds to the target's block count.
  static int64_t num_scratch_blocks(int num_speculative_tokens, int block_size, int64_t max_num_seqs);
  // Bytes of one block (every layer's keys and values).
  int64_t bytes_per_block() const;
  // The target's num_blocks (its graph pad block included) plus scratch for up to max_num_seqs
  // requests' proposals at once (contents are lost).
  void resize(int64_t num_blocks, int64_t max_num_seqs);
  void copy_blocks(const std::vector<std::pair<int32_t, int32_t>>& copies);
  std::vector<KVCacheLayer>& layers() { return layers_; }
  size_t bytes() const { return memory_.size(); }
  // How many requests one batch of proposal steps may hold (their scratch slots).
  int64_t max_num_seqs() const { return max_num_seqs_; }

  // Block tables of proposal steps for up to max_num_seqs() requests: request q (block_ids[q],
  // computed[q] its first uncomputed position) keeps the target's blocks below that position's
  // first block that holds no computed token, then scratch slot q's blocks, for positions up to
  // computed[q] + num_speculative_tokens - 1.
  struct Tables {
    int64_t width = 0;
    std::vector<int32_t> ids;  // [requests][width]
  };
  Tables proposal_tables(const std::vector<const std::vector<int32_t>*>& block_ids,
                         const std::vector<int64_t>& computed) const;
  // One token per request, request q at positions[q] (its sequence then holds positions[q] + 1
  // tokens), every row a logits row.
  ForwardBatch one_token_batch(const Tables& tables, const std::vector<int32_t>& tokens,
                               const std::vector<int64_t>& positions) const;
  // Request q's tokens at positions [begin[q], end[q]) (its sequence then holds end[q] tokens),
  // requests with none left out; a logits row at the last token of each request whose end[q] is
  // its whole length (tokens[q]->size()), in request order.
  ForwardBatch span_batch(const Tables& tables, const std::vector<const std::vector<int32_t>*>& tokens,
                          const std::vector<int64_t>& begin, const std::vector<int64_t>& end) const;

 private:
  Backend& backend_;
  ModelConfig layout_;
  int block_size_;
  DType kv_dtype_;
  int num_speculative_tokens_;
  std::string what_;
  Buffer memory_;
  std::vector<KVCacheLayer> layers_;
  int64_t scratch_first_ = 0;  // the first scratch block
  int64_t scratch_per_seq_ = 0;
  int64_t max_num_seqs_ = 1;
};

}  // namespace cserve
