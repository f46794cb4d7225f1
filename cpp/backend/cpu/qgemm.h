// Quantized weights on the CPU: y = x W^T computed on the 4- or 8-bit codes directly
// (core/quant.h's blocks of 32: w = d * u + m). Each activation row is quantized to int8
// per block of 32 (scale dx, codes q), so a block's contribution is
//   d_w * dx * sum(u * q) + m_w * (dx * sum(q)),
// integer dot products of unsigned codes by signed activations (AVX512_VNNI vpdpbusd, AVX-VNNI's
// ymm vpdpbusd, or AVX2 maddubs), one float scale per block.
//
// Layout: panels of 16 weight rows. Within a panel, block b (32 values of each row) is
// stored so one 64-byte load holds 4 consecutive values of all 16 rows (8-bit: 8 loads per
// block; row r's 4 bytes at r * 4) or, for 4-bit codes, 8 values of all 16 rows (low nibbles
// values 0-3, high nibbles values 4-7 of the group; 4 loads per block). One broadcast 4-byte
// activation group then meets 16 rows at once, the int32 lanes are the 16 rows' outputs, and
// the block's float scaling is one multiply-add per 16 rows.
#pragma once
#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "core/buffer.h"
#include "core/dtype.h"
#include "core/quant.h"
#include "util/thread_pool.h"

namespace cserve::cpu {

constexpr int64_t kQPanel = 16;

struct QuantMatrix {
  int bits = 8;                 // 4 or 8
  int64_t n = 0, k = 0;         // k: a multiple of 32
  int64_t panels = 0;           // ceil(n / 16); padding rows are zero
  int64_t blocks = 0;           // k / 32
  // Block scales d and offsets m, [panel][block][16 rows]: f16 when every part's are f16 in
  // the file (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: no more bytes per weight than the file), f32
  // for the K-quants (whose sub-block scales are products) and requantized types.
  bool half_scales = false;
  Buffer codes;                 // [panel][block][block_bytes()]
  Buffer scales, mins;
  std::vector<float> bias;      // empty or n values
  // Empty, or k entries: column j holds input feature k_order[j] (GPTQ act-order); the
  // activations are gathered into this order before they are quantized.
  std::vector<int32_t> k_order;
  size_t block_bytes() const { return static_cast<size_t>(kQPanel * kQBlock * bits / 8); }
  size_t scale_bytes() const { return half_scales ? 2 : 4; }
  const uint8_t* block_codes(int64_t panel, int64_t b) const {
    return codes.as<uint8_t>() + (panel * blocks + b) * block_bytes();
  }
  // The 16 rows' d (or m) of block b in a panel.
  const uint8_t* block_scales(int64_t panel, int64_t b) const {
    return scales.as<uint8_t>() + (panel * blocks + b) * kQPanel * scale_bytes();
  }
  const uint8_t* block_mins(int64_t panel, int64_t b) const {
    return mins.as<uint8_t>() + (panel * blocks + b) * kQPanel * scale_bytes();
  }
  // Code of value j (0..31) of row r (0..15) in a block's bytes.
  int code_at(const uint8_t* block, int64_t r, int64_t j) const {
    if (bits == 8) return block[(j / 4) * 64 + r * 4 + j % 4];
    const uint8_t byte = block[(j / 8) * 64 + r * 4 + j % 4];
    return (j % 8) < 4 ? (byte & 0xF) : (byte >> 4);
  }
  float scale_at(const uint8_t* values, int64_t r) const {
    if (half_scales) return f16_to_f32(reinterpret_cast<const uint16_t*>(values)[r]);
    return reinterpret_cast<const float*>(values)[r];
  }
};

// Concatenates parts along n into one QuantMatrix (4-bit when every part is a 4-bit type).
// Throws NotSupported when the parts' k orders differ (one activation order per GEMM).
QuantMatrix pack_quant_matrix(const std::vector<QuantPart>& parts, ThreadPool& pool);

// y[m][n] (= or +=) x[m][k] W^T + bias.
void qgemm(const QuantMatrix& w, const float* x, int64_t m, int64_t ldx, float* y, int64_t ldy, bool accumulate,
           ThreadPool& pool);

// The kernel qgemm() runs on this CPU under CSERVE_ISA: "avx512_vnni", "avx2_vnni" (AVX2 +
// AVX-VNNI), "avx2" or "scalar".
const char* qgemm_kernel_name();

// out[i][:] = row ids[i] of W, dequantized (tied embeddings).
void qgather_rows(const QuantMatrix& w, const int32_t* ids, int64_t num_ids, float* out);

namespace detail {

// x quantized per row and block: codes q[m][k] (int8), dx[m][blocks] and
// sx[m][blocks] = dx * sum(q) of the block.
struct QuantActs {
  int64_t m = 0, k = 0, blocks = 0;
  int8_t* q = nullptr;  // [m][k], on whole 64-byte lines (in q_storage)
  std::vector<int8_t> q_storage;
  std::vector<float> dx, sx;
  // Sizes the arrays for m rows of k values (kept between calls: no allocation once grown).
  void reset(int64_t rows, int64_t cols) {
    m = rows;
    k = cols;
    blocks = cols / kQBlock;
    q = aligned_scratch(q_storage, static_cast<size_t>(m * k));
    dx.resize(static_cast<size_t>(m * blocks));
    sx.resize(static_cast<size_t>(m * blocks));
  }
};
// Rows [row_begin, row_end) of x into those rows of out (sized by out.reset beforehand).
void quantize_acts(const float* x, int64_t ldx, int64_t row_begin, int64_t row_end, QuantActs& out);
// The same, vectorized (identical results: round to nearest even in all).
void quantize_acts_avx512(const float* x, int64_t ldx, int64_t row_begin, int64_t row_end, QuantActs& out);
void quantize_acts_avx2(const float* x, int64_t ldx, int64_t row_begin, int64_t row_end, QuantActs& out);

struct QGemmArgs {
  const QuantMatrix* w = nullptr;
  const QuantActs* a = nullptr;
  float* y = nullptr;
  int64_t ldy = 0;
  bool accumulate = false;
  bool stream = false;  // the AVX-512 and AVX2 kernels store whole 64-byte rows of y past the caches
};
// Panels [panel_begin, panel_end) (16 output columns each) for every activation row.
void qgemm_panels_scalar(const QGemmArgs& g, int64_t panel_begin, int64_t panel_end);
void qgemm_panels_avx2(const QGemmArgs& g, int64_t panel_begin, int64_t panel_end);
void qgemm_panels_avxvnni(const QGemmArgs& g, int64_t panel_begin, int64_t panel_end);  // AVX2 + AVX-VNNI
void qgemm_panels_avx512vnni(const QGemmArgs& g, int64_t panel_begin, int64_t panel_end);

// Writes the 16 outputs of a panel for activation row `row` (fewer at the end of n):
// bias added, accumulate mode honoured.
inline void qgemm_store_panel(const QGemmArgs& g, int64_t row, int64_t panel, const float* v) {
  const QuantMatrix& w = *g.w;
  const int64_t n0 = panel * kQPanel;
  float* out = g.y + row * g.ldy + n0;
  for (int64_t r = 0; r < kQPanel && n0 + r < w.n; ++r) {
    const float value = v[r] + (w.bias.empty() ? 0.0f : w.bias[n0 + r]);
    out[r] = g.accumulate ? out[r] + value : value;
  }
}

}  // namespace detail
}  // namespace cserve::cpu
