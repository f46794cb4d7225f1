// Element types of weights, activations and the KV cache, and scalar conversions.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace cserve {

// F8E4M3 (the "fn" variant: no infinities, max 448) and F8E5M2 exist only as KV cache types.
enum class DType : uint8_t { F32, F16, BF16, F8E4M3, F8E5M2 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
inline bool is_fp8(DType t) { return t == DType::F8E4M3 || t == DType::F8E5M2; }
// Parses "float32"/"float"/"bfloat16"/"float16"/"half"; throws InvalidArgument.
DType parse_dtype(const std::string& name);
// A KV cache dtype: those of parse_dtype, or "fp8" / "fp8_e4m3" / "fp8_e5m2".
DType parse_kv_cache_dtype(const std::string& name);

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Round to nearest even, as torch does; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
// fp8, round to nearest even, saturating to the largest finite value (as vLLM stores KV).
float fp8_to_f32(uint8_t v, DType t);
uint8_t f32_to_fp8(float f, DType t);

// Converts n elements of src (of type from) to f32.
void convert_to_f32(const void* src, DType from, float* dst, size_t n);
// Converts n f32 values to type to.
void convert_from_f32(const float* src, void* dst, DType to, size_t n);

}  // namespace cserve
