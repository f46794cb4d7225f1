// Device helpers for reading quant/quant_layout.h's codes and scales.
#pragma once
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "quant/quant_layout.h"

namespace cserve::cuda {

// Code j of consecutive values packed in 32-bit words (4-bit: 8 per word, low nibble first;
// 8-bit: 4 per word), as a float: the code below an f32 exponent of 2^23, minus 2^23, which is
// exact and cheaper than an integer conversion.
template <int Bits>
__device__ __forceinline__ float code_value(const uint32_t* words, int j) {
  constexpr int kPerWord = 32 / Bits;
  const uint32_t code = (words[j / kPerWord] >> (Bits * (j % kPerWord))) & ((1u << Bits) - 1);
  return __uint_as_float(0x4B000000u | code) - 8388608.0f;
}

// Block `index`'s (d, m) (index = row * blocks + block).
template <bool HalfScales>
__device__ __forceinline__ float2 load_scale_pair(const void* scales, int64_t index) {
  if constexpr (HalfScales) {
    return __half22float2(__ldg(static_cast<const __half2*>(scales) + index));
  } else {
    return __ldg(static_cast<const float2*>(scales) + index);
  }
}

// Calls body(bits, half_scales) with both as std::integral_constant for a weight's layout
// (a generic lambda reads them as decltype(bits)::value).
template <class Body>
void dispatch_quant_layout(const QuantLayout& layout, Body&& body) {
  using Four = std::integral_constant<int, 4>;
  using Eight = std::integral_constant<int, 8>;
  if (layout.bits == 4) {
    if (layout.half_scales) body(Four{}, std::true_type{});
    else body(Four{}, std::false_type{});
  } else {
    if (layout.half_scales) body(Eight{}, std::true_type{});
    else body(Eight{}, std::false_type{});
  }
}

}  // namespace cserve::cuda
