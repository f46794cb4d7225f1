// Chained block hashes for the prefix cache: hash(parent hash, the block's
// token ids, extra key such as a cache salt), with vLLM's algorithm names.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kv/block_pool.h"

namespace cserve {

class BlockHasher {
 public:
  // algo: sha256, sha256_cbor, xxhash, xxhash_cbor; throws InvalidArgument otherwise.
  explicit BlockHasher(const std::string& algo);
  BlockHash hash(const BlockHash& parent, const int32_t* tokens, size_t num_tokens,
                 const std::string& extra) const;

 private:
  bool cbor_ = false;
  bool xxhash_ = false;
};

}  // namespace cserve
