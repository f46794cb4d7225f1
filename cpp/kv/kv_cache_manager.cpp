#include "kv/kv_cache_manager.h"

#include <algorithm>

#include "cserve/error.h"

namespace cserve {

KVCacheManager::KVCacheManager(int64_t num_blocks, int block_size, bool enable_prefix_caching,
                               const std::string& hash_algo)
    : pool_(num_blocks), hasher_(hash_algo), block_size_(block_size), prefix_caching_(enable_prefix_caching) {
  if (block_size <= 0) throw InvalidArgument("block_size must be positive");
}

void KVCacheManager::update_block_hashes(Request& request) const {
  if (!prefix_caching_) return;
  size_t num_full = static_cast<size_t>(request.num_tokens() / block_size_);
  while (request.block_hashes.size() < num_full) {
    size_t i = request.block_hashes.size();
    const BlockHash empty;
    const BlockHash& parent = i == 0 ? empty : request.block_hashes[i - 1];
    request.block_hashes.push_back(hasher_.hash(parent, request.all_token_ids.data() + i * block_size_,
                                                static_cast<size_t>(block_size_), request.cache_salt));
  }
}

ComputedBlocks KVCacheManager::find_computed_blocks(const Request& request) {
  ComputedBlocks out;
  // Prompt logprobs need logits at every prompt position, so such requests skip the cache.
  if (!prefix_caching_ || request.wants_prompt_logprobs()) return out;
  int64_t max_blocks = (request.num_tokens() - 1) / block_size_;
  for (int64_t i = 0; i < max_blocks && i < static_cast<int64_t>(request.block_hashes.size()); ++i) {
    int32_t id = pool_.lookup(request.block_hashes[i]);
    if (id < 0) break;
    out.block_ids.push_back(id);
  }
  out.num_tokens = static_cast<int64_t>(out.block_ids.size()) * block_size_;
  queries_ += request.num_tokens();
  hits_ += out.num_tokens;
  return out;
}

int64_t KVCacheManager::blocks_needed(const Request& request, int64_t num_new_tokens,
                                      const ComputedBlocks& computed) const {
  auto it = tables_.find(request.id);
  int64_t have = it == tables_.end() ? 0 : static_cast<int64_t>(it->second.size());
  int64_t total_tokens = request.num_computed_tokens + computed.num_tokens + num_new_tokens;
  int64_t total_blocks = (total_tokens + block_size_ - 1) / block_size_;
  return std::max<int64_t>(0, total_blocks - have - static_cast<int64_t>(computed.block_ids.size()));
}

int64_t KVCacheManager::free_after_touch(const ComputedBlocks& computed) const {
  // Cached blocks with no reference sit in the free queue; touching them takes them out.
  int64_t n = pool_.num_free_blocks();
  for (int32_t id : computed.block_ids)
    if (pool_.ref_count(id) == 0) --n;
  return n;
}

bool KVCacheManager::can_allocate(const Request& request, int64_t num_new_tokens,
                                  const ComputedBlocks& computed) const {
  return blocks_needed(request, num_new_tokens, computed) <= free_after_touch(computed);
}

bool KVCacheManager::allocate_slots(Request& request, int64_t num_new_tokens, const ComputedBlocks& computed) {
  if (!can_allocate(request, num_new_tokens, computed)) return false;
  int64_t need = blocks_needed(request, num_new_tokens, computed);
  auto& table = tables_[request.id];
  pool_.touch(computed.block_ids);
  table.insert(table.end(), computed.block_ids.begin(), computed.block_ids.end());
  auto fresh = pool_.allocate(need);
  table.insert(table.end(), fresh.begin(), fresh.end());

  if (prefix_caching_) {
    // Register blocks that will be full once this step's tokens are computed.
    int64_t total_tokens = request.num_computed_tokens + computed.num_tokens + num_new_tokens;
    int64_t num_full = std::min<int64_t>(total_tokens / block_size_, static_cast<int64_t>(request.block_hashes.size()));
    int64_t& done = num_cached_blocks_[request.id];
    done = std::max<int64_t>(done, static_cast<int64_t>(computed.block_ids.size()));
    for (int64_t i = done; i < num_full; ++i) pool_.set_cached(table[i], request.block_hashes[i]);
    done = std::max(done, num_full);
  }
  return true;
}

bool KVCacheManager::fork(const Request& parent, Request& child, int64_t num_tokens,
                          std::vector<std::pair<int32_t, int32_t>>& copies) {
  const auto& src = tables_.at(parent.id);
  int64_t num_full = num_tokens / block_size_;
  bool partial = num_tokens % block_size_ != 0;
  if (partial && pool_.num_free_blocks() < 1) return false;
  std::vector<int32_t> shared(src.begin(), src.begin() + num_full);
  pool_.touch(shared);
  auto& table = tables_[child.id];
  table = shared;
  if (partial) {
    int32_t dst = pool_.allocate(1)[0];
    copies.emplace_back(src[num_full], dst);
    table.push_back(dst);
  }
  num_cached_blocks_[child.id] = num_full;
  return true;
}

void KVCacheManager::free(const Request& request) {
  auto it = tables_.find(request.id);
  if (it == tables_.end()) return;
  const auto& table = it->second;
  const int64_t num_valid = request.num_computed_tokens / block_size_;
  const int64_t num_registered = std::min<int64_t>(num_cached_blocks_[request.id], static_cast<int64_t>(table.size()));
  for (int64_t i = num_valid; i < num_registered; ++i)
    if (pool_.ref_count(table[i]) == 1) pool_.uncache(table[i]);
  std::vector<int32_t> reversed(it->second.rbegin(), it->second.rend());
  pool_.release(reversed);
  tables_.erase(it);
  num_cached_blocks_.erase(request.id);
}

void KVCacheManager::release_beyond_computed(const Request& request) {
  auto it = tables_.find(request.id);
  if (it == tables_.end()) return;
  auto& table = it->second;
  const size_t keep = static_cast<size_t>((request.num_computed_tokens + block_size_ - 1) / block_size_);
  if (table.size() <= keep) return;
  std::vector<int32_t> beyond(table.rbegin(), table.rend() - static_cast<std::ptrdiff_t>(keep));
  pool_.release(beyond);
  table.resize(keep);
}

const std::vector<int32_t>& KVCacheManager::block_ids(const std::string& request_id) const {
  static const std::vector<int32_t> kEmpty;
  auto it = tables_.find(request_id);
  return it == tables_.end() ? kEmpty : it->second;
}

}  // namespace cserve
