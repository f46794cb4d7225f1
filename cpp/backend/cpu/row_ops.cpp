// Portable row routines (baseline x86-64 / any CPU) and the per-ISA table choice.
#include <cmath>

#include "backend/cpu/row_ops.h"

namespace cserve::cpu::detail {

namespace {

void to_f32(const void* src, DType t, float* dst, int64_t n) {
  convert_to_f32(src, t, dst, static_cast<size_t>(n));
}

float dot(const float* a, const float* b, int64_t n) {
  float s[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int l = 0; l < 4; ++l) s[l] += a[i + l] * b[i + l];
  for (; i < n; ++i) s[0] += a[i] * b[i];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

void qk(const float* q, const float* k, int64_t nk, int64_t dim, float* s) {
  for (int64_t j = 0; j < nk; ++j) s[j] = dot(q, k + j * dim, dim);
}

void pv(float* acc, int64_t rows, int64_t ld_acc, const float* p, int64_t ld_p, const float* v,
        int64_t nk, int64_t dim) {
  for (int64_t i = 0; i < rows; ++i) {
    float* a = acc + i * ld_acc;
    for (int64_t j = 0; j < nk; ++j) {
      const float pj = p[i * ld_p + j];
      if (pj == 0.0f) continue;
      const float* vj = v + j * dim;
      for (int64_t d = 0; d < dim; ++d) a[d] += pj * vj[d];
    }
  }
}

float exp_shift_sum(float* x, int64_t n, float shift) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - shift);
    sum += x[i];
  }
  return sum;
}

void silu_mul(const float* g, const float* u, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void gelu_tanh_mul(const float* g, const float* u, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float x = g[i], z = kGeluTanhC1 * x + kGeluTanhC3 * x * x * x;
    out[i] = x / (1.0f + std::exp(-z)) * u[i];
  }
}

void softcap(float* x, int64_t n, float cap) {
  for (int64_t i = 0; i < n; ++i) x[i] = cap * std::tanh(x[i] / cap);
}

float sum_squares(const float* x, int64_t n) {
  float s[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int l = 0; l < 4; ++l) s[l] += x[i + l] * x[i + l];
  for (; i < n; ++i) s[0] += x[i] * x[i];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

void scale_mul(const float* x, float s, const float* w, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * s * w[i];
}

}  // namespace

const RowOps kRowOpsScalar = {to_f32, qk, pv, exp_shift_sum, silu_mul, gelu_tanh_mul, softcap, sum_squares, scale_mul,
                              nullptr, nullptr};

const RowOps& row_ops() {
  switch (cpu_isa()) {
    case Isa::Scalar: return kRowOpsScalar;
    case Isa::Avx2: return kRowOpsAvx2;
    case Isa::Avx512: return kRowOpsAvx512;
    case Isa::Avx512Bf16: return kRowOpsAvx512Bf16;
  }
  return kRowOpsScalar;
}

}  // namespace cserve::cpu::detail
