// Shared pieces of the CUDA kernels: element types, conversions, block reductions.
// Kernels are free functions `invokeX(..., cudaStream_t)`; activations and caches are f32,
// f16 or bf16 (DTypeId, the values of cserve::DType), math is f32.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace cserve::cuda {

// fp8 (e4m3 "fn" and e5m2) only as KV cache types.
enum DTypeId : int { kF32 = 0, kF16 = 1, kBF16 = 2, kF8E4M3 = 3, kF8E5M2 = 4 };

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__nv_fp8_e4m3 v) { return static_cast<float>(v); }
__device__ __forceinline__ float to_f32(__nv_fp8_e5m2 v) { return static_cast<float>(v); }

template <class T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
// Nearest even, saturating to the largest finite value (as the CPU's f32_to_fp8).
template <>
__device__ __forceinline__ __nv_fp8_e4m3 from_f32<__nv_fp8_e4m3>(float v) { return __nv_fp8_e4m3(v); }
template <>
__device__ __forceinline__ __nv_fp8_e5m2 from_f32<__nv_fp8_e5m2>(float v) { return __nv_fp8_e5m2(v); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum (or max) over the block; every thread gets the result. `scratch` holds 32 floats.
template <bool Max>
__device__ float block_reduce(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
  v = Max ? warp_max(v) : warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : (Max ? -INFINITY : 0.0f);
  if (warp == 0) v = Max ? warp_max(v) : warp_sum(v);
  if (threadIdx.x == 0) scratch[0] = v;
  __syncthreads();
  return scratch[0];
}

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

}  // namespace cserve::cuda

// Calls F<T>(args) with T the C++ type of dtype id `id`.
#define CSERVE_DISPATCH_DTYPE(id, T, ...)                                               \
  switch (id) {                                                                          \
    case ::cserve::cuda::kF32: { using T = float; __VA_ARGS__; break; }                  \
    case ::cserve::cuda::kF16: { using T = __half; __VA_ARGS__; break; }                 \
    case ::cserve::cuda::kBF16: { using T = __nv_bfloat16; __VA_ARGS__; break; }          \
    default: throw std::invalid_argument("unsupported dtype id " + std::to_string(id));  \
  }

// CSERVE_DISPATCH_DTYPE plus the fp8 types, for KV cache element types.
#define CSERVE_DISPATCH_CACHE_DTYPE(id, T, ...)                                          \
  switch (id) {                                                                          \
    case ::cserve::cuda::kF32: { using T = float; __VA_ARGS__; break; }                  \
    case ::cserve::cuda::kF16: { using T = __half; __VA_ARGS__; break; }                 \
    case ::cserve::cuda::kBF16: { using T = __nv_bfloat16; __VA_ARGS__; break; }          \
    case ::cserve::cuda::kF8E4M3: { using T = __nv_fp8_e4m3; __VA_ARGS__; break; }        \
    case ::cserve::cuda::kF8E5M2: { using T = __nv_fp8_e5m2; __VA_ARGS__; break; }        \
    default: throw std::invalid_argument("unsupported cache dtype id " + std::to_string(id)); \
  }
