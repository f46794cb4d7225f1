#include "util/first_largest.h"

#include <cstring>
#include <limits>

#include "util/vector_clones.h"

namespace cserve {

// Sixteen running maxima side by side in one vector (a single running max is a chain of
// dependent compares that the compiler leaves scalar), folded at the end.
CSERVE_VECTOR_CLONES float max_skipping_nan(const float* x, int64_t n) {
  using Lanes = float __attribute__((vector_size(64)));
  constexpr int64_t kLanes = 16;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  Lanes lanes = Lanes{} + neg_inf;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    Lanes v;
    std::memcpy(&v, x + i, sizeof v);
    lanes = v > lanes ? v : lanes;
  }
  float m = neg_inf;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  for (int64_t j = 0; j < kLanes; ++j) m = lanes[j] > m ? lanes[j] : m;
  return m;
}

// Blocks of 64 are compared whole, which vectorizes, and only the block holding the value is
// searched one by one.
CSERVE_VECTOR_CLONES int64_t first_index_of(const float* x, int64_t n, float value) {
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    bool any = false;
    for (int64_t j = 0; j < 64; ++j) any |= x[i + j] == value;
    if (any) break;
  }
  for (; i < n; ++i)
    if (x[i] == value) return i;
  return n;
}

int64_t first_largest(const float* x, int64_t n) {
  const float top = max_skipping_nan(x, n);
  return top > -std::numeric_limits<float>::infinity() ? first_index_of(x, n, top) : n;
}

int32_t greedy_token(const float* logits, int64_t vocab) {
  const int64_t i = first_largest(logits, vocab);
  return static_cast<int32_t>(i < vocab ? i : 0);
}

}  // namespace cserve
