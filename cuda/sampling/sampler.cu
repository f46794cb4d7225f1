#include <cfloat>

#include "common.cuh"
#include "sampling/sampler.h"

namespace cserve::cuda {

namespace {

constexpr int kThreads = 1024;
constexpr int kBisectSteps = 32;

struct ArgMax {
  float value;
  int32_t index;
};

// NaN sorts below everything, as -inf: impossible, like a masked logit.
__device__ float ordered(float v) { return v == v ? v : -INFINITY; }

__device__ ArgMax better(ArgMax a, ArgMax b) {
  if (b.value > a.value || (b.value == a.value && b.index < a.index)) return b;
  return a;
}

// Block-wide argmax (first index among equal maxima); every thread gets the result.
__device__ ArgMax block_argmax(ArgMax v, ArgMax* scratch) {
  for (int o = 16; o > 0; o >>= 1) {
    ArgMax other{__shfl_xor_sync(0xffffffffu, v.value, o), __shfl_xor_sync(0xffffffffu, v.index, o)};
    v = better(v, other);
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x / 32) ? scratch[lane] : ArgMax{-INFINITY, INT32_MAX};
    for (int o = 16; o > 0; o >>= 1) {
      ArgMax other{__shfl_xor_sync(0xffffffffu, v.value, o), __shfl_xor_sync(0xffffffffu, v.index, o)};
      v = better(v, other);
    }
    if (lane == 0) scratch[0] = v;
  }
  __syncthreads();
  return scratch[0];
}

// A uniform float in [0, 1) from (seed, offset): splitmix64.
__device__ float uniform(uint64_t seed, uint64_t offset) {
  uint64_t z = seed + 0x9e3779b97f4a7c15ull * (offset + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
}

__global__ void __launch_bounds__(kThreads) sample_kernel(const float* logits, const float* raw_logits, int64_t vocab, const SamplingRow* params,
                              int32_t* out_ids, float* out_logprobs, int32_t* out_ranks, int num_top,
                              int32_t* top_ids, float* top_logprobs) {
  __shared__ float scratch[32];
  __shared__ ArgMax arg_scratch[32];
  const int64_t row = blockIdx.x;
  const float* l = logits + row * vocab;     // what is sampled from (processed)
  const float* r = raw_logits + row * vocab;  // what logprobs, ranks and the top-N report
  const SamplingRow sp = params[row];

  ArgMax best{-INFINITY, INT32_MAX};
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) best = better(best, ArgMax{ordered(l[i]), static_cast<int32_t>(i)});
  best = block_argmax(best, arg_scratch);
  const float max_logit = best.value;
  // Raw log-softmax normalizer.
  float raw_max = -INFINITY;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) raw_max = fmaxf(raw_max, r[i]);
  raw_max = block_reduce<true>(raw_max, scratch);
  float z = 0.0f;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) z += __expf(r[i] - raw_max);
  const float log_z = logf(block_reduce<false>(z, scratch)) + raw_max;

  // No finite logit (everything masked or NaN) or an infinite one: the first largest, as greedy.
  int32_t chosen = best.index < vocab ? best.index : 0;
  if (sp.temperature > 0.0f && isfinite(max_logit) && isfinite(max_logit / sp.temperature)) {
    // A huge temperature must not scale masked (-inf) logits by 0 into NaN.
    const float inv_t = fmaxf(1.0f / sp.temperature, FLT_MIN);
    const float top = max_logit * inv_t;  // the largest scaled logit
    // mass(t) = sum of exp(s - top) over scaled logits s >= t; count(t) likewise.
    auto mass = [&](float t, float* count) {
      float m = 0.0f, c = 0.0f;
      for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float s = l[i] * inv_t;
        if (s >= t) m += __expf(s - top), c += 1.0f;
      }
      *count = block_reduce<false>(c, scratch);
      return block_reduce<false>(m, scratch);
    };
    float lo_value = INFINITY;
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float s = l[i] * inv_t;
      if (isfinite(s)) lo_value = fminf(lo_value, s);  // the smallest finite value: masked ones never count
    }
    lo_value = -block_reduce<true>(-lo_value, scratch);
    float threshold = lo_value;  // every token kept
    if (sp.top_k > 0 && sp.top_k < vocab) {
      // The largest t with at least top_k tokens at or above it.
      float lo = lo_value, hi = top;
      for (int step = 0; step < kBisectSteps; ++step) {
        const float mid = 0.5f * (lo + hi);
        float count;
        mass(mid, &count);
        if (count >= static_cast<float>(sp.top_k)) lo = mid;
        else hi = mid;
      }
      threshold = lo;
    }
    // min_p before top_p, as the CPU sampler and vLLM: top_p's share is of what min_p left.
    // (min_p and top_k commute: both keep the tokens above a floor.)
    if (sp.min_p > 0.0f) threshold = fmaxf(threshold, top + logf(sp.min_p));
    float count;
    const float kept = mass(threshold, &count);
    if (sp.top_p < 1.0f) {
      // The largest t whose tokens still hold top_p of the mass kept so far.
      float lo = threshold, hi = top;
      for (int step = 0; step < kBisectSteps; ++step) {
        const float mid = 0.5f * (lo + hi);
        if (mass(mid, &count) >= sp.top_p * kept) lo = mid;
        else hi = mid;
      }
      threshold = lo;
    }
    // Draw: the token where the running mass (in vocabulary order) passes u * total. Each
    // thread owns a contiguous slice; a scan over the slices finds the owner. The total is the
    // scan's own, so rounding cannot put the target past every slice.
    const int64_t slice = (vocab + blockDim.x - 1) / blockDim.x;
    const int64_t begin = threadIdx.x * slice, end = min(vocab, begin + slice);
    float own = 0.0f;
    for (int64_t i = begin; i < end; ++i) {
      const float s = l[i] * inv_t;
      if (s >= threshold) own += __expf(s - top);
    }
    __shared__ float prefix[kThreads];
    prefix[threadIdx.x] = own;
    __syncthreads();
    for (int stride = 1; stride < static_cast<int>(blockDim.x); stride <<= 1) {  // inclusive scan
      const float add = threadIdx.x >= static_cast<unsigned>(stride) ? prefix[threadIdx.x - stride] : 0.0f;
      __syncthreads();
      prefix[threadIdx.x] += add;
      __syncthreads();
    }
    const float total = prefix[blockDim.x - 1];
    const float target = uniform(sp.seed, sp.offset) * total;
    __shared__ int32_t picked;
    if (threadIdx.x == 0) picked = INT32_MAX;
    __syncthreads();
    const float before = threadIdx.x > 0 ? prefix[threadIdx.x - 1] : 0.0f;
    if (own > 0.0f && target >= before && (target < prefix[threadIdx.x] || prefix[threadIdx.x] >= total)) {
      float run = before;
      int32_t last = -1;
      for (int64_t i = begin; i < end; ++i) {
        const float s = l[i] * inv_t;
        if (s < threshold) continue;
        const float w = __expf(s - top);
        if (w <= 0.0f) continue;  // zero mass (masked, or below exp's range) is never drawn, as on the CPU
        last = static_cast<int32_t>(i);
        run += w;
        if (run > target) break;
      }
      atomicMin(&picked, last);  // the first owner when rounding makes two: the same token every run
    }
    __syncthreads();
    if (picked != INT32_MAX) chosen = picked;  // else (nothing kept): the most likely token
  }
  if (out_ranks) {  // 1 + the tokens with a strictly larger raw logit, as the CPU sampler ranks
    const float v = r[chosen];
    float above = 0.0f;
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) above += r[i] > v ? 1.0f : 0.0f;
    above = block_reduce<false>(above, scratch);
    if (threadIdx.x == 0) out_ranks[row] = 1 + static_cast<int32_t>(above);
  }
  if (threadIdx.x == 0) {
    out_ids[row] = chosen;
    out_logprobs[row] = r[chosen] - log_z;
  }
  // Top-N raw logprobs: N passes of argmax, each excluding values above the previous pick.
  float bound = INFINITY;
  int32_t bound_index = -1;
  for (int n = 0; n < num_top; ++n) {
    ArgMax b{-INFINITY, INT32_MAX};
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float v = r[i];
      // Strictly after the previous pick in (value descending, index ascending) order.
      if (v < bound || (v == bound && static_cast<int32_t>(i) > bound_index)) b = better(b, ArgMax{v, static_cast<int32_t>(i)});
    }
    b = block_argmax(b, arg_scratch);
    if (threadIdx.x == 0) {
      top_ids[row * num_top + n] = b.index;
      top_logprobs[row * num_top + n] = b.value - log_z;
    }
    bound = b.value;
    bound_index = b.index;
  }
}

}  // namespace

void invokeSample(const float* logits, const float* raw_logits, int64_t rows, int64_t vocab, const SamplingRow* params,
                  int32_t* out_ids, float* out_logprobs, int32_t* out_ranks, int num_top, int32_t* top_ids,
                  float* top_logprobs, cudaStream_t stream) {
  if (rows == 0) return;
  if (num_top < 0 || num_top > 64) throw std::invalid_argument("sample: num_top must be in [0, 64]");
  sample_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(logits, raw_logits ? raw_logits : logits, vocab,
                                                                       params, out_ids, out_logprobs,
                                                                       out_ranks, num_top, top_ids, top_logprobs);
  check(cudaGetLastError(), "sample");
}

}  // namespace cserve::cuda
