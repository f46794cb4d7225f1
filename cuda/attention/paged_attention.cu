#include "attention/paged_attention.h"
#include "common.cuh"

namespace cserve::cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kChunk = 1024;     // keys scored per pass (shared memory: 4 KiB)
constexpr int kMaxHeadDim = 256;

template <class A, class C>
__global__ void paged_attention_kernel(PagedAttentionArgs a, int64_t token0) {
  __shared__ float q[kMaxHeadDim];
  __shared__ float scores[kChunk];
  __shared__ float scratch[32];
  // Heads vary fastest across blocks: the heads of one GQA group run side by side and share
  // their K/V rows through L2 instead of each fetching them from memory.
  const int64_t h = blockIdx.x, t = token0 + blockIdx.y;
  const int64_t kvh = h / (a.num_heads / a.num_kv_heads);
  const int64_t d = a.head_dim;
  const A* qt = static_cast<const A*>(a.q) + t * a.ldq + h * d;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) q[i] = to_f32(qt[i]) * a.scale;
  __syncthreads();
  const int32_t seq = a.token_seq[t];
  const int64_t pos = a.positions[t];
  const int64_t first = a.sliding_window > 0 ? ::max(int64_t{0}, pos - a.sliding_window + 1) : 0;
  const int32_t* table = a.block_tables + seq * a.max_blocks_per_seq;
  const C* kc = static_cast<const C*>(a.k_cache);
  const C* vc = static_cast<const C*>(a.v_cache);
  auto at = [&](int64_t p) {  // element offset of position p's row for this kv head
    const int64_t block = table[p / a.block_size];
    return ((block * a.num_kv_heads + kvh) * a.block_size + p % a.block_size) * d;
  };
  // Each thread owns output dims threadIdx.x, threadIdx.x + 128 (head_dim <= 256).
  float acc0 = 0.0f, acc1 = 0.0f;
  float run_max = -INFINITY, run_sum = 0.0f;
  for (int64_t start = first; start <= pos; start += kChunk) {
    const int64_t n = ::min(static_cast<int64_t>(kChunk), pos + 1 - start);
    // Scores: a warp per key, lanes over dims.
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int64_t j = warp; j < n; j += kThreads / 32) {
      const C* kr = kc + at(start + j);
      float s = 0.0f;
      for (int64_t i = lane; i < d; i += 32) s += q[i] * to_f32(kr[i]);
      s = warp_sum(s);
      if (lane == 0) scores[j] = s;
    }
    __syncthreads();
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, scores[j]);
    m = block_reduce<true>(m, scratch);
    const float new_max = fmaxf(run_max, m);
    float l = 0.0f;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      scores[j] = __expf(scores[j] - new_max);
      l += scores[j];
    }
    l = block_reduce<false>(l, scratch);  // also orders the writes to scores before the reads below
    const float rescale = __expf(run_max - new_max);
    acc0 *= rescale;
    acc1 *= rescale;
    run_sum = run_sum * rescale + l;
    run_max = new_max;
#pragma unroll 4
    for (int64_t j = 0; j < n; ++j) {  // independent loads: unrolled so several are in flight
      const C* vr = vc + at(start + j);
      const float p = scores[j];
      if (threadIdx.x < d) acc0 += p * to_f32(vr[threadIdx.x]);
      if (threadIdx.x + kThreads < d) acc1 += p * to_f32(vr[threadIdx.x + kThreads]);
    }
    __syncthreads();  // scores are rewritten by the next chunk
  }
  A* out = static_cast<A*>(a.out) + t * a.num_heads * d + h * d;
  const float inv = run_sum > 0.0f ? 1.0f / run_sum : 0.0f;
  if (threadIdx.x < d) out[threadIdx.x] = from_f32<A>(acc0 * inv);
  if (threadIdx.x + kThreads < d) out[threadIdx.x + kThreads] = from_f32<A>(acc1 * inv);
}

}  // namespace

void invokePagedAttention(const PagedAttentionArgs& a, cudaStream_t stream) {
  if (a.num_tokens == 0) return;
  if (a.head_dim > kMaxHeadDim) throw std::invalid_argument("paged attention: head_dim above 256");
  if (a.num_kv_heads <= 0 || a.num_heads % a.num_kv_heads != 0)
    throw std::invalid_argument("paged attention: num_kv_heads must divide num_heads");
  // grid.y holds at most 65535 tokens: larger batches go in slices.
  for (int64_t t0 = 0; t0 < a.num_tokens; t0 += 65535) {
    const dim3 grid(static_cast<unsigned>(a.num_heads), static_cast<unsigned>(std::min<int64_t>(65535, a.num_tokens - t0)));
    CSERVE_DISPATCH_DTYPE(a.act_dtype, A, CSERVE_DISPATCH_CACHE_DTYPE(a.cache_dtype, C,
        paged_attention_kernel<A, C><<<grid, kThreads, 0, stream>>>(a, t0)));
  }
  check(cudaGetLastError(), "paged_attention");
}

}  // namespace cserve::cuda
