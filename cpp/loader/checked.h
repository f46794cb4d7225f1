// Overflow-safe arithmetic for counts, shapes and offsets read from model files
// (untrusted input): each helper says whether the result exists instead of wrapping.
#pragma once
#include <cstdint>

namespace cserve {

// *out = a * b; false when that does not fit in 64 bits.
inline bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }
inline bool checked_add(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_add_overflow(a, b, out); }

// True when [offset, offset + n) lies inside [0, size).
inline bool range_inside(uint64_t offset, uint64_t n, uint64_t size) { return offset <= size && n <= size - offset; }

// The product of dims (each >= 0), or false when it exceeds `limit`.
template <class Dims>
bool checked_numel(const Dims& dims, uint64_t limit, uint64_t* out) {
  uint64_t n = 1;
  for (auto d : dims) {
    if (d < 0 || !checked_mul(n, static_cast<uint64_t>(d), &n) || n > limit) return false;
  }
  *out = n;
  return true;
}

}  // namespace cserve
