// Gated MLP activations: out[t][i] = act(gate_up[t][i]) * gate_up[t][inter + i].
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace cserve::cuda {

void invokeSiluMul(void* out, const void* gate_up, int64_t tokens, int64_t inter, int dtype, cudaStream_t stream);
// GeGLU: the same with GELU's tanh approximation (gelu_pytorch_tanh) for silu.
void invokeGeluTanhMul(void* out, const void* gate_up, int64_t tokens, int64_t inter, int dtype, cudaStream_t stream);
// gpt-oss: (clamp(up, -limit, limit) + 1) * g * sigmoid(alpha g) with g = min(gate, limit).
void invokeClampedSwigluMul(void* out, const void* gate_up, int64_t tokens, int64_t inter, float alpha, float limit,
                            int dtype, cudaStream_t stream);
// x[i] = cap * tanh(x[i] / cap) for i < n (soft-capped logits).
void invokeSoftcap(void* x, int64_t n, float cap, int dtype, cudaStream_t stream);

}  // namespace cserve::cuda
