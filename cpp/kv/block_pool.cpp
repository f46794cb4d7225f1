#include "kv/block_pool.h"

#include "cserve/error.h"

namespace cserve {

BlockPool::BlockPool(int64_t num_blocks) : blocks_(static_cast<size_t>(num_blocks)) {
  if (num_blocks <= 0) throw InvalidArgument("the KV cache needs at least one block");
  for (int32_t i = 0; i < num_blocks; ++i) push_back_free(i, kFresh);
}

double BlockPool::usage() const {
  return 1.0 - static_cast<double>(num_free_) / static_cast<double>(blocks_.size());
}

void BlockPool::push_back_free(int32_t id, Queue q) {
  Block& b = blocks_[id];
  List& l = queues_[q];
  b.prev = l.tail;
  b.next = -1;
  if (l.tail >= 0) blocks_[l.tail].next = id; else l.head = id;
  l.tail = id;
  b.queue = q;
  ++num_free_;
}

void BlockPool::remove_free(int32_t id) {
  Block& b = blocks_[id];
  List& l = queues_[b.queue];
  if (b.prev >= 0) blocks_[b.prev].next = b.next; else l.head = b.next;
  if (b.next >= 0) blocks_[b.next].prev = b.prev; else l.tail = b.prev;
  b.prev = b.next = -1;
  b.queue = kNone;
  --num_free_;
}

void BlockPool::evict(int32_t id) {
  Block& b = blocks_[id];
  if (b.hash.empty()) return;
  auto it = cached_.find(b.hash);
  if (it != cached_.end() && it->second == id) cached_.erase(it);
  b.hash.clear();
  if (b.queue == kCached) {  // free and no longer cached: first in line for reuse
    remove_free(id);
    push_back_free(id, kUncached);
  }
}

std::vector<int32_t> BlockPool::allocate(int64_t n) {
  if (n > num_free_)
    throw OutOfMemory("KV cache: " + std::to_string(n) + " blocks wanted, " + std::to_string(num_free_) + " free");
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    int32_t id = -1;
    for (const List& l : queues_)
      if ((id = l.head) >= 0) break;
    remove_free(id);
    evict(id);
    blocks_[id].ref_count = 1;
    out.push_back(id);
  }
  return out;
}

void BlockPool::touch(const std::vector<int32_t>& block_ids) {
  for (int32_t id : block_ids) {
    Block& b = blocks_[id];
    if (b.ref_count == 0 && b.queue != kNone) remove_free(id);
    ++b.ref_count;
  }
}

void BlockPool::release(const std::vector<int32_t>& block_ids) {
  for (int32_t id : block_ids) {
    Block& b = blocks_[id];
    if (b.ref_count <= 0) throw Error("KV block " + std::to_string(id) + " released twice");
    if (--b.ref_count == 0) push_back_free(id, b.hash.empty() ? kUncached : kCached);
  }
}

int32_t BlockPool::lookup(const BlockHash& hash) const {
  auto it = cached_.find(hash);
  return it == cached_.end() ? -1 : it->second;
}

void BlockPool::set_cached(int32_t block_id, const BlockHash& hash) {
  Block& b = blocks_[block_id];
  if (!b.hash.empty() || cached_.count(hash)) return;
  b.hash = hash;
  cached_.emplace(hash, block_id);
  if (b.queue != kNone) {  // a free block (callers cache blocks in use; keep the queues right anyway)
    remove_free(block_id);
    push_back_free(block_id, kCached);
  }
}

bool BlockPool::reset_prefix_cache() {
  if (num_free_ != static_cast<int64_t>(blocks_.size())) return false;
  // Oldest first, the formerly cached blocks join the uncached queue.
  while (queues_[kCached].head >= 0) evict(queues_[kCached].head);
  cached_.clear();
  return true;
}

}  // namespace cserve
