// The pool of KV blocks: reference counts, the prefix-cache map from block hash
// to block, and the free blocks. A free block that still holds a cached hash stays
// findable until it is handed out again (evicted on reuse).
//
// Free blocks wait in three queues, taken from in this order:
// 1. freed blocks that hold no cached hash, oldest first: they hold nothing worth keeping,
//    and their memory is already in use, so a steady load cycles over the same blocks;
// 2. blocks never handed out yet, in id order;
// 3. freed blocks that hold a cached hash, least recently freed first (LRU eviction).
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

  // Takes n free blocks in the order above, evicting their cached hashes. Caller checks
  // num_free_blocks() first; throws OutOfMemory otherwise.
  std::vector<int32_t> allocate(int64_t n);
  // Adds a reference to cached blocks found by lookup(); removes them from the free queue.
  void touch(const std::vector<int32_t>& block_ids);
  // Drops one reference from each block, in order; blocks reaching zero join the tail of
  // their free queue (so pass a request's blocks tail-first to evict them first).
  void release(const std::vector<int32_t>& block_ids);

  // Prefix cache.
  int32_t lookup(const BlockHash& hash) const;  // -1 when absent
  void set_cached(int32_t block_id, const BlockHash& hash);  // no-op if the hash is already cached
  void uncache(int32_t block_id) { evict(block_id); }
  int32_t ref_count(int32_t block_id) const { return blocks_[block_id].ref_count; }
  // Forgets every cached hash; fails (returns false) while any block is in use.
  bool reset_prefix_cache();

 private:
  enum Queue : int8_t { kNone = -1, kUncached = 0, kFresh = 1, kCached = 2 };
  struct Block {
    int32_t ref_count = 0;
    int32_t prev = -1, next = -1;  // free-queue links
    Queue queue = kNone;           // the free queue holding it
    BlockHash hash;                // empty: not cached
  };
  struct List {
    int32_t head = -1, tail = -1;
  };
  void push_back_free(int32_t id, Queue q);
  void remove_free(int32_t id);
  void evict(int32_t id);

  std::vector<Block> blocks_;
  List queues_[3];
  int64_t num_free_ = 0;
  std::unordered_map<BlockHash, int32_t> cached_;
};

}  // namespace cserve
