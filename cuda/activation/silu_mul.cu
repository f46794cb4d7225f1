#include "activation/silu_mul.h"
#include "common.cuh"

namespace cserve::cuda {

namespace {

// gelu_tanh(x) = x * sigmoid(C1 x + C3 x^3) (= 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))).
constexpr float kGeluC1 = 1.5957691216057308f, kGeluC3 = 0.0713548162726f;

template <class T, bool kGelu>
__global__ void gated_act_kernel(T* out, const T* gu, int64_t inter) {
  const int64_t t = blockIdx.y;
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < inter; i += gridDim.x * blockDim.x) {
    const float g = to_f32(gu[t * 2 * inter + i]), u = to_f32(gu[t * 2 * inter + inter + i]);
    const float z = kGelu ? g * (kGeluC1 + kGeluC3 * g * g) : g;
    out[t * inter + i] = from_f32<T>(g / (1.0f + __expf(-z)) * u);
  }
}

template <bool kGelu>
void launch_gated_act(void* out, const void* gate_up, int64_t tokens, int64_t inter, int dtype, cudaStream_t stream) {
  if (tokens == 0) return;
  // grid.y holds at most 65535 tokens: larger batches go in slices.
  for (int64_t t0 = 0; t0 < tokens; t0 += 65535) {
    const dim3 grid(static_cast<unsigned>((inter + 255) / 256), static_cast<unsigned>(std::min<int64_t>(65535, tokens - t0)));
    CSERVE_DISPATCH_DTYPE(dtype, T,
        gated_act_kernel<T, kGelu><<<grid, 256, 0, stream>>>(static_cast<T*>(out) + t0 * inter,
                                                             static_cast<const T*>(gate_up) + t0 * 2 * inter, inter));
  }
  check(cudaGetLastError(), kGelu ? "gelu_tanh_mul" : "silu_mul");
}

template <class T>
__global__ void clamped_swiglu_kernel(T* out, const T* gu, int64_t inter, float alpha, float limit) {
  const int64_t t = blockIdx.y;
  for (int64_t i = blockIdx.x * blockDim.x + threadIdx.x; i < inter; i += gridDim.x * blockDim.x) {
    const float g = fminf(to_f32(gu[t * 2 * inter + i]), limit);
    const float u = fminf(fmaxf(to_f32(gu[t * 2 * inter + inter + i]), -limit), limit);
    out[t * inter + i] = from_f32<T>((u + 1.0f) * g / (1.0f + __expf(-alpha * g)));
  }
}

template <class T>
__global__ void softcap_kernel(T* x, int64_t n, float cap) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = from_f32<T>(cap * tanhf(to_f32(x[i]) / cap));
}

}  // namespace

void invokeSiluMul(void* out, const void* gate_up, int64_t tokens, int64_t inter, int dtype, cudaStream_t stream) {
  launch_gated_act<false>(out, gate_up, tokens, inter, dtype, stream);
}

void invokeGeluTanhMul(void* out, const void* gate_up, int64_t tokens, int64_t inter, int dtype, cudaStream_t stream) {
  launch_gated_act<true>(out, gate_up, tokens, inter, dtype, stream);
}

void invokeClampedSwigluMul(void* out, const void* gate_up, int64_t tokens, int64_t inter, float alpha, float limit,
                            int dtype, cudaStream_t stream) {
  for (int64_t t0 = 0; t0 < tokens; t0 += 65535) {
    const dim3 grid(static_cast<unsigned>((inter + 255) / 256), static_cast<unsigned>(std::min<int64_t>(65535, tokens - t0)));
    CSERVE_DISPATCH_DTYPE(dtype, T,
        clamped_swiglu_kernel<T><<<grid, 256, 0, stream>>>(static_cast<T*>(out) + t0 * inter,
                                                           static_cast<const T*>(gate_up) + t0 * 2 * inter, inter,
                                                           alpha, limit));
  }
  check(cudaGetLastError(), "clamped_swiglu_mul");
}

void invokeSoftcap(void* x, int64_t n, float cap, int dtype, cudaStream_t stream) {
  if (n == 0) return;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 4096));
  CSERVE_DISPATCH_DTYPE(dtype, T, softcap_kernel<T><<<blocks, 256, 0, stream>>>(static_cast<T*>(x), n, cap));
  check(cudaGetLastError(), "softcap");
}

}  // namespace cserve::cuda
