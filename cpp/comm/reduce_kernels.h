// The arithmetic of the shared-memory all-reduce: sums of equal-length arrays, in f32.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace cserve::comm {

// dst[i] = srcs[0][i] + srcs[1][i] + ... + srcs[num_srcs - 1][i], summed in f32 in that order
// and written in `dtype` (F32, BF16 or F16; half types round to nearest even). dst may be one
// of srcs. The same inputs give bitwise the same output on every rank of a host.
void sum_arrays(void* dst, const void* const* srcs, int num_srcs, int64_t count, DType dtype);

}  // namespace cserve::comm
