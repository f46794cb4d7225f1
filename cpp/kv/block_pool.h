// The pool of KV blocks: reference counts, the prefix-cache map from block hash
// to block, and the LRU queue of free blocks. A free block that still holds a
// cached hash stays findable until it is handed out again (evicted on reuse).
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace cserve {

using BlockHash = std::string;  // raw digest bytes

class BlockPool {
 public:
  explicit BlockPool(int64_t num_blocks);

  int64_t num_blocks() const { return static_cast<int64_t>(blocks_.size()); }
  int64_t num_free_blocks() const { return num_free_; }
  double usage() const;

  // Takes n blocks from the head of the free queue (oldest first), evicting their
  // cached hashes. Caller checks num_free_blocks() first; throws OutOfMemory otherwise.
  std::vector<int32_t> allocate(int64_t n);
  // Adds a reference to cached blocks found by lookup(); removes them from the free queue.
  void touch(const std::vector<int32_t>& block_ids);
  // Drops one reference from each block, in order; blocks reaching zero join the
  // tail of the free queue (so pass a request's blocks tail-first to evict them first).
  void release(const std::vector<int32_t>& block_ids);

  // Prefix cache.
  int32_t lookup(const BlockHash& hash) const;  // -1 when absent
  void set_cached(int32_t block_id, const BlockHash& hash);  // no-op if the hash is already cached
  void uncache(int32_t block_id) { evict(block_id); }
  int32_t ref_count(int32_t block_id) const { return blocks_[block_id].ref_count; }
  // Forgets every cached hash; fails (returns false) while any block is in use.
  bool reset_prefix_cache();

 private:
  struct Block {
    int32_t ref_count = 0;
    int32_t prev = -1, next = -1;  // free-queue links
    bool in_free_queue = false;
    BlockHash hash;                // empty: not cached
  };
  void push_back_free(int32_t id);
  void remove_free(int32_t id);
  void evict(int32_t id);

  std::vector<Block> blocks_;
  int32_t head_ = -1, tail_ = -1;
  int64_t num_free_ = 0;
  std::unordered_map<BlockHash, int32_t> cached_;
};

}  // namespace cserve
