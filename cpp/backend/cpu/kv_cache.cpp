// Writes into and copies between blocks of the paged KV cache.
#include <algorithm>
#include <cstring>
#include <string>

#include "backend/cpu/kernels.h"
#include "cserve/error.h"

namespace cserve::cpu {

namespace {

void check_layer(const KVLayer& cache, const char* what) {
  if (cache.k.shape.size() != 4 || cache.k.shape != cache.v.shape) {
    throw InvalidArgument(std::string(what) +
                          ": k and v must both be [num_blocks][num_kv_heads][block_size][head_dim]");
  }
}

// Where head h of the token in `slot` goes in part (K or V), and the bytes of such a row.
char* row_of(const Tensor& part, int64_t slot, int64_t h) {
  const int64_t kv_heads = part.shape[1], block_size = part.shape[2], dim = part.shape[3];
  const int64_t row = (slot / block_size * kv_heads + h) * block_size + slot % block_size;
  return static_cast<char*>(part.data) + row * dim * static_cast<int64_t>(dtype_size(part.dtype));
}
int64_t row_bytes(const Tensor& part) { return part.shape[3] * static_cast<int64_t>(dtype_size(part.dtype)); }

}  // namespace

void check_kv_rows(int64_t ld, const int64_t* slot_mapping, int64_t tokens, const KVLayer& cache) {
  check_layer(cache, "write_kv");
  if (ld < cache.k.shape[1] * cache.k.shape[3]) throw InvalidArgument("write_kv: ld < num_kv_heads * head_dim");
  const int64_t slots = cache.k.shape[0] * cache.k.shape[2];
  for (int64_t t = 0; t < tokens; ++t) {
    if (slot_mapping[t] < 0 || slot_mapping[t] >= slots)
      throw InvalidArgument("write_kv: slot " + std::to_string(slot_mapping[t]) + " out of range");
  }
}

void write_kv_head(const float* k, const float* v, int64_t ld, const int64_t* slot_mapping, int64_t t0, int64_t t1,
                   int64_t h, KVLayer& cache) {
  const int64_t dim = cache.k.shape[3];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t slot = slot_mapping[t];
    convert_from_f32(k + t * ld + h * dim, row_of(cache.k, slot, h), cache.k.dtype, static_cast<size_t>(dim));
    convert_from_f32(v + t * ld + h * dim, row_of(cache.v, slot, h), cache.v.dtype, static_cast<size_t>(dim));
  }
}

void write_kv(const float* k, const float* v, int64_t tokens, int64_t ld, const int64_t* slot_mapping,
              KVLayer& cache, ThreadPool& pool) {
  // Every slot is checked before anything is written: a bad batch leaves the cache as it was.
  check_kv_rows(ld, slot_mapping, tokens, cache);
  const int64_t kv_heads = cache.k.shape[1], dim = cache.k.shape[3];
  // The rows are scattered over the cache and mostly not in any cache level: their lines are
  // asked for (for writing) kAhead tokens early, so the misses overlap instead of queueing.
  constexpr int64_t kAhead = 8;
  auto prefetch_rows = [&](int64_t t) {
    for (int64_t h = 0; h < kv_heads; ++h) {
      for (const Tensor* part : {&cache.k, &cache.v}) {
        const char* p = row_of(*part, slot_mapping[t], h);
        for (int64_t b = 0; b < row_bytes(*part); b += 64) __builtin_prefetch(p + b, 1);
      }
    }
  };
  // A prefill's tokens over the threads; a decode step's few on one.
  pool.parallel_for(tokens, row_grain(2 * kv_heads * dim), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < std::min(end, begin + kAhead); ++t) prefetch_rows(t);
    for (int64_t t = begin; t < end; ++t) {
      if (t + kAhead < end) prefetch_rows(t + kAhead);
      for (int64_t h = 0; h < kv_heads; ++h) write_kv_head(k, v, ld, slot_mapping, t, t + 1, h, cache);
    }
  });
}

void copy_blocks(KVLayer& cache, const std::vector<std::pair<int32_t, int32_t>>& pairs) {
  check_layer(cache, "copy_blocks");
  const int64_t num_blocks = cache.k.shape[0];
  const int64_t elems = cache.k.shape[1] * cache.k.shape[2] * cache.k.shape[3];
  const size_t kbytes = static_cast<size_t>(elems) * dtype_size(cache.k.dtype);
  const size_t vbytes = static_cast<size_t>(elems) * dtype_size(cache.v.dtype);
  for (const auto& [src, dst] : pairs) {
    if (src < 0 || src >= num_blocks || dst < 0 || dst >= num_blocks) {
      throw InvalidArgument("copy_blocks: block " + std::to_string(src < 0 || src >= num_blocks ? src : dst) +
                            " out of range");
    }
    if (src == dst) continue;
    std::memcpy(static_cast<char*>(cache.k.data) + dst * kbytes,
                static_cast<const char*>(cache.k.data) + src * kbytes, kbytes);
    std::memcpy(static_cast<char*>(cache.v.data) + dst * vbytes,
                static_cast<const char*>(cache.v.data) + src * vbytes, vbytes);
  }
}

}  // namespace cserve::cpu
