// Vectorized sums for the shared-memory all-reduce. The loops are plain C++ that the compiler
// vectorizes; target_clones picks the AVX-512 / AVX2 / baseline version at load time. The half
// conversions are branch-free bit arithmetic (IEEE round to nearest even), so they vectorize
// without F16C.
#include "comm/reduce_kernels.h"

#include <algorithm>

#include "cserve/error.h"
#include "util/vector_clones.h"

namespace cserve::comm {
namespace {

// Elements summed per pass: the f32 accumulator stays in L1.
constexpr int64_t kBlock = 1024;

inline float as_float(uint32_t u) { return __builtin_bit_cast(float, u); }
inline uint32_t as_uint(float f) { return __builtin_bit_cast(uint32_t, f); }

// dtype.h's f32_to_bf16 with the NaN case as a select, so that it vectorizes.
inline uint16_t bf16_store(float x) {
  const uint32_t u = as_uint(x);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan = (u >> 16) | 0x40u;  // quiet, sign kept
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

// All-ones when `c`, else zero: selects as masks, which vectorize where ?: on floats may not.
inline uint32_t mask_if(bool c) { return 0u - static_cast<uint32_t>(c); }
inline uint32_t select(uint32_t mask, uint32_t a, uint32_t b) { return (a & mask) | (b & ~mask); }

inline float f16_load(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t shifted = static_cast<uint32_t>(h & 0x7fffu) << 13;
  const uint32_t exp = shifted & 0x0f800000u;
  const uint32_t inf_nan = mask_if(exp == 0x0f800000u) & ((128u - 16u) << 23);
  const uint32_t normal = shifted + ((127u - 15u) << 23) + inf_nan;
  // Zero and subnormals: renormalize through a float subtraction.
  const uint32_t sub = as_uint(as_float(normal + (1u << 23)) - as_float(113u << 23));
  return as_float(select(mask_if(exp == 0), sub, normal) | sign);
}
inline uint16_t f16_store(float x) {
  const uint32_t sign = as_uint(x) & 0x80000000u;
  const uint32_t f = as_uint(x) ^ sign;
  const uint32_t big = select(mask_if(f > (255u << 23)), 0x7e00u, 0x7c00u);  // NaN : overflow to inf
  constexpr uint32_t kDenormMagic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  const uint32_t sub = as_uint(as_float(f) + as_float(kDenormMagic)) - kDenormMagic;
  const uint32_t normal = (f + ((15u - 127u) << 23) + 0xfffu + ((f >> 13) & 1u)) >> 13;
  const uint32_t finite = select(mask_if(f < (113u << 23)), sub, normal);
  const uint32_t magnitude = select(mask_if(f >= ((127u + 16u) << 23)), big, finite);
  return static_cast<uint16_t>(magnitude | (sign >> 16));
}

inline float f32_identity(float x) { return x; }

// dst = the sum of the n srcs in f32: widen, sum, narrow. Inlined into each clone below, so it
// is vectorized for that clone's ISA.
template <class T, float (*load)(T), T (*store)(float)>
__attribute__((always_inline)) inline void sum_into(T* dst, const T* const* srcs, int n, int64_t count) {
  float acc[kBlock];
  for (int64_t b = 0; b < count; b += kBlock) {
    const int64_t m = std::min(kBlock, count - b);
    const T* s0 = srcs[0] + b;
    for (int64_t i = 0; i < m; ++i) acc[i] = load(s0[i]);
    for (int p = 1; p < n; ++p) {
      const T* s = srcs[p] + b;
      for (int64_t i = 0; i < m; ++i) acc[i] += load(s[i]);
    }
    T* d = dst + b;
    for (int64_t i = 0; i < m; ++i) d[i] = store(acc[i]);
  }
}

CSERVE_VECTOR_CLONES void sum_f32(float* dst, const float* const* srcs, int n, int64_t count) {
  sum_into<float, f32_identity, f32_identity>(dst, srcs, n, count);
}

CSERVE_VECTOR_CLONES void sum_bf16(uint16_t* dst, const uint16_t* const* srcs, int n, int64_t count) {
  sum_into<uint16_t, bf16_to_f32, bf16_store>(dst, srcs, n, count);
}

CSERVE_VECTOR_CLONES void sum_f16(uint16_t* dst, const uint16_t* const* srcs, int n, int64_t count) {
  sum_into<uint16_t, f16_load, f16_store>(dst, srcs, n, count);
}

}  // namespace

void sum_arrays(void* dst, const void* const* srcs, int num_srcs, int64_t count, DType dtype) {
  switch (dtype) {
    case DType::F32:
      sum_f32(static_cast<float*>(dst), reinterpret_cast<const float* const*>(srcs), num_srcs, count);
      return;
    case DType::BF16:
      sum_bf16(static_cast<uint16_t*>(dst), reinterpret_cast<const uint16_t* const*>(srcs), num_srcs, count);
      return;
    case DType::F16:
      sum_f16(static_cast<uint16_t*>(dst), reinterpret_cast<const uint16_t* const*>(srcs), num_srcs, count);
      return;
    default:
      throw NotSupported(std::string("all_reduce: dtype ") + dtype_name(dtype) +
                         " is not supported (float32, bfloat16, float16)");
  }
}

}  // namespace cserve::comm
