// SwiGLU's activation: out[t][i] = silu(gate_up[t][i]) * gate_up[t][inter + i].
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace cserve::cuda {

void invokeSiluMul(void* out, const void* gate_up, int64_t tokens, int64_t inter, int dtype, cudaStream_t stream);

}  // namespace cserve::cuda
