// Hashes for prefix-cache block keys.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace cserve {

std::array<uint8_t, 32> sha256(const void* data, size_t n);
uint64_t xxh64(const void* data, size_t n, uint64_t seed = 0);

// Minimal CBOR (RFC 8949) encoding of the block-key tuple
// [parent_hash bytes, [token ids...], extra string or null].
std::vector<uint8_t> cbor_encode_block_key(const std::vector<uint8_t>& parent,
                                           const int32_t* tokens, size_t num_tokens,
                                           const std::string* extra);

}  // namespace cserve
