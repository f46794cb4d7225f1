// Per-request block tables over a BlockPool, with vLLM V1's prefix caching:
// a request's full blocks are keyed by chained hashes; at admission the longest
// cached prefix of full blocks is reused; allocation is all-or-nothing.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "kv/block_hasher.h"
#include "kv/block_pool.h"
#include "sched/request.h"

namespace cserve {

struct ComputedBlocks {
  std::vector<int32_t> block_ids;
  int64_t num_tokens = 0;
};

class KVCacheManager {
 public:
  KVCacheManager(int64_t num_blocks, int block_size, bool enable_prefix_caching,
                 const std::string& hash_algo);

  int block_size() const { return block_size_; }
  const BlockPool& pool() const { return pool_; }
  double usage() const { return pool_.usage(); }

  // Extends request.block_hashes to cover every full block of its known tokens.
  void update_block_hashes(Request& request) const;

  // The longest cached prefix of full blocks, leaving at least one token to compute.
  // Counts prefix-cache queries and hits.
  ComputedBlocks find_computed_blocks(const Request& request);

  // Whether allocate_slots would succeed, without changing anything.
  bool can_allocate(const Request& request, int64_t num_new_tokens, const ComputedBlocks& computed) const;
  // Adds the cached blocks and enough new blocks for num_new_tokens more tokens
  // after the computed ones, then registers newly full blocks in the prefix cache.
  // Returns false (changing nothing) when blocks are short.
  bool allocate_slots(Request& request, int64_t num_new_tokens, const ComputedBlocks& computed);

  // For n > 1: gives `child` the blocks of `parent` that hold its first
  // num_tokens tokens: full blocks are shared by reference; a partial last block
  // is copied into a new block, recorded in copies (src, dst). Returns false when
  // no block is free for the copy.
  bool fork(const Request& parent, Request& child, int64_t num_tokens,
            std::vector<std::pair<int32_t, int32_t>>& copies);

  // Speculative decoding, after rejected draft tokens rolled the request back: returns the
  // blocks wholly beyond its num_computed_tokens to the pool (never prefix-cached ones: those
  // hold committed tokens only).
  void release_beyond_computed(const Request& request);

  // Frees the request's blocks. Blocks it registered in the prefix cache beyond its
  // num_computed_tokens (a chunk that was scheduled but never computed) leave the cache.
  void free(const Request& request);
  const std::vector<int32_t>& block_ids(const std::string& request_id) const;
  bool reset_prefix_cache() { return pool_.reset_prefix_cache(); }

  int64_t prefix_cache_queries() const { return queries_; }
  int64_t prefix_cache_hits() const { return hits_; }

 private:
  int64_t blocks_needed(const Request& request, int64_t num_new_tokens, const ComputedBlocks& computed) const;
  int64_t free_after_touch(const ComputedBlocks& computed) const;

  BlockPool pool_;
  BlockHasher hasher_;
  int block_size_;
  bool prefix_caching_;
  std::unordered_map<std::string, std::vector<int32_t>> tables_;
  std::unordered_map<std::string, int64_t> num_cached_blocks_;  // blocks registered in the cache
  int64_t queries_ = 0, hits_ = 0;
};

}  // namespace cserve
