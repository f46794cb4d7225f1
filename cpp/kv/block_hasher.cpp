#include "kv/block_hasher.h"

#include <cstring>

#include "cserve/error.h"
#include "util/hash.h"

namespace cserve {

BlockHasher::BlockHasher(const std::string& algo) {
  if (algo == "sha256") {
  } else if (algo == "sha256_cbor") {
    cbor_ = true;
  } else if (algo == "xxhash") {
    xxhash_ = true;
  } else if (algo == "xxhash_cbor") {
    xxhash_ = cbor_ = true;
  } else {
    throw InvalidArgument("prefix_caching_hash_algo " + algo +
                          " is not one of sha256, sha256_cbor, xxhash, xxhash_cbor");
  }
}

BlockHash BlockHasher::hash(const BlockHash& parent, const int32_t* tokens, size_t num_tokens,
                            const std::string& extra) const {
  std::vector<uint8_t> bytes;
  if (cbor_) {
    std::vector<uint8_t> p(parent.begin(), parent.end());
    bytes = cbor_encode_block_key(p, tokens, num_tokens, extra.empty() ? nullptr : &extra);
  } else {
    // parent digest | token ids (int32 LE) | extra; lengths are fixed or last, so unambiguous.
    bytes.resize(1 + parent.size() + num_tokens * 4 + extra.size());
    bytes[0] = static_cast<uint8_t>(parent.size());
    std::memcpy(bytes.data() + 1, parent.data(), parent.size());
    if (num_tokens) std::memcpy(bytes.data() + 1 + parent.size(), tokens, num_tokens * 4);  // tokens may be null
    std::memcpy(bytes.data() + 1 + parent.size() + num_tokens * 4, extra.data(), extra.size());
  }
  if (xxhash_) {
    uint64_t h = xxh64(bytes.data(), bytes.size());
    return BlockHash(reinterpret_cast<const char*>(&h), sizeof(h));
  }
  auto d = sha256(bytes.data(), bytes.size());
  return BlockHash(reinterpret_cast<const char*>(d.data()), d.size());
}

}  // namespace cserve
