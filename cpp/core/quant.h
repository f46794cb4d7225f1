// ggml's tensor types (as stored in GGUF files): block layouts, sizes and
// dequantization, plus cserve's own in-memory form of quantized weights.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace cserve {

// ggml_type ids, as written in GGUF tensor infos.
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15, BF16 = 30,
};

const char* ggml_type_name(GgmlType t);
// Elements per block and bytes per block; block 0 means "not a type cserve reads".
int64_t ggml_block_elems(GgmlType t);
int64_t ggml_block_bytes(GgmlType t);
bool ggml_type_supported(GgmlType t);
// Bytes of one row of `cols` elements (cols must be a multiple of the block size).
size_t ggml_row_bytes(GgmlType t, int64_t cols);

// Dequantizes `n` elements (a multiple of the block size) of type t to f32.
void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n);

// cserve's quantized weight rows: blocks of 32 values w = d * u + m with unsigned
// codes u of 4 bits (packed) or 8 bits. Every ggml 4-bit format (Q4_0, Q4_1, Q4_K)
// maps onto 4-bit blocks exactly, the 5- and 8-bit ones (Q5_0, Q5_1, Q5_K, Q8_0) onto
// 8-bit blocks exactly; anything else is dequantized and requantized to 8 bits.
//
// 4-bit codes are stored per pair of blocks (64 values) in 32 bytes: byte j holds
// value j in its low nibble and value j + 32 in its high nibble, so unpacking the 32
// bytes into 64 lanes yields the pair in natural order.
constexpr int64_t kQBlock = 32;

// 4 for Q4_0 / Q4_1 / Q4_K, 8 for any other type.
int qblock_bits(GgmlType t);
// True when t's blocks map to (d, m) pairs that f16 holds exactly (Q4_0, Q4_1, Q5_0, Q5_1,
// Q8_0: f16 scales in the file, offsets a power-of-two multiple of them or f16 too).
bool qblock_scales_are_f16(GgmlType t);
// Bytes of codes for one row of k_padded values (k_padded a multiple of 64).
inline size_t qblock_code_bytes(int bits, int64_t k_padded) {
  return static_cast<size_t>(bits == 4 ? k_padded / 2 : k_padded);
}
// Converts one row of `k` values of type t into codes (qblock_code_bytes) and per-block
// d and m (k_padded / 32 each), padding k..k_padded with zero blocks. `bits` must be at
// least qblock_bits(t). `scratch` holds k floats (used when requantizing).
void to_qblocks(GgmlType t, const void* src, int64_t k, int64_t k_padded, int bits, uint8_t* codes,
                float* d, float* m, float* scratch);
// The inverse, for checks and for the dense fallback: k values as f32.
void qblocks_to_f32(const uint8_t* codes, const float* d, const float* m, int bits, int64_t k, float* out);

}  // namespace cserve
