#include "common.cuh"
#include "norm/rms_norm.h"

namespace cserve::cuda {

namespace {

constexpr int kMaxThreads = 1024;

// Row `row` of the norm: `heads` rows of `dim` per token of stride ld (heads = 1: plain rows).
__device__ __forceinline__ int64_t row_offset(int64_t row, int64_t heads, int64_t dim, int64_t ld) {
  return (row / heads) * ld + (row % heads) * dim;
}

// Two passes over the row in global memory (the second mostly from L1/L2), so any hidden size
// works without dynamic shared memory. Each thread reads back only what it wrote itself.
template <class T>
__global__ void __launch_bounds__(kMaxThreads) rms_norm_kernel(T* out, const T* x, T* residual, const float* w,
                                                               int64_t dim, int64_t ld, int64_t heads, float eps) {
  __shared__ float scratch[32];
  const int64_t base = row_offset(blockIdx.x, heads, dim, ld);
  const T* xr = x + base;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = to_f32(xr[i]);
    if (residual) {
      v += to_f32(residual[base + i]);
      residual[base + i] = from_f32<T>(v);
      v = to_f32(residual[base + i]);  // normalize what the residual stream holds
    }
    ss += v * v;
  }
  const float total = block_reduce<false>(ss, scratch);  // also orders every read of x before out's writes
  const float inv = rsqrtf(total / static_cast<float>(dim) + eps);
  const T* src = residual ? residual + base : xr;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) out[base + i] = from_f32<T>(to_f32(src[i]) * inv * w[i]);
}

template <class T>
__global__ void __launch_bounds__(kMaxThreads) rms_norm_add_kernel(T* residual, const T* x, const float* w, int64_t dim, int64_t ld, float eps) {
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
  const int threads = dim >= kMaxThreads ? kMaxThreads : ((static_cast<int>(dim) + 31) / 32) * 32;
  CSERVE_DISPATCH_DTYPE(dtype, T,
      rms_norm_add_kernel<T><<<static_cast<unsigned>(rows), threads, 0, stream>>>(
          static_cast<T*>(residual), static_cast<const T*>(x), weight, dim, ld, eps));
  check(cudaGetLastError(), "rms_norm_add");
}

void invokeRmsNormHeads(void* out, const void* x, void* residual, const float* weight, int64_t tokens, int64_t heads,
                        int64_t dim, int64_t ld, float eps, int dtype, cudaStream_t stream) {
  const int64_t rows = tokens * heads;
  if (rows == 0) return;
  if (rows > INT32_MAX) throw std::invalid_argument("rms_norm: more than 2^31 rows");
  const int threads = dim >= kMaxThreads ? kMaxThreads : ((static_cast<int>(dim) + 31) / 32) * 32;
  CSERVE_DISPATCH_DTYPE(dtype, T,
      rms_norm_kernel<T><<<static_cast<unsigned>(rows), threads, 0, stream>>>(
          static_cast<T*>(out), static_cast<const T*>(x), static_cast<T*>(residual), weight, dim, ld, heads, eps));
  check(cudaGetLastError(), "rms_norm");
}

void invokeRmsNorm(void* out, const void* x, void* residual, const float* weight, int64_t rows, int64_t dim,
                   int64_t ld, float eps, int dtype, cudaStream_t stream) {
  invokeRmsNormHeads(out, x, residual, weight, rows, 1, dim, ld, eps, dtype, stream);
}

}  // namespace cserve::cuda
