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
  MXFP4 = 39,  // gpt-oss's experts: an E8M0 byte and 16 bytes of FP4 e2m1 codes (value j low, j + 16 high nibble)
  // cserve's own rows, never read from a file: blocks of 32 values w = d * u + m stored as
  // f32 d, f32 m and the codes (QB4: 16 bytes, u[j] low and u[j + 16] high nibble of byte j;
  // QB8: 32 bytes). Other checkpoint formats (AWQ, GPTQ, fp8, ...) are converted into them.
  QB4 = 0x10004, QB8 = 0x10008,
};

const char* ggml_type_name(GgmlType t);
// Elements per block and bytes per block; block 0 means "not a type cserve reads".
int64_t ggml_block_elems(GgmlType t);
int64_t ggml_block_bytes(GgmlType t);
// Whether a GGUF file may hold type t (cserve's own QB4 / QB8 never come from a file).
bool ggml_type_supported(GgmlType t);
// Bytes of one row of `cols` elements (cols must be a multiple of the block size).
size_t ggml_row_bytes(GgmlType t, int64_t cols);

// Dequantizes `n` elements (a multiple of the block size) of type t to f32.
void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n);

// cserve's quantized weights: blocks of 32 values w = d * u + m with unsigned codes u.
// Every ggml 4-bit format (Q4_0, Q4_1, Q4_K) maps onto codes below 16 exactly, the 5- and
// 8-bit ones (Q5_0, Q5_1, Q5_K, Q8_0) onto 8-bit codes exactly; anything else (Q6_K, F16,
// ...) is dequantized and requantized to symmetric 8-bit blocks. The backend decides how
// the codes are laid out in memory.
constexpr int64_t kQBlock = 32;

// 4 for Q4_0 / Q4_1 / Q4_K (codes below 16), 8 for any other type.
int qblock_bits(GgmlType t);
// True when t's blocks map to (d, m) pairs that f16 holds exactly (Q4_0, Q4_1, Q5_0, Q5_1,
// Q8_0: f16 scales in the file, offsets f16 too or a power-of-two multiple of them).
bool qblock_scales_are_f16(GgmlType t);
// Converts one row of `k` values (a multiple of 32) of type t into one code per value (u)
// and per-block d and m (k / 32 each). `scratch` holds k floats (used when requantizing).
void to_qblocks(GgmlType t, const void* src, int64_t k, uint8_t* u, float* d, float* m, float* scratch);

// MXFP4 (OCP microscaling): 32 FP4 e2m1 values sharing an E8M0 scale 2^(e - 127). Doubled, an
// e2m1 value is an integer in [-12, 12], so a block is exactly an 8-bit block with u = 2v + 12,
// d = 2^(e - 128), m = -12 d. E8M0 255 is NaN, and above 251 d * u overflows f32: loaders refuse
// such scales (mxfp4_scale_supported) before converting.
bool mxfp4_scale_supported(uint8_t e8m0);
// The 8-bit code u = 2v + 12 of the e2m1 code `fp4` (bit 3 the sign, bits 0-2 the magnitude).
uint8_t mxfp4_code(uint8_t fp4);
// d = 2^(e - 128): half the block's scale (exact, subnormal for e = 0).
float mxfp4_half_scale(uint8_t e8m0);

// Writes one QB4 or QB8 block (32 codes u, below 16 for QB4) at dst.
void write_qblock(GgmlType t, uint8_t* dst, float d, float m, const uint8_t* u);

}  // namespace cserve
