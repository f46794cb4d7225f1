#include "attention/paged_attention.h"
#include "common.cuh"

#include <algorithm>

namespace cserve::cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kChunk = 1024;     // keys scored per pass (shared memory: 4 KiB)
constexpr int kMaxHeadDim = 256;
constexpr int kMaxSplits = 16;
constexpr int64_t kKeysPerSplit = 512;  // splitting shorter ranges costs more than it gains

template <class A, class C>
__global__ void paged_attention_kernel(PagedAttentionArgs a, int64_t token0, int splits) {
  __shared__ float q[kMaxHeadDim];
  __shared__ float scores[kChunk];
  __shared__ float scratch[32];
  // Heads vary fastest across blocks: the heads of one GQA group run side by side and share
  // their K/V rows through L2 instead of each fetching them from memory.
  const int64_t h = blockIdx.x;
  const int64_t t = a.single_tokens ? a.single_tokens[token0 + blockIdx.y] : token0 + blockIdx.y;
  const int64_t kvh = h / (a.num_heads / a.num_kv_heads);
  const int64_t d = a.head_dim;
  const A* qt = static_cast<const A*>(a.q) + t * a.ldq + h * d;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) q[i] = to_f32(qt[i]) * a.scale;
  __syncthreads();
  const int32_t seq = a.token_seq[t];
  const int64_t pos = a.positions[t];
  int64_t first = a.sliding_window > 0 ? ::max(int64_t{0}, pos - a.sliding_window + 1) : 0;
  int64_t last = pos;  // inclusive
  if (splits > 1) {  // this block's part of the keys (possibly none)
    const int64_t len = pos + 1 - first, split = blockIdx.z;
    const int64_t lo = first + len * split / splits, hi = first + len * (split + 1) / splits;
    first = lo;
    last = hi - 1;
  }
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
  for (int64_t start = first; start <= last; start += kChunk) {
    const int64_t n = ::min(static_cast<int64_t>(kChunk), last + 1 - start);
    // Scores: a warp per key, lanes over dims.
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int64_t j = warp; j < n; j += kThreads / 32) {
      const C* kr = kc + at(start + j);
      float s = 0.0f;
      for (int64_t i = lane; i < d; i += 32) s += q[i] * to_f32(kr[i]);
      s = warp_sum(s);
      if (a.softcap > 0.0f) s = a.softcap * tanhf(s / a.softcap);
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
  if (splits > 1) {  // the partial state: max, sum, unnormalized accumulator
    float* part = a.workspace + ((t * a.num_heads + h) * splits + blockIdx.z) * (d + 2);
    if (threadIdx.x == 0) {
      part[0] = run_max;
      part[1] = run_sum;
    }
    if (threadIdx.x < d) part[2 + threadIdx.x] = acc0;
    if (threadIdx.x + kThreads < d) part[2 + threadIdx.x + kThreads] = acc1;
    return;
  }
  A* out = static_cast<A*>(a.out) + t * a.num_heads * d + h * d;
  if (a.sinks) {  // the sink joins the denominator: rescale to the larger of the two maxima
    const float m = fmaxf(run_max, a.sinks[h]), keep = run_sum > 0.0f ? __expf(run_max - m) : 0.0f;
    run_sum = run_sum * keep + __expf(a.sinks[h] - m);
    acc0 *= keep;
    acc1 *= keep;
  }
  const float inv = run_sum > 0.0f ? 1.0f / run_sum : 0.0f;
  if (threadIdx.x < d) out[threadIdx.x] = from_f32<A>(acc0 * inv);
  if (threadIdx.x + kThreads < d) out[threadIdx.x + kThreads] = from_f32<A>(acc1 * inv);
}

// Merges the splits of one (head, token): weights exp(m_s - max) over the parts that saw keys.
template <class A>
__global__ void merge_splits_kernel(PagedAttentionArgs a, int64_t token0, int splits) {
  const int64_t h = blockIdx.x, t = token0 + blockIdx.y, d = a.head_dim;
  const float* parts = a.workspace + (t * a.num_heads + h) * splits * (d + 2);
  float m = -INFINITY;
  for (int s = 0; s < splits; ++s)
    if (parts[s * (d + 2) + 1] > 0.0f) m = fmaxf(m, parts[s * (d + 2)]);
  if (a.sinks) m = fmaxf(m, a.sinks[h]);
  float total = a.sinks ? __expf(a.sinks[h] - m) : 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float l = parts[s * (d + 2) + 1];
    if (l > 0.0f) total += l * __expf(parts[s * (d + 2)] - m);
  }
  const float inv = total > 0.0f ? 1.0f / total : 0.0f;
  A* out = static_cast<A*>(a.out) + t * a.num_heads * d + h * d;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    float v = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float* p = parts + s * (d + 2);
      if (p[1] > 0.0f) v += p[2 + i] * __expf(p[0] - m);
    }
    out[i] = from_f32<A>(v * inv);
  }
}

// How many parts each token's keys are split into: only when (token, head) blocks alone would
// leave SMs idle and the longest context is long.
int split_count(const PagedAttentionArgs& a) {
  if (a.max_context <= kKeysPerSplit) return 1;
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    return 1;
  if (a.num_tokens * a.num_heads >= 2 * static_cast<int64_t>(sms)) return 1;
  return static_cast<int>(std::min<int64_t>(kMaxSplits, (a.max_context + kKeysPerSplit - 1) / kKeysPerSplit));
}

}  // namespace

int64_t paged_attention_max_workspace(int64_t head_dim) {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    return 0;
  return 2 * static_cast<int64_t>(sms) * kMaxSplits * (head_dim + 2);  // split only below 2 x SMs blocks
}

int64_t paged_attention_workspace(const PagedAttentionArgs& a) {
  const int splits = split_count(a);
  return splits > 1 ? a.num_tokens * a.num_heads * splits * (a.head_dim + 2) : 0;
}

void invokePagedAttention(const PagedAttentionArgs& a, cudaStream_t stream) {
  if (a.num_tokens == 0) return;
  if (a.head_dim > kMaxHeadDim) throw std::invalid_argument("paged attention: head_dim above 256");
  if (a.num_kv_heads <= 0 || a.num_heads % a.num_kv_heads != 0)
    throw std::invalid_argument("paged attention: num_kv_heads must divide num_heads");
  PagedAttentionArgs per_token = a;
  per_token.single_tokens = nullptr;
  if (prefill_tiles_apply(a)) {
    invokePrefillAttention(a, stream);
    if (a.num_single_tokens == 0) return;
    per_token = a;  // then the decode tokens, one block per (head, token), no splits
    per_token.num_tokens = a.num_single_tokens;
    per_token.workspace = nullptr;
  }
  const int splits = per_token.workspace ? split_count(per_token) : 1;
  // grid.y holds at most 65535 tokens: larger batches go in slices.
  for (int64_t t0 = 0; t0 < per_token.num_tokens; t0 += 65535) {
    const unsigned tokens = static_cast<unsigned>(std::min<int64_t>(65535, per_token.num_tokens - t0));
    const dim3 grid(static_cast<unsigned>(a.num_heads), tokens, static_cast<unsigned>(splits));
    CSERVE_DISPATCH_DTYPE(a.act_dtype, A, CSERVE_DISPATCH_CACHE_DTYPE(a.cache_dtype, C,
        paged_attention_kernel<A, C><<<grid, kThreads, 0, stream>>>(per_token, t0, splits)));
    if (splits > 1) {
      const dim3 merge_grid(static_cast<unsigned>(a.num_heads), tokens);
      CSERVE_DISPATCH_DTYPE(a.act_dtype, A,
          merge_splits_kernel<A><<<merge_grid, kThreads, 0, stream>>>(per_token, t0, splits));
    }
  }
  check(cudaGetLastError(), "paged_attention");
}

}  // namespace cserve::cuda
