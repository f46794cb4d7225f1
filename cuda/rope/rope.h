// Rotary embedding in place, rotate-half (GPT-NeoX / HF Llama) style, on the first
// rotary_dim dims of each head: x1' = x1*c - x2*s, x2' = x2*c + x1*s.
// x: [tokens][heads][head_dim] with token stride ld; cos/sin: [tokens][rotary_dim/2] f32.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace cserve::cuda {

void invokeRope(void* x, int64_t tokens, int64_t heads, int64_t head_dim, int64_t ld, const float* cos,
                const float* sin, int64_t rotary_dim, int dtype, cudaStream_t stream);

}  // namespace cserve::cuda
