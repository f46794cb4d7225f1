#include "activation/silu_mul.h"
#include "common.cuh"

namespace cserve::cuda {

namespace {

template <class T>
__global__ void silu_mul_kernel(T* out, const T* gu, int64_t inter) {
  const int64_t t = blockIdx.y;
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < inter; i += gridDim.x * blockDim.x) {
    const float g = to_f32(gu[t * 2 * inter + i]), u = to_f32(gu[t * 2 * inter + inter + i]);
    out[t * inter + i] = from_f32<T>(g / (1.0f + __expf(-g)) * u);
  }
}

}  // namespace

void invokeSiluMul(void* out, const void* gate_up, int64_t tokens, int64_t inter, int dtype, cudaStream_t stream) {
  if (tokens == 0) return;
  // grid.y holds at most 65535 tokens: larger batches go in slices.
  for (int64_t t0 = 0; t0 < tokens; t0 += 65535) {
    const dim3 grid(static_cast<unsigned>((inter + 255) / 256), static_cast<unsigned>(std::min<int64_t>(65535, tokens - t0)));
    CSERVE_DISPATCH_DTYPE(dtype, T,
        silu_mul_kernel<T><<<grid, 256, 0, stream>>>(static_cast<T*>(out) + t0 * inter,
                                                     static_cast<const T*>(gate_up) + t0 * 2 * inter, inter));
  }
  check(cudaGetLastError(), "silu_mul");
}

}  // namespace cserve::cuda
