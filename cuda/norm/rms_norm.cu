#include "common.cuh"
#include "norm/rms_norm.h"

namespace cserve::cuda {

namespace {

template <class T>
__global__ void rms_norm_kernel(T* out, const T* x, T* residual, const float* w, int64_t dim, int64_t ld,
                                float eps) {
  __shared__ float scratch[32];
  extern __shared__ float h[];  // the row, in f32
  const int64_t row = blockIdx.x;
  const T* xr = x + row * ld;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = to_f32(xr[i]);
    if (residual) {
      v += to_f32(residual[row * ld + i]);
      residual[row * ld + i] = from_f32<T>(v);
      v = to_f32(residual[row * ld + i]);  // normalize what the residual stream holds
    }
    h[i] = v;
    ss += v * v;
  }
  const float total = block_reduce<false>(ss, scratch);
  const float inv = rsqrtf(total / static_cast<float>(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) out[row * ld + i] = from_f32<T>(h[i] * inv * w[i]);
}

template <class T>
__global__ void rms_norm_add_kernel(T* residual, const T* x, const float* w, int64_t dim, int64_t ld, float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * ld;
  T* rr = residual + row * ld;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float v = to_f32(xr[i]);
    ss += v * v;
  }
  const float total = block_reduce<false>(ss, scratch);
  const float inv = rsqrtf(total / static_cast<float>(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
    rr[i] = from_f32<T>(to_f32(rr[i]) + to_f32(xr[i]) * inv * w[i]);
}

}  // namespace

void invokeRmsNormAdd(void* residual, const void* x, const float* weight, int64_t rows, int64_t dim, int64_t ld,
                      float eps, int dtype, cudaStream_t stream) {
  if (rows == 0) return;
  const int threads = dim >= 1024 ? 1024 : ((static_cast<int>(dim) + 31) / 32) * 32;
  CSERVE_DISPATCH_DTYPE(dtype, T,
      rms_norm_add_kernel<T><<<static_cast<unsigned>(rows), threads, 0, stream>>>(
          static_cast<T*>(residual), static_cast<const T*>(x), weight, dim, ld, eps));
  check(cudaGetLastError(), "rms_norm_add");
}

void invokeRmsNorm(void* out, const void* x, void* residual, const float* weight, int64_t rows, int64_t dim,
                   int64_t ld, float eps, int dtype, cudaStream_t stream) {
  if (rows == 0) return;
  const int threads = dim >= 1024 ? 1024 : ((static_cast<int>(dim) + 31) / 32) * 32;
  const size_t smem = static_cast<size_t>(dim) * sizeof(float);
  CSERVE_DISPATCH_DTYPE(dtype, T,
      rms_norm_kernel<T><<<static_cast<unsigned>(rows), threads, smem, stream>>>(
          static_cast<T*>(out), static_cast<const T*>(x), static_cast<T*>(residual), weight, dim, ld, eps));
  check(cudaGetLastError(), "rms_norm");
}

}  // namespace cserve::cuda
