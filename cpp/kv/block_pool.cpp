#include "kv/block_pool.h"

#include "cserve/error.h"

namespace cserve {

BlockPool::BlockPool(int64_t num_blocks) : blocks_(static_cast<size_t>(num_blocks)) {
  if (num_blocks <= 0) throw InvalidArgument("the KV cache needs at least one block");
  for (int32_t i = 0; i < num_blocks; ++i) push_back_free(i);
}

double BlockPool::usage() const {
  return 1.0 - static_cast<double>(num_free_) / static_cast<double>(blocks_.size());
}

void BlockPool::push_back_free(int32_t id) {
  Block& b = blocks_[id];
  b.prev = tail_;
  b.next = -1;
  if (tail_ >= 0) blocks_[tail_].next = id; else head_ = id;
  tail_ = id;
  b.in_free_queue = true;
  ++num_free_;
}

void BlockPool::remove_free(int32_t id) {
  Block& b = blocks_[id];
  if (b.prev >= 0) blocks_[b.prev].next = b.next; else head_ = b.next;
  if (b.next >= 0) blocks_[b.next].prev = b.prev; else tail_ = b.prev;
  b.prev = b.next = -1;
  b.in_free_queue = false;
  --num_free_;
}

void BlockPool::evict(int32_t id) {
  Block& b = blocks_[id];
  if (b.hash.empty()) return;
  auto it = cached_.find(b.hash);
  if (it != cached_.end() && it->second == id) cached_.erase(it);
  b.hash.clear();
}

std::vector<int32_t> BlockPool::allocate(int64_t n) {
  if (n > num_free_)
    throw OutOfMemory("KV cache: " + std::to_string(n) + " blocks wanted, " + std::to_string(num_free_) + " free");
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    int32_t id = head_;
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
    if (b.ref_count == 0 && b.in_free_queue) remove_free(id);
    ++b.ref_count;
  }
}

void BlockPool::release(const std::vector<int32_t>& block_ids) {
  for (int32_t id : block_ids) {
    Block& b = blocks_[id];
    if (b.ref_count <= 0) throw Error("KV block " + std::to_string(id) + " released twice");
    if (--b.ref_count == 0) push_back_free(id);
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
}

bool BlockPool::reset_prefix_cache() {
  if (num_free_ != static_cast<int64_t>(blocks_.size())) return false;
  for (auto& b : blocks_) b.hash.clear();
  cached_.clear();
  return true;
}

}  // namespace cserve
