// Sampling on the GPU, one thread block per row of logits, so that only token ids (and the
// logprobs asked for) cross to the host:
// - greedy when temperature is 0 (the first maximum);
// - else softmax(logits / temperature) restricted to the top_k tokens (0: all), then to the
//   smallest set of most likely tokens holding top_p of the rest, then to tokens with at least
//   min_p times the most likely one's probability; a token drawn from that with a counter-based
//   random number from (seed, offset): the same seed and offset always give the same token.
// Thresholds are found by bisection on the scaled logit value (no sort), 32 steps each.
// Logprobs are the raw log_softmax(logits) (vLLM's raw_logprobs) of the chosen token and, with
// num_top > 0, of the num_top most likely tokens (ids in descending order).
// Penalties (presence, frequency, repetition) are not applied here yet.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace cserve::cuda {

struct SamplingRow {
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  uint64_t seed = 0;
  uint64_t offset = 0;  // e.g. the number of tokens the request generated so far
};

// logits: [rows][vocab] f32 on the device; params: rows SamplingRow on the device.
// out_ids, out_logprobs: rows each; out_ranks (may be null): the chosen token's 1-based rank
// among the raw logits (1 + tokens with a larger logit). top_ids, top_logprobs:
// [rows][num_top] (num_top <= 64).
void invokeSample(const float* logits, int64_t rows, int64_t vocab, const SamplingRow* params, int32_t* out_ids,
                  float* out_logprobs, int32_t* out_ranks, int num_top, int32_t* top_ids, float* top_logprobs,
                  cudaStream_t stream);

}  // namespace cserve::cuda
