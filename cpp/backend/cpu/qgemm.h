// Quantized weights on the CPU: y = x W^T computed on the 4- or 8-bit codes directly
// (core/quant.h's blocks of 32: w = d * u + m). Each activation row is quantized to int8
// per block of 32 (scale dx, codes q), so a block's contribution is
//   d_w * dx * sum(u * q) + m_w * (dx * sum(q)),
// an unsigned-by-signed byte dot product (AVX512_VNNI vpdpbusd, or AVX2 maddubs).
#pragma once
#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "core/buffer.h"
#include "core/quant.h"
#include "util/thread_pool.h"

namespace cserve::cpu {

struct QuantMatrix {
  int bits = 8;                 // 4 or 8
  int64_t n = 0, k = 0;
  int64_t k_padded = 0;         // a multiple of 64 (a pair of blocks)
  int64_t blocks = 0;           // k_padded / 32 per row
  Buffer codes;                 // n rows of qblock_code_bytes(bits, k_padded)
  Buffer scales;                // n rows of `blocks` floats: d
  Buffer mins;                  // n rows of `blocks` floats: m
  std::vector<float> bias;      // empty or n values
  size_t row_code_bytes() const { return qblock_code_bytes(bits, k_padded); }
};

// Concatenates parts along n into one QuantMatrix (4-bit when every part is a 4-bit type).
QuantMatrix pack_quant_matrix(const std::vector<QuantPart>& parts, ThreadPool& pool);

// y[m][n] (= or +=) x[m][k] W^T + bias.
void qgemm(const QuantMatrix& w, const float* x, int64_t m, int64_t ldx, float* y, int64_t ldy, bool accumulate,
           ThreadPool& pool);

// out[i][:] = row ids[i] of W, dequantized (tied embeddings).
void qgather_rows(const QuantMatrix& w, const int32_t* ids, int64_t num_ids, float* out);

namespace detail {

// x quantized per row and block: codes q[m][k_padded] (int8), dx[m][blocks] and
// sx[m][blocks] = dx * sum(q) of the block.
struct QuantActs {
  int64_t m = 0, k_padded = 0, blocks = 0;
  std::vector<int8_t> q;
  std::vector<float> dx, sx;
};
void quantize_acts(const float* x, int64_t m, int64_t ldx, int64_t k, int64_t k_padded, QuantActs& out);

struct QGemmArgs {
  const QuantMatrix* w = nullptr;
  const QuantActs* a = nullptr;
  float* y = nullptr;
  int64_t ldy = 0;
  bool accumulate = false;
};
// Output columns (weight rows) [n_begin, n_end) for every activation row.
void qgemm_rows_scalar(const QGemmArgs& g, int64_t n_begin, int64_t n_end);
void qgemm_rows_avx2(const QGemmArgs& g, int64_t n_begin, int64_t n_end);
void qgemm_rows_avx512vnni(const QGemmArgs& g, int64_t n_begin, int64_t n_end);

// Finishes one output: the block-offset term, the bias, and accumulate mode.
inline void qgemm_store(const QGemmArgs& g, int64_t row, int64_t n, float dot) {
  const QuantMatrix& w = *g.w;
  const float* mins = w.mins.as<float>() + n * w.blocks;
  const float* sx = g.a->sx.data() + row * w.blocks;
  float offset = 0.0f;
  for (int64_t b = 0; b < w.blocks; ++b) offset += mins[b] * sx[b];
  float v = dot + offset + (w.bias.empty() ? 0.0f : w.bias[n]);
  float* out = g.y + row * g.ldy + n;
  *out = g.accumulate ? *out + v : v;
}

// The loop of the one-weight-row-at-a-time kernels: every output in [n_begin, n_end) x
// activation rows gets dot(codes, d, q, dx), the row's block-scaled code dot product.
template <class Dot>
void for_each_output(const QGemmArgs& g, int64_t n_begin, int64_t n_end, Dot&& dot) {
  const QuantMatrix& w = *g.w;
  const QuantActs& a = *g.a;
  for (int64_t n = n_begin; n < n_end; ++n) {
    const uint8_t* codes = w.codes.as<uint8_t>() + n * w.row_code_bytes();
    const float* d = w.scales.as<float>() + n * w.blocks;
    for (int64_t r = 0; r < a.m; ++r)
      qgemm_store(g, r, n, dot(codes, d, a.q.data() + r * a.k_padded, a.dx.data() + r * a.blocks));
  }
}

}  // namespace detail
}  // namespace cserve::cpu
