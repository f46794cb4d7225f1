// Element types of weights, activations and the KV cache, and scalar conversions.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace cserve {

enum class DType : uint8_t { F32, F16, BF16 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
// Parses "float32"/"float"/"bfloat16"/"float16"/"half"; throws InvalidArgument.
DType parse_dtype(const std::string& name);

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

// Converts n elements of src (of type from) to f32.
void convert_to_f32(const void* src, DType from, float* dst, size_t n);
// Converts n f32 values to type to.
void convert_from_f32(const float* src, void* dst, DType to, size_t n);

}  // namespace cserve
