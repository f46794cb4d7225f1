#include "backend/cpu/qgemm.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backend/cpu/kernels.h"
#include "cserve/error.h"

namespace cserve::cpu {

namespace detail {

void quantize_acts(const float* x, int64_t m, int64_t ldx, int64_t k, int64_t k_padded, QuantActs& out) {
  out.m = m;
  out.k_padded = k_padded;
  out.blocks = k_padded / kQBlock;
  out.q.assign(static_cast<size_t>(m * k_padded), 0);
  out.dx.assign(static_cast<size_t>(m * out.blocks), 0.0f);
  out.sx.assign(static_cast<size_t>(m * out.blocks), 0.0f);
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * ldx;
    for (int64_t b = 0; b * kQBlock < k; ++b) {
      const int64_t len = std::min<int64_t>(kQBlock, k - b * kQBlock);
      float amax = 0.0f;
      for (int64_t j = 0; j < len; ++j) amax = std::max(amax, std::fabs(xr[b * kQBlock + j]));
      const float d = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      int8_t* q = out.q.data() + r * k_padded + b * kQBlock;
      int sum = 0;
      for (int64_t j = 0; j < len; ++j) {
        q[j] = static_cast<int8_t>(std::lrintf(xr[b * kQBlock + j] * inv));
        sum += q[j];
      }
      out.dx[r * out.blocks + b] = d;
      out.sx[r * out.blocks + b] = d * static_cast<float>(sum);
    }
  }
}

void qgemm_rows_scalar(const QGemmArgs& g, int64_t n_begin, int64_t n_end) {
  const QuantMatrix& w = *g.w;
  const QuantActs& a = *g.a;
  for_each_output(g, n_begin, n_end, [&](int64_t n, int64_t r) {
    const uint8_t* codes = w.codes.as<uint8_t>() + n * w.row_code_bytes();
    const int8_t* q = a.q.data() + r * a.k_padded;
    float acc = 0.0f;
    for (int64_t b = 0; b < w.blocks; ++b) {
      int dot = 0;
      for (int j = 0; j < 32; ++j) {
        int u;
        if (w.bits == 8) {
          u = codes[b * 32 + j];
        } else {
          const uint8_t byte = codes[(b / 2) * 32 + j];
          u = (b % 2) ? (byte >> 4) : (byte & 0xF);
        }
        dot += u * q[b * 32 + j];
      }
      acc += scale_at(w, w.row_scales(n), b) * a.dx[r * a.blocks + b] * static_cast<float>(dot) +
             scale_at(w, w.row_mins(n), b) * a.sx[r * a.blocks + b];
    }
    return acc;
  });
}

}  // namespace detail

QuantMatrix pack_quant_matrix(const std::vector<QuantPart>& parts, ThreadPool& pool) {
  if (parts.empty()) throw InvalidArgument("pack_quant_matrix: no parts");
  QuantMatrix w;
  w.k = parts[0].cols;
  w.bits = 4;
  w.half_scales = true;
  bool any_bias = false;
  for (const QuantPart& p : parts) {
    if (p.cols != w.k) throw InvalidArgument("pack_quant_matrix: parts differ in k");
    if (qblock_bits(p.type) == 8) w.bits = 8;
    if (!qblock_scales_are_f16(p.type)) w.half_scales = false;
    w.n += p.rows;
    any_bias = any_bias || p.bias != nullptr;
  }
  if (w.k % kQBlock != 0) throw InvalidArgument("pack_quant_matrix: k must be a multiple of 32");
  w.k_padded = (w.k + 63) / 64 * 64;
  w.blocks = w.k_padded / kQBlock;
  w.codes = Buffer(static_cast<size_t>(w.n) * w.row_code_bytes());
  w.scales = Buffer(static_cast<size_t>(w.n * w.blocks) * w.scale_bytes());
  w.mins = Buffer(static_cast<size_t>(w.n * w.blocks) * w.scale_bytes());
  if (any_bias) w.bias.assign(static_cast<size_t>(w.n), 0.0f);
  int64_t row0 = 0;
  for (const QuantPart& p : parts) {
    pool.parallel_for(p.rows, 64, [&](int64_t begin, int64_t end) {
      std::vector<float> scratch(static_cast<size_t>(w.k)), d(static_cast<size_t>(w.blocks)),
          m(static_cast<size_t>(w.blocks));
      for (int64_t r = begin; r < end; ++r) {
        const int64_t src = p.row_order ? p.row_order[r] : r;
        const int64_t dst = row0 + r;
        to_qblocks(p.type, p.data + static_cast<size_t>(src) * p.row_stride, w.k, w.k_padded, w.bits,
                   w.codes.as<uint8_t>() + dst * w.row_code_bytes(), d.data(), m.data(), scratch.data());
        if (w.half_scales) {
          convert_from_f32(d.data(), w.scales.as<uint16_t>() + dst * w.blocks, DType::F16, d.size());
          convert_from_f32(m.data(), w.mins.as<uint16_t>() + dst * w.blocks, DType::F16, m.size());
        } else {
          std::memcpy(w.scales.as<float>() + dst * w.blocks, d.data(), d.size() * sizeof(float));
          std::memcpy(w.mins.as<float>() + dst * w.blocks, m.data(), m.size() * sizeof(float));
        }
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
  detail::quantize_acts(x, m, ldx, w.k, w.k_padded, acts);
  detail::QGemmArgs g{&w, &acts, y, ldy, accumulate};
  auto kernel = detail::qgemm_rows_scalar;
  const Isa isa = cpu_isa();
  if (cpu_has_avx512_vnni()) kernel = detail::qgemm_rows_avx512vnni;
  else if (isa != Isa::Scalar) kernel = detail::qgemm_rows_avx2;
  // Units of 4 weight rows (the kernels' tile); enough per task to amortize the dispatch.
  const int64_t tiles = (w.n + 3) / 4;
  pool.parallel_for(tiles, std::max<int64_t>(1, 64 / std::max<int64_t>(1, m)), [&](int64_t begin, int64_t end) {
    kernel(g, begin * 4, std::min(w.n, end * 4));
  });
}

void qgather_rows(const QuantMatrix& w, const int32_t* ids, int64_t num_ids, float* out) {
  std::vector<float> d(static_cast<size_t>(w.blocks)), m(static_cast<size_t>(w.blocks));
  for (int64_t i = 0; i < num_ids; ++i) {
    const int64_t n = ids[i];
    for (int64_t b = 0; b < w.blocks; ++b) d[b] = scale_at(w, w.row_scales(n), b), m[b] = scale_at(w, w.row_mins(n), b);
    qblocks_to_f32(w.codes.as<uint8_t>() + n * w.row_code_bytes(), d.data(), m.data(), w.bits, w.k, out + i * w.k);
  }
}

}  // namespace cserve::cpu
