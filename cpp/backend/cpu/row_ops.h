// Private to the CPU backend: small vector routines over one row, one table per
// instruction set, used by the attention, normalization and activation kernels.
#pragma once
#include <cstdint>

#include "backend/cpu/kernels.h"

namespace cserve::cpu::detail {

struct RowOps {
  // dst[i] = src[i] as f32, for src of type t.
  void (*to_f32)(const void* src, DType t, float* dst, int64_t n);
  // s[j] = sum_d q[d] * k[j*dim + d] for j < nk (one query row against nk key rows).
  void (*qk)(const float* q, const float* k, int64_t nk, int64_t dim, float* s);
  // For each row i < rows: acc[i*ld_acc + d] += sum_{j<nk} p[i*ld_p + j] * v[j*dim + d].
  void (*pv)(float* acc, int64_t rows, int64_t ld_acc, const float* p, int64_t ld_p, const float* v,
             int64_t nk, int64_t dim);
  // x[i] = exp(x[i] - shift); returns the sum of the new x.
  float (*exp_shift_sum)(float* x, int64_t n, float shift);
  // out[i] = g[i] / (1 + exp(-g[i])) * u[i].
  void (*silu_mul)(const float* g, const float* u, float* out, int64_t n);
  // out[i] = gelu_tanh(g[i]) * u[i], with gelu_tanh(x) = x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3))
  // (the same function as 0.5 x (1 + tanh(...))).
  void (*gelu_tanh_mul)(const float* g, const float* u, float* out, int64_t n);
  // x[i] = cap * tanh(x[i] / cap).
  void (*softcap)(float* x, int64_t n, float cap);
  // Returns sum_i x[i]^2.
  float (*sum_squares)(const float* x, int64_t n);
  // out[i] = x[i] * s * w[i].
  void (*scale_mul)(const float* x, float s, const float* w, float* out, int64_t n);
  // qk and pv reading K / V rows of type t straight from the cache (converted in
  // registers, no f32 copy). Null where the ISA has no such path.
  void (*qk_kv)(const float* q, const void* k, DType t, int64_t nk, int64_t dim, float* s);
  void (*pv_kv)(float* acc, int64_t rows, int64_t ld_acc, const float* p, int64_t ld_p, const void* v, DType t,
                int64_t nk, int64_t dim);
};

// gelu_tanh(x) = x * sigmoid(C1 x + C3 x^3): C1 = 2 sqrt(2 / pi), C3 = C1 * 0.044715.
constexpr float kGeluTanhC1 = 1.5957691216057308f;
constexpr float kGeluTanhC3 = 0.0713548162726f;

extern const RowOps kRowOpsScalar;
extern const RowOps kRowOpsAvx2;
extern const RowOps kRowOpsAvx512;
extern const RowOps kRowOpsAvx512Bf16;  // AVX512 plus bf16 dot products in attention

// The table for cpu_isa().
const RowOps& row_ops();

}  // namespace cserve::cpu::detail
