#include "common.cuh"
#include "sampling/sampler.h"

namespace cserve::cuda {

namespace {

constexpr int kThreads = 512;
// The allowed-id bitmap lives in shared memory: vocabularies up to 48 KiB * 8 ids.
constexpr int64_t kMaxBitmapVocab = int64_t{48} * 1024 * 8;

__global__ void __launch_bounds__(kThreads) process_logits_kernel(float* logits, int64_t vocab, const ProcessorRow* params,
                                                                  const int32_t* ids, const float* values) {
  extern __shared__ uint32_t allowed[];  // one bit per id, only with an allowed list
  const ProcessorRow p = params[blockIdx.x];
  float* l = logits + blockIdx.x * vocab;
  if (p.grammar_end > p.grammar_begin) {  // the grammar first, as the CPU sampler
    const uint32_t* mask = reinterpret_cast<const uint32_t*>(ids + p.grammar_begin);
    for (int64_t t = threadIdx.x; t < vocab; t += blockDim.x)
      if (!((mask[t / 32] >> (t % 32)) & 1u)) l[t] = -INFINITY;
    __syncthreads();
  }
  if (p.allowed_end > p.allowed_begin) {
    const int64_t words = (vocab + 31) / 32;
    for (int64_t w = threadIdx.x; w < words; w += blockDim.x) allowed[w] = 0;
    __syncthreads();
    for (int32_t i = p.allowed_begin + threadIdx.x; i < p.allowed_end; i += blockDim.x)
      atomicOr(&allowed[ids[i] / 32], 1u << (ids[i] % 32));
    __syncthreads();
    for (int64_t t = threadIdx.x; t < vocab; t += blockDim.x)
      if (!(allowed[t / 32] & (1u << (t % 32)))) l[t] = -INFINITY;
    __syncthreads();
  }
  for (int32_t i = p.bias_begin + threadIdx.x; i < p.bias_end; i += blockDim.x) atomicAdd(&l[ids[i]], values[i]);
  __syncthreads();
  for (int32_t i = p.masked_begin + threadIdx.x; i < p.masked_end; i += blockDim.x) l[ids[i]] = -INFINITY;
  __syncthreads();
  if (p.repetition_penalty != 1.0f) {  // distinct ids: no two threads touch one logit
    for (int32_t i = p.seen_begin + threadIdx.x; i < p.seen_end; i += blockDim.x) {
      const float v = l[ids[i]];
      l[ids[i]] = v > 0.0f ? v / p.repetition_penalty : v * p.repetition_penalty;
    }
    __syncthreads();
  }
  if (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) {
    for (int32_t i = p.counts_begin + threadIdx.x; i < p.counts_end; i += blockDim.x)
      l[ids[i]] -= p.frequency_penalty * values[i] + p.presence_penalty;
  }
}

}  // namespace

void invokeProcessLogits(float* logits, int64_t rows, int64_t vocab, const ProcessorRow* params, const int32_t* ids,
                         const float* values, cudaStream_t stream) {
  if (rows == 0) return;
  if (vocab > kMaxBitmapVocab) throw std::invalid_argument("process_logits: vocabulary above 393216 ids");
  const size_t smem = static_cast<size_t>((vocab + 31) / 32) * sizeof(uint32_t);
  if (smem > 48 * 1024) throw std::invalid_argument("process_logits: bitmap above 48 KiB");
  process_logits_kernel<<<static_cast<unsigned>(rows), kThreads, smem, stream>>>(logits, vocab, params, ids, values);
  check(cudaGetLastError(), "process_logits");
}

}  // namespace cserve::cuda
