#include "common.cuh"
#include "rope/rope.h"

namespace cserve::cuda {

namespace {

template <class T>
__global__ void rope_kernel(T* x, int64_t heads, int64_t head_dim, int64_t ld, const float* cos, const float* sin,
                            int64_t rotary_dim) {
  const int64_t t = blockIdx.x;
  const int64_t half = rotary_dim / 2;
  for (int64_t idx = threadIdx.x; idx < heads * half; idx += blockDim.x) {
    const int64_t h = idx / half, i = idx % half;
    T* xh = x + t * ld + h * head_dim;
    const float c = cos[t * half + i], s = sin[t * half + i];
    const float x1 = to_f32(xh[i]), x2 = to_f32(xh[i + half]);
    xh[i] = from_f32<T>(x1 * c - x2 * s);
    xh[i + half] = from_f32<T>(x2 * c + x1 * s);
  }
}

}  // namespace

void invokeRope(void* x, int64_t tokens, int64_t heads, int64_t head_dim, int64_t ld, const float* cos,
                const float* sin, int64_t rotary_dim, int dtype, cudaStream_t stream) {
  if (tokens == 0) return;
  CSERVE_DISPATCH_DTYPE(dtype, T,
      rope_kernel<T><<<static_cast<unsigned>(tokens), 256, 0, stream>>>(static_cast<T*>(x), heads, head_dim, ld, cos,
                                                                       sin, rotary_dim));
  check(cudaGetLastError(), "rope");
}

}  // namespace cserve::cuda
