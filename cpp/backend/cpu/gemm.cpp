// gemm(): splits the weight panels over the thread pool and dispatches to the
// kernel of the best instruction set; plus the portable scalar kernel.
#include <algorithm>
#include <string>
#include <vector>

#include "backend/cpu/gemm_internal.h"
#include "backend/cpu/kernels.h"
#include "cserve/error.h"

namespace cserve::cpu {

namespace detail {

void gemm_panels_scalar(const GemmArgs& a, int64_t panel_begin, int64_t panel_end) {
  const PackedMatrix& w = *a.w;
  const int64_t k = w.k, kp = w.k_padded;
  for (int64_t p = panel_begin; p < panel_end; ++p) {
    const int64_t col0 = p * kPanel;
    const int64_t cols = std::min<int64_t>(kPanel, w.n - col0);
    for (int64_t r = 0; r < a.m; ++r) {
      const float* x = a.x + r * a.ldx;
      float acc[kPanel] = {};
      if (w.dtype == DType::F32) {
        const float* wp = w.data.as<float>() + p * kp * kPanel;
        for (int64_t c = 0; c < k; ++c)
          for (int l = 0; l < kPanel; ++l) acc[l] += x[c] * wp[c * kPanel + l];
      } else if (w.dtype == DType::F16) {
        const uint16_t* wp = w.data.as<uint16_t>() + p * kp * kPanel;
        for (int64_t c = 0; c < k; ++c)
          for (int l = 0; l < kPanel; ++l) acc[l] += x[c] * f16_to_f32(wp[c * kPanel + l]);
      } else {
        const uint16_t* wp = w.data.as<uint16_t>() + p * kp * kPanel;
        for (int64_t c = 0; c < k; ++c) {
          const uint16_t* pair = wp + (c / 2) * 2 * kPanel + (c & 1);
          for (int l = 0; l < kPanel; ++l) acc[l] += x[c] * bf16_to_f32(pair[2 * l]);
        }
      }
      float* y = a.y + r * a.ldy + col0;
      for (int64_t l = 0; l < cols; ++l) {
        float v = acc[l];
        if (a.bias != nullptr) v += a.bias[col0 + l];
        y[l] = a.accumulate ? y[l] + v : v;
      }
    }
  }
}

}  // namespace detail

void gemm(const PackedMatrix& w, const float* x, int64_t m, int64_t ldx, float* y, int64_t ldy,
          bool accumulate, ThreadPool& pool) {
  if (m <= 0) return;
  if (ldx < w.k || ldy < w.n) {
    throw InvalidArgument("gemm: leading dimensions too small (ldx " + std::to_string(ldx) +
                          " < k " + std::to_string(w.k) + " or ldy " + std::to_string(ldy) +
                          " < n " + std::to_string(w.n) + ")");
  }
  detail::GemmArgs a;
  a.w = &w;
  a.x = x;
  a.m = m;
  a.ldx = ldx;
  a.y = y;
  a.ldy = ldy;
  a.accumulate = accumulate;
  a.bias = w.bias.empty() ? nullptr : w.bias.data();

  const Isa isa = cpu_isa();
  void (*kernel)(const detail::GemmArgs&, int64_t, int64_t) = detail::gemm_panels_scalar;
  switch (isa) {
    case Isa::Scalar: kernel = detail::gemm_panels_scalar; break;
    case Isa::Avx2: kernel = detail::gemm_panels_avx2; break;
    case Isa::Avx512: kernel = detail::gemm_panels_avx512; break;
    case Isa::Avx512Bf16: kernel = detail::gemm_panels_avx512bf16; break;
  }
  // AMX tiles for every row count: a row alone is as fast either way (bandwidth-bound;
  // benchmarks/cpu_probes/amx_gemm.cpp), and on one kernel a row's result never depends on its
  // batch (a verification step equals plain decoding bit for bit).
  const bool amx = isa == Isa::Avx512Bf16 && w.dtype == DType::BF16 && w.k_padded % 32 == 0 && cpu_has_amx();
  if (amx) kernel = detail::gemm_panels_amx_bf16;
  if (isa == Isa::Avx512Bf16 && w.dtype == DType::BF16) {
    // x rounded to bf16 once per call; the scratch lives with the calling thread. AMX loads
    // whole 16-row tiles: the rows past m are allocated (their sums are never stored).
    thread_local std::vector<uint16_t> xb;
    const int64_t ldxb = (w.k_padded + 31) / 32 * 32;
    const int64_t rows = (m + 15) / 16 * 16;
    if (xb.size() < static_cast<size_t>(rows * ldxb)) xb.resize(static_cast<size_t>(rows * ldxb));
    uint16_t* xbp = xb.data();
    const int64_t row_grain = std::max<int64_t>(1, (int64_t{1} << 16) / w.k);
    pool.parallel_for(m, row_grain, [&](int64_t r0, int64_t r1) {
      detail::convert_rows_bf16_avx512bf16(x + r0 * ldx, r1 - r0, ldx, w.k, w.k_padded, xbp + r0 * ldxb, ldxb);
    });
    a.xb = xb.data();
    a.ldxb = ldxb;
  }

  // Chunks are whole groups of 4 panels (the kernels' widest tile) of at least
  // ~64 KiB of weights, fewer when many rows make each panel expensive.
  constexpr int64_t kGroup = 4;
  const int64_t num_panels = w.n_padded / detail::kPanel;
  const int64_t num_groups = (num_panels + kGroup - 1) / kGroup;
  const int64_t group_bytes = kGroup * w.k_padded * detail::kPanel * static_cast<int64_t>(dtype_size(w.dtype));
  const int64_t grain = std::max<int64_t>(1, (int64_t{64} << 10) / (group_bytes * (1 + m / 4)));
  pool.parallel_for(num_groups, grain, [&](int64_t begin, int64_t end) {
    kernel(a, begin * kGroup, std::min(num_panels, end * kGroup));
  });
}

}  // namespace cserve::cpu
