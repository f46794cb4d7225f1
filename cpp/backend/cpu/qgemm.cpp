#include "backend/cpu/qgemm.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/kernels.h"
#include "backend/quant_parts.h"
#include "cserve/error.h"

namespace cserve::cpu {

namespace detail {

void quantize_acts(const float* x, int64_t ldx, int64_t row_begin, int64_t row_end, QuantActs& out) {
  const int64_t k = out.k;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const float* xr = x + r * ldx;
    for (int64_t b = 0; b < out.blocks; ++b) {
      const float* xb = xr + b * kQBlock;
      float amax = 0.0f;
      for (int64_t j = 0; j < kQBlock; ++j) amax = std::max(amax, std::fabs(xb[j]));
      const float d = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      int8_t* q = out.q + r * k + b * kQBlock;
      int sum = 0;
      for (int64_t j = 0; j < kQBlock; ++j) {
        q[j] = static_cast<int8_t>(std::lrintf(xb[j] * inv));
        sum += q[j];
      }
      out.dx[r * out.blocks + b] = d;
      out.sx[r * out.blocks + b] = d * static_cast<float>(sum);
    }
  }
}

void qgemm_panels_scalar(const QGemmArgs& g, int64_t panel_begin, int64_t panel_end) {
  const QuantMatrix& w = *g.w;
  const QuantActs& a = *g.a;
  float out[kQPanel];
  for (int64_t p = panel_begin; p < panel_end; ++p) {
    for (int64_t i = 0; i < a.m; ++i) {
      std::fill(out, out + kQPanel, 0.0f);
      for (int64_t b = 0; b < w.blocks; ++b) {
        const uint8_t* codes = w.block_codes(p, b);
        const int8_t* q = a.q + i * a.k + b * kQBlock;
        const float dx = a.dx[i * a.blocks + b], sx = a.sx[i * a.blocks + b];
        for (int64_t r = 0; r < kQPanel; ++r) {
          int dot = 0;
          for (int64_t j = 0; j < kQBlock; ++j) dot += w.code_at(codes, r, j) * q[j];
          out[r] += w.scale_at(w.block_scales(p, b), r) * dx * static_cast<float>(dot) +
                    w.scale_at(w.block_mins(p, b), r) * sx;
        }
      }
      qgemm_store_panel(g, i, p, out);
    }
  }
}

}  // namespace detail

namespace {

// Writes row `row` (codes u, one per value; d and m per block) into its panel.
void place_row(QuantMatrix& w, int64_t row, const uint8_t* u, const float* d, const float* m) {
  const int64_t p = row / kQPanel, r = row % kQPanel;
  for (int64_t b = 0; b < w.blocks; ++b) {
    uint8_t* block = const_cast<uint8_t*>(w.block_codes(p, b));
    const uint8_t* ub = u + b * kQBlock;
    for (int64_t j = 0; j < kQBlock; ++j) {
      if (w.bits == 8) {
        block[(j / 4) * 64 + r * 4 + j % 4] = ub[j];
      } else {
        uint8_t& byte = block[(j / 8) * 64 + r * 4 + j % 4];
        byte = (j % 8) < 4 ? static_cast<uint8_t>((byte & 0xF0) | ub[j]) : static_cast<uint8_t>((byte & 0x0F) | (ub[j] << 4));
      }
    }
    auto* sc = const_cast<uint8_t*>(w.block_scales(p, b));
    auto* mn = const_cast<uint8_t*>(w.block_mins(p, b));
    if (w.half_scales) {
      reinterpret_cast<uint16_t*>(sc)[r] = f32_to_f16(d[b]);
      reinterpret_cast<uint16_t*>(mn)[r] = f32_to_f16(m[b]);
    } else {
      reinterpret_cast<float*>(sc)[r] = d[b];
      reinterpret_cast<float*>(mn)[r] = m[b];
    }
  }
}

}  // namespace

QuantMatrix pack_quant_matrix(const std::vector<QuantPart>& parts, ThreadPool& pool) {
  QuantPartsShape shape = quant_parts_shape(parts);
  QuantMatrix w;
  w.n = shape.n;
  w.k = shape.k;
  w.bits = shape.bits;
  w.half_scales = shape.half_scales;
  const bool any_bias = shape.any_bias;
  w.k_order = std::move(shape.k_order);
  w.blocks = w.k / kQBlock;
  w.panels = (w.n + kQPanel - 1) / kQPanel;
  w.codes = Buffer(static_cast<size_t>(w.panels * w.blocks) * w.block_bytes());
  w.scales = Buffer(static_cast<size_t>(w.panels * w.blocks * kQPanel) * w.scale_bytes());
  w.mins = Buffer(static_cast<size_t>(w.panels * w.blocks * kQPanel) * w.scale_bytes());
  std::memset(w.codes.data(), 0, w.codes.size());
  std::memset(w.scales.data(), 0, w.scales.size());
  std::memset(w.mins.data(), 0, w.mins.size());
  if (any_bias) w.bias.assign(static_cast<size_t>(w.n), 0.0f);
  int64_t row0 = 0;
  for (const QuantPart& p : parts) {
    // Whole panels per task: rows of one panel share bytes.
    const int64_t first_panel = row0 / kQPanel, last_panel = (row0 + p.rows - 1) / kQPanel;
    pool.parallel_for(last_panel - first_panel + 1, 4, [&](int64_t begin, int64_t end) {
      std::vector<float> scratch(static_cast<size_t>(w.k)), d(static_cast<size_t>(w.blocks)),
          m(static_cast<size_t>(w.blocks));
      std::vector<uint8_t> u(static_cast<size_t>(w.k));
      const int64_t lo = std::max(row0, (first_panel + begin) * kQPanel);
      const int64_t hi = std::min(row0 + p.rows, (first_panel + end) * kQPanel);
      for (int64_t dst = lo; dst < hi; ++dst) {
        const int64_t r = dst - row0;
        const int64_t src = p.row_order ? p.row_order[r] : r;
        to_qblocks(p.type, p.data + static_cast<size_t>(src) * p.row_stride, w.k, u.data(), d.data(), m.data(),
                   scratch.data());
        place_row(w, dst, u.data(), d.data(), m.data());
        if (p.bias) w.bias[dst] = p.bias[src];
      }
    });
    row0 += p.rows;
  }
  return w;
}

void qgemm(const QuantMatrix& w, const float* x, int64_t m, int64_t ldx, float* y, int64_t ldy, bool accumulate,
           ThreadPool& pool) {
  thread_local detail::QuantActs acts;
  thread_local std::vector<float> permuted;
  if (!w.k_order.empty()) {  // act-order: the activations in the weight's column order
    permuted.resize(static_cast<size_t>(m * w.k));
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < w.k; ++j) permuted[i * w.k + j] = x[i * ldx + w.k_order[j]];
    x = permuted.data();
    ldx = w.k;
  }
  auto quantize = detail::quantize_acts;
  auto kernel = detail::qgemm_panels_scalar;
  if (cpu_has_avx512_vnni()) {
    quantize = detail::quantize_acts_avx512;
    kernel = detail::qgemm_panels_avx512vnni;
  } else if (cpu_isa() != Isa::Scalar) {
    quantize = detail::quantize_acts_avx2;
    kernel = cpu_has_avx_vnni() ? detail::qgemm_panels_avxvnni : detail::qgemm_panels_avx2;
  }
  // Rows over the pool: a prefill's 1600 x 576 values are ~1 ms on one thread, per GEMM.
  acts.reset(m, w.k);
  detail::QuantActs& quantized = acts;  // this thread's (a worker naming `acts` gets its own)
  pool.parallel_for(m, row_grain(w.k), [&](int64_t begin, int64_t end) {
    quantize(x, ldx, begin, end, quantized);
  });
  detail::QGemmArgs g{&w, &acts, y, ldy, accumulate, stream_result(m, w.n, accumulate)};
  // Enough panels per task to amortize the dispatch when m is small.
  const int64_t grain = std::max<int64_t>(1, 16 / std::max<int64_t>(1, m));
  pool.parallel_for(w.panels, grain, [&](int64_t begin, int64_t end) { kernel(g, begin, end); });
}

const char* qgemm_kernel_name() {
  if (cpu_has_avx512_vnni()) return "avx512_vnni";
  if (cpu_isa() == Isa::Scalar) return "scalar";
  return cpu_has_avx_vnni() ? "avx2_vnni" : "avx2";
}

void qgather_rows(const QuantMatrix& w, const int32_t* ids, int64_t num_ids, float* out) {
  for (int64_t i = 0; i < num_ids; ++i) {
    const int64_t p = ids[i] / kQPanel, r = ids[i] % kQPanel;
    for (int64_t b = 0; b < w.blocks; ++b) {
      const uint8_t* codes = w.block_codes(p, b);
      const float d = w.scale_at(w.block_scales(p, b), r), m = w.scale_at(w.block_mins(p, b), r);
      for (int64_t j = 0; j < kQBlock; ++j) {
        const int64_t c = b * kQBlock + j;
        out[i * w.k + (w.k_order.empty() ? c : w.k_order[c])] = d * w.code_at(codes, r, j) + m;
      }
    }
  }
}

}  // namespace cserve::cpu
