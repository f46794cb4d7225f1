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
#include "core/dtype.h"
#include "core/quant.h"
#include "util/thread_pool.h"

namespace cserve::cpu {

struct QuantMatrix {
  int bits = 8;                 // 4 or 8
  int64_t n = 0, k = 0;
  int64_t k_padded = 0;         // a multiple of 64 (a pair of blocks)
  int64_t blocks = 0;           // k_padded / 32 per row
  // Block scales d and offsets m, n rows of `blocks` each: f16 when every part's are
  // f16 in the file (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: as few bytes per weight as the file),
  // f32 for the K-quants (whose sub-block scales are products) and requantized types.
  bool half_scales = false;
  Buffer codes;                 // n rows of qblock_code_bytes(bits, k_padded)
  Buffer scales, mins;
  std::vector<float> bias;      // empty or n values
  size_t row_code_bytes() const { return qblock_code_bytes(bits, k_padded); }
  size_t scale_bytes() const { return half_scales ? 2 : 4; }
  const uint8_t* row_scales(int64_t row) const { return scales.as<uint8_t>() + row * blocks * scale_bytes(); }
  const uint8_t* row_mins(int64_t row) const { return mins.as<uint8_t>() + row * blocks * scale_bytes(); }
};

// Block b of a row of scales (or offsets) as f32.
inline float scale_at(const QuantMatrix& w, const uint8_t* row, int64_t b) {
  if (w.half_scales) return f16_to_f32(reinterpret_cast<const uint16_t*>(row)[b]);
  return reinterpret_cast<const float*>(row)[b];
}

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

// Finishes one output: bias, and accumulate mode.
inline void qgemm_store(const QGemmArgs& g, int64_t row, int64_t n, float v) {
  if (!g.w->bias.empty()) v += g.w->bias[n];
  float* out = g.y + row * g.ldy + n;
  *out = g.accumulate ? *out + v : v;
}

// The loop of the one-weight-row-at-a-time kernels: every output in [n_begin, n_end) x
// activation rows gets dot(n, activation row), the row's full block-scaled product.
template <class Dot>
void for_each_output(const QGemmArgs& g, int64_t n_begin, int64_t n_end, Dot&& dot) {
  for (int64_t n = n_begin; n < n_end; ++n)
    for (int64_t r = 0; r < g.a->m; ++r) qgemm_store(g, r, n, dot(n, r));
}

}  // namespace detail
}  // namespace cserve::cpu
