#include "attention/kv_cache.h"
#include "common.cuh"

namespace cserve::cuda {

namespace {

template <class A, class C>
__global__ void write_kv_kernel(const A* k, const A* v, int64_t ld, const int64_t* slots, C* k_cache, C* v_cache,
                                int64_t num_kv_heads, int64_t head_dim, int64_t block_size) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slots[t];
  if (slot < 0) return;  // padding token
  const int64_t block = slot / block_size, offset = slot % block_size;
  for (int64_t idx = threadIdx.x; idx < num_kv_heads * head_dim; idx += blockDim.x) {
    const int64_t h = idx / head_dim, d = idx % head_dim;
    const int64_t dst = ((block * num_kv_heads + h) * block_size + offset) * head_dim + d;
    k_cache[dst] = from_f32<C>(to_f32(k[t * ld + idx]));
    v_cache[dst] = from_f32<C>(to_f32(v[t * ld + idx]));
  }
}

}  // namespace

void invokeWriteKv(const void* k, const void* v, int64_t tokens, int64_t ld, const int64_t* slots, void* k_cache,
                   void* v_cache, int64_t num_kv_heads, int64_t head_dim, int64_t block_size, int act_dtype,
                   int cache_dtype, cudaStream_t stream) {
  if (tokens == 0) return;
  CSERVE_DISPATCH_DTYPE(act_dtype, A, CSERVE_DISPATCH_CACHE_DTYPE(cache_dtype, C,
      write_kv_kernel<A, C><<<static_cast<unsigned>(tokens), 128, 0, stream>>>(
          static_cast<const A*>(k), static_cast<const A*>(v), ld, slots, static_cast<C*>(k_cache),
          static_cast<C*>(v_cache), num_kv_heads, head_dim, block_size)));
  check(cudaGetLastError(), "write_kv");
}

}  // namespace cserve::cuda
