// The first largest value of a row (greedy decoding's argmax), vectorized.
#pragma once
#include <cstdint>

namespace cserve {

// The largest value, NaN skipped (-inf when there is none); x is left as it is.
float max_skipping_nan(const float* x, int64_t n);
// The first i with x[i] == value (n when none).
int64_t first_index_of(const float* x, int64_t n, float value);
// The index of the first largest value, NaN skipped; n when no value is above -inf.
int64_t first_largest(const float* x, int64_t n);
// Greedy decoding's token of a row of logits: first_largest, or 0 when no value is above -inf.
int32_t greedy_token(const float* logits, int64_t vocab);

}  // namespace cserve
