// Sampling on the GPU, one thread block per row of logits, so that only token ids (and the
// logprobs asked for) cross to the host:
// - greedy when temperature is 0 (the first maximum);
// - else softmax(logits / temperature) restricted to the top_k tokens (0: all) with at least
//   min_p times the most likely one's probability, then to the smallest set of most likely
//   tokens holding top_p of the rest (the CPU sampler's and vLLM's order); a token with
//   non-zero probability drawn from that with a counter-based random number from (seed,
//   offset): the same seed and offset always give the same token.
// Thresholds are found by bisection on the scaled logit value (no sort), 32 steps each.
// Logprobs are the raw log_softmax(logits) (vLLM's raw_logprobs) of the chosen token and, with
// num_top > 0, of the num_top most likely tokens (ids in descending order).
// Penalties and logits processors are applied before, by invokeProcessLogits.
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

// logits: [rows][vocab] f32 on the device, sampled from; raw_logits (null: logits) the same
// before any processing (penalties, bias, masks), for the logprobs. params: rows SamplingRow on
// the device.
// out_ids, out_logprobs: rows each; out_ranks (may be null): the chosen token's 1-based rank
// among the raw logits (1 + tokens with a larger logit). top_ids, top_logprobs:
// [rows][num_top] (num_top <= 64).
void invokeSample(const float* logits, const float* raw_logits, int64_t rows, int64_t vocab, const SamplingRow* params,
                  int32_t* out_ids, float* out_logprobs, int32_t* out_ranks, int num_top, int32_t* top_ids,
                  float* top_logprobs, cudaStream_t stream);

// vLLM's logits processors and penalties, in the CPU sampler's order, on logits [rows][vocab]
// in place. Each row names ranges of the shared arrays ids / values:
//   grammar: the structured-output token mask, ceil(vocab / 32) words stored in ids (bit t % 32
//   of word t / 32 set where token t may come next; empty range: no mask);
//   allowed: only these ids keep their logit (empty range: all do);
//   bias: logits[ids[i]] += values[i];
//   masked: logits[ids[i]] = -inf (EOS and stop ids before min_tokens);
//   seen (distinct ids of prompt and output): repetition penalty (divide positive logits,
//   multiply negative ones);
//   counts (distinct output ids, values[i] = count): -= frequency * count + presence.
struct ProcessorRow {
  int32_t grammar_begin = 0, grammar_end = 0;
  int32_t allowed_begin = 0, allowed_end = 0;
  int32_t bias_begin = 0, bias_end = 0;
  int32_t masked_begin = 0, masked_end = 0;
  int32_t seen_begin = 0, seen_end = 0;
  int32_t counts_begin = 0, counts_end = 0;
  float repetition_penalty = 1.0f, frequency_penalty = 0.0f, presence_penalty = 0.0f;
};
void invokeProcessLogits(float* logits, int64_t rows, int64_t vocab, const ProcessorRow* params, const int32_t* ids,
                         const float* values, cudaStream_t stream);

}  // namespace cserve::cuda
