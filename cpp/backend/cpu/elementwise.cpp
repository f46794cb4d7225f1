// Row-wise kernels: RMSNorm, SiLU-and-multiply, rotary embedding.
#include <algorithm>
#include <cmath>
#include <string>

#include "backend/cpu/kernels.h"
#include "backend/cpu/row_ops.h"
#include "cserve/error.h"
#include "util/vector_clones.h"

namespace cserve::cpu {

namespace {
// out = x / rms(x) * w, or out += that when `add`.
void rms_norm_rows(const char* op, const float* x, const float* w, int64_t rows, int64_t dim, int64_t ld, float eps,
                   float* out, bool add, ThreadPool& pool) {
  if (dim <= 0 || ld < dim) throw InvalidArgument(std::string(op) + ": need 0 < dim <= ld");
  const detail::RowOps& ops = detail::row_ops();
  pool.parallel_for(rows, row_grain(dim), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = x + r * ld;
      const float s = 1.0f / std::sqrt(ops.sum_squares(xr, dim) / static_cast<float>(dim) + eps);
      if (!add) {
        ops.scale_mul(xr, s, w, out + r * ld, dim);
        continue;
      }
      for (int64_t i = 0; i < dim; ++i) out[r * ld + i] += xr[i] * s * w[i];
    }
  });
}
}  // namespace

void rms_norm(const float* x, const float* w, int64_t rows, int64_t dim, int64_t ld, float eps,
              float* out, ThreadPool& pool) {
  rms_norm_rows("rms_norm", x, w, rows, dim, ld, eps, out, false, pool);
}

void rms_norm_add(const float* x, const float* w, int64_t rows, int64_t dim, int64_t ld, float eps,
                  float* residual, ThreadPool& pool) {
  rms_norm_rows("rms_norm_add", x, w, rows, dim, ld, eps, residual, true, pool);
}

void silu_mul(const float* gu, int64_t tokens, int64_t inter, float* out, ThreadPool& pool) {
  if (inter <= 0) return;
  const detail::RowOps& ops = detail::row_ops();
  pool.parallel_for(tokens, row_grain(inter), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* g = gu + t * 2 * inter;
      ops.silu_mul(g, g + inter, out + t * inter, inter);
    }
  });
}

void gelu_tanh_mul(const float* gu, int64_t tokens, int64_t inter, float* out, ThreadPool& pool) {
  if (inter <= 0) return;
  const detail::RowOps& ops = detail::row_ops();
  pool.parallel_for(tokens, row_grain(inter), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* g = gu + t * 2 * inter;
      ops.gelu_tanh_mul(g, g + inter, out + t * inter, inter);
    }
  });
}

void combine_rows(const float* src, const int32_t* rows, const float* weights, int64_t n, int64_t k, int64_t cols,
                  float* out, bool accumulate, ThreadPool& pool) {
  pool.parallel_for(n, row_grain(cols * k), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* o = out + i * cols;
      if (!accumulate) std::fill(o, o + cols, 0.0f);
      for (int64_t j = 0; j < k; ++j) {
        const float w = weights[i * k + j];
        const float* s = src + static_cast<int64_t>(rows[i * k + j]) * cols;
        for (int64_t c = 0; c < cols; ++c) o[c] += w * s[c];
      }
    }
  });
}

void clamped_swiglu_mul(const float* gu, int64_t tokens, int64_t inter, float alpha, float limit, float* out,
                        ThreadPool& pool) {
  pool.parallel_for(tokens, row_grain(inter), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* g = gu + t * 2 * inter;
      for (int64_t i = 0; i < inter; ++i) {
        const float gate = std::min(g[i], limit), up = std::clamp(g[inter + i], -limit, limit);
        out[t * inter + i] = (up + 1.0f) * gate / (1.0f + std::exp(-alpha * gate));
      }
    }
  });
}

void softcap(float* x, int64_t n, float cap, ThreadPool& pool) {
  constexpr int64_t kChunk = 4096;
  const detail::RowOps& ops = detail::row_ops();
  pool.parallel_for((n + kChunk - 1) / kChunk, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) ops.softcap(x + c * kChunk, std::min(kChunk, n - c * kChunk), cap);
  });
}

namespace {
// x1' = x1 c - x2 s, x2' = x2 c + x1 s over one head's rotated pairs, rounded as the portable
// kernel rounds them (no fused multiply-adds in the AVX2 / AVX-512 clones).
CSERVE_VECTOR_CLONES __attribute__((optimize("fp-contract=off"))) void rotate_half(float* x1, float* x2, const float* c,
                                                                                 const float* s, int64_t half) {
  for (int64_t i = 0; i < half; ++i) {
    const float a = x1[i], b = x2[i];
    x1[i] = a * c[i] - b * s[i];
    x2[i] = b * c[i] + a * s[i];
  }
}
}  // namespace

void rope(float* x, int64_t tokens, int64_t heads, int64_t head_dim, int64_t ld, const float* cos,
          const float* sin, int64_t rotary_dim, ThreadPool& pool) {
  if (rotary_dim <= 0 || rotary_dim % 2 != 0 || rotary_dim > head_dim) {
    throw InvalidArgument("rope: rotary_dim " + std::to_string(rotary_dim) +
                          " must be even and in (0, head_dim]");
  }
  if (ld < heads * head_dim) throw InvalidArgument("rope: ld < heads * head_dim");
  const int64_t half = rotary_dim / 2;
  pool.parallel_for(tokens, row_grain(heads * rotary_dim), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t h = 0; h < heads; ++h) {
        float* x1 = x + t * ld + h * head_dim;
        rotate_half(x1, x1 + half, cos + t * half, sin + t * half, half);
      }
    }
  });
}

}  // namespace cserve::cpu
